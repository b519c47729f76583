//! The mount's counters, shown in its status file: what a person diagnosing a slow or failing build
//! needs first — lookups and where they were answered, fetches in flight and waiting, bytes, and
//! every verification failure.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$struct_doc:meta])* $struct:ident { $($(#[$doc:meta])* $name:ident),* $(,)? }) => {
        $(#[$struct_doc])*
        #[derive(Default, Debug)]
        pub struct $struct {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl $struct {
            /// The counters as a JSON object.
            pub fn to_json(&self) -> serde_json::Value {
                let mut map = serde_json::Map::new();
                $(map.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into());)*
                serde_json::Value::Object(map)
            }
        }
    };
}

counters! {
    /// Monotonic counters since the mount started (plus two gauges: fetches in flight and
    /// openers waiting on them).
    Stats {
    /// Directories listed (a kept listing is read again with no listing: see `listings`).
    listings,
    /// Lookups of well-formed entry names.
    entry_lookups,
    /// ... answered from the local store.
    local_hits,
    /// ... answered from what a listing or an earlier lookup learned of a box.
    remote_known,
    /// ... answered "absent" from the short-lived negative cache, without a request.
    negative_hits,
    /// Lookups that asked a box with a `HEAD` (artifacts: a metadata lookup is a fetch, counted
    /// with the fetches).
    remote_lookups,
    /// ... that found the entry.
    remote_found,
    /// ... that found nothing (404).
    remote_missing,
    /// Requests that failed because a box was down or failing (the entry became a miss).
    box_unavailable,
    /// Requests answered as a miss (or EIO) because their box's queue was full, or they waited
    /// in it past the deadline: a box slow but alive.
    waited_too_long,
    /// Transfers started.
    fetches,
    /// Opens (and lookups) that joined a transfer already in flight for the same entry.
    fetch_joins,
    /// Artifact transfers started because a fetched metadata entry names them.
    prefetches,
    /// Rules (metadata) fetched ahead of Dune because a box's hint named them.
    ahead_rules,
    /// Entries fetched ahead that Dune then asked for.
    ahead_used,
    /// Transfers queued ahead of Dune that Dune started waiting for (moved up).
    ahead_moved_up,
    /// Transfers ahead stopped at the byte budget (nothing kept).
    ahead_over_budget,
    /// Hints received with a rule's metadata.
    hints_received,
    /// Hints this mount published to the boxes.
    hints_published,
    /// Hints not published (the queue was full, or the box failed).
    hints_dropped,
    /// Transfers in flight now.
    fetches_in_flight,
    /// Opens waiting on a transfer now.
    fetch_waiters,
    /// Transfers that failed (the box unavailable, a bad copy, the local disk; not a 404).
    fetch_failures,
    /// Copies a box sent that did not verify (wrong bytes, or metadata that does not parse).
    verification_failures,
    /// Bytes installed in the store by transfers.
    bytes_fetched,
    /// Opens served with kernel passthrough.
    passthrough_opens,
    /// Opens served by reading in the daemon.
    daemon_opens,
    /// Bytes read through the daemon (passthrough reads never reach it).
    daemon_read_bytes,
    /// Entries Dune stored through the mount (renamed or linked into the cache).
    stores,
    /// ... refused because they are not what their name says.
    stores_refused,
    /// ... of metadata that differs from the value already held (the first was kept).
    store_collisions,
    }
}

counters! {
    /// The kernel's requests since the mount started, by operation: what a restored rule or a
    /// `cp -r` costs in round trips to the daemon, and so what the kernel could have kept.
    Requests {
        /// Path lookups (a name not in the kernel's cache, or one whose time ran out).
        lookup,
        /// Inodes the kernel dropped from its cache (each `forget`, or each item of a batch).
        forget,
        /// Attribute requests (`stat`, `fstat`, `lseek(SEEK_END)` on attributes not kept).
        getattr,
        /// Attribute changes (`chmod`, `touch`, truncation).
        setattr,
        /// File opens.
        open,
        /// Reads served by the daemon (passthrough reads and kept pages never get here).
        read,
        /// Writes (scratch files).
        write,
        /// Last closes of a file handle.
        release,
        /// File creations.
        create,
        /// Directory creations.
        mkdir,
        /// Removals of files.
        unlink,
        /// Removals of directories.
        rmdir,
        /// Renames (Dune's stores among them).
        rename,
        /// Hard links (Dune's stores in hard-link mode among them).
        link,
        /// Symbolic links made.
        symlink,
        /// Symbolic links read.
        readlink,
        /// Flushes to disk of a file.
        fsync,
        /// Flushes at close (answered once with ENOSYS, after which the kernel sends none).
        flush,
        /// Directory opens.
        opendir,
        /// Directory reads without attributes.
        readdir,
        /// Directory reads with attributes.
        readdirplus,
        /// Last closes of a directory handle.
        releasedir,
        /// Filesystem statistics (`df`).
        statfs,
        /// Extended attribute reads.
        getxattr,
        /// Extended attribute listings.
        listxattr,
    }
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
