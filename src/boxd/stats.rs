//! Counters a box keeps for `/_status` and `/metrics`: requests by outcome and their latency,
//! bytes in and out, refusals.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::Method;

use crate::metrics::{Exposition, Histogram, Kind};
use crate::sync::lock;

/// The methods counted by name. Any other is counted as `other`: its name is the client's choice,
/// and a counter per name would let clients grow the box's memory and `/_status` without bound.
const NAMED_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
    Method::CONNECT,
    Method::TRACE,
];

/// A request's method (`None`: one outside [`NAMED_METHODS`]), status, and whether it was made
/// ahead of the client's user.
type Outcome = (Option<Method>, u16, bool);

/// Counters since the box started.
#[derive(Default)]
pub struct Stats {
    /// Requests by method and status: small and fixed in practice, so a map under a lock is
    /// simpler than an atomic per combination and cheap enough (bounded: see [`NAMED_METHODS`]).
    /// Keyed by the parts rather than their text, so counting a request allocates nothing.
    /// `None` stands for every method outside [`NAMED_METHODS`].
    /// Requests made ahead of the client's user (prefetches) are counted apart, as
    /// `<method> <status> ahead`.
    by_outcome: Mutex<HashMap<Outcome, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The time from a request's headers to its answer's, per method: one per
    /// [`NAMED_METHODS`], then one for every other method.
    durations: [Histogram; NAMED_METHODS.len() + 1],
    /// Offered metadata that differed from the value held (answered 409).
    collisions: AtomicU64,
    /// Offered entries that did not verify: bytes not matching their key or executable bit,
    /// metadata that does not parse (answered 422).
    verification_failures: AtomicU64,
}

impl Stats {
    /// Counts one answered request (`ahead`: made ahead of the client's user), which took
    /// `elapsed` from its headers to its answer's.
    pub fn record(&self, method: &Method, status: u16, ahead: bool, elapsed: Duration) {
        let index = NAMED_METHODS.iter().position(|named| named == method);
        self.durations[index.unwrap_or(NAMED_METHODS.len())].observe(elapsed);
        let counted = index.map(|i| NAMED_METHODS[i].clone());
        let mut map = lock(&self.by_outcome);
        *map.entry((counted, status, ahead)).or_default() += 1;
    }

    /// Counts an offered metadata value that differed from the one held.
    pub fn add_collision(&self) {
        self.collisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an offered entry that did not verify.
    pub fn add_verification_failure(&self) {
        self.verification_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes received in stored bodies.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes of entries served.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let map = lock(&self.by_outcome);
        let requests: BTreeMap<String, u64> = map
            .iter()
            .map(|((method, status, ahead), count)| {
                let name = method.as_ref().map_or("other", Method::as_str);
                let ahead = if *ahead { " ahead" } else { "" };
                (format!("{name} {status}{ahead}"), *count)
            })
            .collect();
        serde_json::json!({
            "requests": requests,
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "verification_failures": self.verification_failures.load(Ordering::Relaxed),
        })
    }

    /// The counters as Prometheus metrics.
    pub fn write_metrics(&self, page: &mut Exposition) {
        let name = "dune_cachefs_box_requests_total";
        page.family(name, Kind::Counter, "Requests answered, by method, status code and whether the client made them ahead of its user (prefetches).");
        let mut outcomes: Vec<(String, u16, bool, u64)> = lock(&self.by_outcome)
            .iter()
            .map(|((method, status, ahead), count)| {
                let method = method.as_ref().map_or("other", Method::as_str);
                (method.to_string(), *status, *ahead, *count)
            })
            .collect();
        outcomes.sort_unstable();
        for (method, status, ahead, count) in outcomes {
            let (status, ahead) = (status.to_string(), ahead.to_string());
            page.sample(
                name,
                &[("method", &method), ("code", &status), ("ahead", &ahead)],
                count,
            );
        }
        let name = "dune_cachefs_box_request_duration_seconds";
        page.family(name, Kind::Histogram, "Time from a request's headers to its answer's headers (an entry's bytes stream after), by method.");
        let methods = NAMED_METHODS.iter().map(Method::as_str);
        for (method, histogram) in methods.chain(["other"]).zip(&self.durations) {
            // Methods never seen are left out rather than shown as empty histograms.
            if histogram.count() > 0 || method == "GET" {
                page.histogram(name, &[("method", method)], histogram);
            }
        }
        let counters = [
            ("received_bytes_total", "Bytes of entries received and stored.", &self.bytes_in),
            ("sent_bytes_total", "Bytes of entries served.", &self.bytes_out),
            (
                "collisions_total",
                "Metadata offered for a rule that differed from the value held, which was kept (409).",
                &self.collisions,
            ),
            (
                "verification_failures_total",
                "Entries offered that did not verify against their key, or metadata that does not parse (422).",
                &self.verification_failures,
            ),
        ];
        for (name, help, counter) in counters {
            let name = format!("dune_cachefs_box_{name}");
            page.single(&name, Kind::Counter, help, counter.load(Ordering::Relaxed));
        }
    }
}
