//! Counters a box keeps for `/_status`: requests by outcome, bytes in and out, refusals.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hyper::Method;

/// Counters since the box started.
#[derive(Default)]
pub struct Stats {
    /// Requests by method and status: small and fixed in practice, so a map under a lock is
    /// simpler than an atomic per combination and cheap enough. Keyed by the parts rather than
    /// their text, so counting a request allocates nothing.
    by_outcome: Mutex<HashMap<(Method, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Stats {
    /// Counts one answered request.
    pub fn record(&self, method: &Method, status: u16) {
        let mut map = self.by_outcome.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((method.clone(), status)).or_default() += 1;
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
        let map = self.by_outcome.lock().unwrap_or_else(|e| e.into_inner());
        let requests: BTreeMap<String, u64> = map
            .iter()
            .map(|((method, status), count)| (format!("{method} {status}"), *count))
            .collect();
        serde_json::json!({
            "requests": requests,
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
        })
    }
}
