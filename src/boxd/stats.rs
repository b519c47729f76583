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

/// Counters since the box started.
#[derive(Default)]
pub struct Stats {
    /// Requests by method and status: small and fixed in practice, so a map under a lock is
    /// simpler than an atomic per combination and cheap enough (bounded: see [`NAMED_METHODS`]).
    /// Keyed by the parts rather than their text, so counting a request allocates nothing.
    /// `None` stands for every method outside [`NAMED_METHODS`].
    by_outcome: Mutex<HashMap<(Option<Method>, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Stats {
    /// Counts one answered request.
    pub fn record(&self, method: &Method, status: u16) {
        let counted = NAMED_METHODS.contains(method).then(|| method.clone());
        let mut map = lock(&self.by_outcome);
        *map.entry((counted, status)).or_default() += 1;
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
            .map(|((method, status), count)| {
                let name = method.as_ref().map_or("other", Method::as_str);
                (format!("{name} {status}"), *count)
            })
            .collect();
        serde_json::json!({
            "requests": requests,
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
        })
    }
}
