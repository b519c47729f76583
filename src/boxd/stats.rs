//! Counters a box keeps for `/_status`: requests by outcome, bytes in and out, refusals.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hyper::Method;

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
}

impl Stats {
    /// Counts one answered request (`ahead`: made ahead of the client's user).
    pub fn record(&self, method: &Method, status: u16, ahead: bool) {
        let counted = NAMED_METHODS.contains(method).then(|| method.clone());
        let mut map = lock(&self.by_outcome);
        *map.entry((counted, status, ahead)).or_default() += 1;
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
        })
    }
}
