//! The mount's counters, shown in its status file and on its metrics listener: what a person
//! diagnosing a slow or failing build needs first — lookups and where they were answered,
//! fetches in flight and waiting, bytes, and every verification failure. Each counter's doc
//! comment is also its help text in the metrics, so it says what it counts on its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::Kind;
use crate::sync::lock;

macro_rules! counters {
    ($(#[$struct_doc:meta])* $struct:ident {
        $($(#[doc = $doc:literal])* $name:ident: $kind:ident),* $(,)?
    }) => {
        $(#[$struct_doc])*
        #[derive(Default, Debug)]
        pub struct $struct {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl $struct {
            /// The counters as a JSON object.
            pub fn to_json(&self) -> serde_json::Value {
                let mut map = serde_json::Map::new();
                $(map.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into());)*
                serde_json::Value::Object(map)
            }

            /// Calls `visit` with each counter's name, kind, help text (its doc comment) and value.
            pub fn each(&self, mut visit: impl FnMut(&'static str, Kind, String, u64)) {
                $(
                    let help = [$($doc),*].map(str::trim).join(" ");
                    visit(stringify!($name), Kind::$kind, help, self.$name.load(Ordering::Relaxed));
                )*
            }
        }
    };
}

counters! {
    /// Monotonic counters since the mount started (plus two gauges: fetches in flight and
    /// openers waiting on them).
    Stats {
    /// Directories listed (a kept listing is read again with no listing: see `listings`).
    listings: Counter,
    /// Shards listed ahead of a program reading a kind's shards in order (see `listed_ahead`).
    listed_ahead: Counter,
    /// Shard listings made ahead that a first read then used.
    listed_ahead_used: Counter,
    /// Lookups of well-formed entry names.
    entry_lookups: Counter,
    /// Entry lookups answered from the local store.
    local_hits: Counter,
    /// Entry lookups answered from what a listing or an earlier lookup learned of a box.
    remote_known: Counter,
    /// Entry lookups answered "absent" from the short-lived negative cache, without a request.
    negative_hits: Counter,
    /// Lookups that asked a box with a `HEAD` (artifacts: a metadata lookup is a fetch, counted
    /// with the fetches).
    remote_lookups: Counter,
    /// Lookups that asked a box and found the entry.
    remote_found: Counter,
    /// Lookups that asked a box and found nothing (404).
    remote_missing: Counter,
    /// Requests that failed because a box was down or failing (the entry became a miss).
    box_unavailable: Counter,
    /// Requests answered as a miss (or EIO) because their box's queue was full, or they waited
    /// in it past the deadline: a box slow but alive.
    waited_too_long: Counter,
    /// Transfers started.
    fetches: Counter,
    /// Opens (and lookups) that joined a transfer already in flight for the same entry.
    fetch_joins: Counter,
    /// Artifact transfers started because a fetched metadata entry names them.
    prefetches: Counter,
    /// Rules (metadata) fetched ahead of Dune because a box's hint named them.
    ahead_rules: Counter,
    /// Entries fetched ahead that Dune then asked for.
    ahead_used: Counter,
    /// Transfers queued ahead of Dune that Dune started waiting for (moved up).
    ahead_moved_up: Counter,
    /// Transfers ahead stopped at the byte budget (nothing kept).
    ahead_over_budget: Counter,
    /// Hints received with a rule's metadata.
    hints_received: Counter,
    /// Hints this mount published to the boxes.
    hints_published: Counter,
    /// Hints not published (the queue was full, or the box failed).
    hints_dropped: Counter,
    /// Transfers in flight now.
    fetches_in_flight: Gauge,
    /// Opens waiting on a transfer now.
    fetch_waiters: Gauge,
    /// Transfers that failed (the box unavailable, a bad copy, the local disk; not a 404).
    fetch_failures: Counter,
    /// Copies a box sent that did not verify (wrong bytes, or metadata that does not parse).
    verification_failures: Counter,
    /// Bytes installed in the store by transfers.
    bytes_fetched: Counter,
    /// Opens served with kernel passthrough.
    passthrough_opens: Counter,
    /// Opens served by reading in the daemon.
    daemon_opens: Counter,
    /// Bytes read through the daemon (passthrough reads never reach it).
    daemon_read_bytes: Counter,
    /// Entries whose pages the kernel was handed before it read them (after a `setattr`, or
    /// warming).
    pages_handed: Counter,
    /// Rules whose metadata the kernel was handed because a hint said Dune reads them next:
    /// Dune read them with no request.
    rules_handed: Counter,
    /// Entries looked up through the mount ahead of Dune, so the kernel holds their names
    /// (`warming`).
    warmed: Counter,
    /// The lookups the kernel sent for the warming threads (the rest of `requests.lookup` are
    /// Dune's, or other processes').
    warming_lookups: Counter,
    /// The READLINKs the kernel sent for the warming threads (`--reads links`: they read each
    /// artifact's link they look up, so that the kernel keeps its target).
    warming_readlinks: Counter,
    /// Artifacts the kernel held as files that warming turned into links once the store named
    /// them (`--reads links`).
    relinked: Counter,
    /// Windows of artifacts whose pages were offered ahead of a program reading a listed shard
    /// through (`through`).
    read_through: Counter,
    /// Entries Dune stored through the mount (renamed or linked into the cache).
    stores: Counter,
    /// Entries Dune stored through the mount that were refused: not what their name says.
    stores_refused: Counter,
    /// Stores of metadata that differs from the value already held (the first was kept).
    store_collisions: Counter,
    /// Trims of the store to its bound (`--store-size`).
    trims: Counter,
    /// Artifacts the trims removed from the store.
    trimmed_artifacts: Counter,
    /// Metadata entries the trims removed (each named an artifact no longer here).
    trimmed_metadata: Counter,
    /// Entries a trim would have removed but kept: open, or waiting for their upload.
    trim_kept_open: Counter,
    /// Bytes of the entries in the store after the last trim (0 before the first).
    store_bytes: Gauge,
    }
}

counters! {
    /// The kernel's requests since the mount started, by operation: what a restored rule or a
    /// `cp -r` costs in round trips to the daemon, and so what the kernel could have kept.
    Requests {
        /// Path lookups (a name not in the kernel's cache, or one whose time ran out).
        lookup: Counter,
        /// Inodes the kernel dropped from its cache (each `forget`, or each item of a batch).
        forget: Counter,
        /// Attribute requests (`stat`, `fstat`, `lseek(SEEK_END)` on attributes not kept).
        getattr: Counter,
        /// Attribute changes (`chmod`, `touch`, truncation).
        setattr: Counter,
        /// File opens.
        open: Counter,
        /// Reads served by the daemon (passthrough reads and kept pages never get here).
        read: Counter,
        /// Writes (scratch files).
        write: Counter,
        /// Last closes of a file handle.
        release: Counter,
        /// File creations.
        create: Counter,
        /// Directory creations.
        mkdir: Counter,
        /// Removals of files.
        unlink: Counter,
        /// Removals of directories.
        rmdir: Counter,
        /// Renames (Dune's stores among them).
        rename: Counter,
        /// Hard links (Dune's stores in hard-link mode among them).
        link: Counter,
        /// Symbolic links made.
        symlink: Counter,
        /// Symbolic links read.
        readlink: Counter,
        /// Flushes to disk of a file.
        fsync: Counter,
        /// Flushes at close (answered once with ENOSYS, after which the kernel sends none).
        flush: Counter,
        /// Directory opens.
        opendir: Counter,
        /// Directory reads without attributes.
        readdir: Counter,
        /// Directory reads with attributes.
        readdirplus: Counter,
        /// Last closes of a directory handle.
        releasedir: Counter,
        /// Filesystem statistics (`df`).
        statfs: Counter,
        /// Extended attribute reads.
        getxattr: Counter,
        /// Extended attribute listings.
        listxattr: Counter,
    }
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many of the last failures the status file shows.
const RECENT_ERRORS: usize = 10;

/// The last few failures, newest last, with the time each happened: what `dune-cachefs status`
/// shows under "last errors", so the cause of a failing build is seen without the log.
#[derive(Default, Debug)]
pub struct RecentErrors(Mutex<VecDeque<(u64, String)>>);

impl RecentErrors {
    /// Records a failure now, forgetting the oldest past `RECENT_ERRORS`.
    pub fn record(&self, what: String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut recent = lock(&self.0);
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back((now, what));
    }

    /// `[{"time": <unix seconds>, "error": "..."}, ...]`, oldest first.
    pub fn to_json(&self) -> serde_json::Value {
        lock(&self.0)
            .iter()
            .map(|(time, error)| serde_json::json!({"time": time, "error": error}))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_errors_keep_the_last_ten_oldest_first() {
        let recent = RecentErrors::default();
        for i in 0..12 {
            recent.record(format!("failure {i}"));
        }
        let json = recent.to_json();
        let errors: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["error"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (2..12).map(|i| format!("failure {i}")).collect();
        assert_eq!(errors, expected);
        assert!(json[0]["time"].as_u64().unwrap() > 0);
    }
}
