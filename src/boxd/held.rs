//! What a box holds, kept as it goes: entries and bytes per kind, so `/_status` costs O(1) however
//! many entries the box holds.
//!
//! A box is its root's only writer ([`Store::open_exclusive`]), so once its entries are counted,
//! every change passes through it: an install that stores a new entry (a `PUT` answered `201`)
//! and a trim's removal. Both are counted here as they happen. The first count walks every shard
//! (O(entries): a listing and a `stat` per entry) on a thread of its own at startup, so the box
//! serves at once; until it has been through every shard, [`Held::counted`] is false and the
//! counts are those of the shards counted so far (a lower bound). A change made behind the box's
//! back (another process trimming its root while it runs) is not seen until the box restarts.
//!
//! Each shard of each kind has a lock, held while the startup count lists and stats that shard,
//! and around each change to it (the rename that installs, the `unlink(2)` that trims). So a
//! change comes either before its shard is counted, and the count sees it on disk, or after, and
//! counts itself: never both, never neither. Changes wait for a shard's count only while that one
//! shard (1/256 of its kind) is being read; reads of entries never take the lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind, MetaVersion};
use crate::metrics::{Exposition, Kind};
use crate::store::{InstallOutcome, Store, StoreError};
use crate::sync::lock;

/// Shards per kind: one per first byte of a key.
const SHARDS: usize = 256;

/// The entries and bytes of one kind.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    fn add(&self, count: u64, bytes: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes away one entry of `bytes`; never below zero, should the root have been changed
    /// behind the box's back.
    fn remove(&self, bytes: u64) {
        let less = |by: u64| move |n: u64| Some(n.saturating_sub(by));
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less(1));
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less(bytes));
    }
}

/// A box's counts of what it holds.
pub struct Held {
    /// Per kind, in the order of [`EntryKind::ALL`].
    kinds: [Tally; 3],
    /// Per kind and shard: whether the startup count has been through it (see the module docs
    /// for what its lock orders).
    shards: Box<[Mutex<bool>]>,
    /// Shards the startup count has yet to go through.
    uncounted: AtomicUsize,
}

impl Default for Held {
    fn default() -> Held {
        let shards = EntryKind::ALL.len() * SHARDS;
        Held {
            kinds: Default::default(),
            shards: (0..shards).map(|_| Mutex::new(false)).collect(),
            uncounted: AtomicUsize::new(shards),
        }
    }
}

impl Held {
    /// A kind's place in [`EntryKind::ALL`].
    fn kind_index(kind: EntryKind) -> usize {
        match kind {
            EntryKind::File => 0,
            EntryKind::Meta(MetaVersion::V4) => 1,
            EntryKind::Meta(MetaVersion::V5) => 2,
        }
    }

    fn shard(&self, kind: EntryKind, shard: Shard) -> &Mutex<bool> {
        &self.shards[Held::kind_index(kind) * SHARDS + usize::from(shard.0)]
    }

    fn tally(&self, kind: EntryKind) -> &Tally {
        &self.kinds[Held::kind_index(kind)]
    }

    /// The startup count: every shard of every kind, listed and stat'ed (O(entries)). A shard
    /// that cannot be read is logged and left uncounted, so [`Held::counted`] stays false.
    pub fn count(&self, store: &Store) {
        for kind in EntryKind::ALL {
            for shard in Shard::all() {
                if let Err(e) = self.count_shard(store, kind, shard) {
                    log::error!("counting {kind}/{shard}: {e}; /_status counts stay partial");
                }
            }
        }
        if self.counted() {
            log::info!("counted the entries held: {}", self.to_json());
        }
    }

    fn count_shard(&self, store: &Store, kind: EntryKind, shard: Shard) -> Result<(), StoreError> {
        let mut counted = lock(self.shard(kind, shard));
        if *counted {
            return Ok(());
        }
        let (mut count, mut bytes) = (0, 0);
        for key in store.list_shard(kind, shard)? {
            if let Some(local) = store.lookup(&Entry { kind, key })? {
                count += 1;
                bytes += local.size;
            }
        }
        self.tally(kind).add(count, bytes);
        *counted = true;
        self.uncounted.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the startup count is done: from then on the counts are exact.
    pub fn counted(&self) -> bool {
        self.uncounted.load(Ordering::Relaxed) == 0
    }

    /// Runs `link`, which names a new `entry` of `size` bytes, and counts the entry if it was
    /// stored.
    pub fn installing(
        &self,
        entry: &Entry,
        size: u64,
        link: impl FnOnce() -> Result<InstallOutcome, StoreError>,
    ) -> Result<InstallOutcome, StoreError> {
        self.change(entry, link, |outcome, tally| {
            if *outcome == InstallOutcome::Stored {
                tally.add(1, size);
            }
        })
    }

    /// Runs `remove`, which removes `entry` of `size` bytes, and counts it gone if it was.
    pub fn removing(
        &self,
        entry: &Entry,
        size: u64,
        remove: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        self.change(entry, remove, |removed, tally| {
            if *removed {
                tally.remove(size);
            }
        })
    }

    /// Runs `act`, a change to `entry` on disk, under its shard's lock, and then `count` with
    /// what it did and its kind's tally if the shard is counted already (if not, its count will
    /// see the change on disk).
    fn change<T>(
        &self,
        entry: &Entry,
        act: impl FnOnce() -> Result<T, StoreError>,
        count: impl FnOnce(&T, &Tally),
    ) -> Result<T, StoreError> {
        let counted = lock(self.shard(entry.kind, entry.key.shard()));
        let done = act()?;
        if *counted {
            count(&done, self.tally(entry.kind));
        }
        Ok(done)
    }

    /// What is held, per kind, as Prometheus gauges.
    pub fn write_metrics(&self, page: &mut Exposition) {
        let families = [
            ("dune_cachefs_box_held_entries", "Entries held, by kind (a lower bound until the startup count is done).", true),
            ("dune_cachefs_box_held_bytes", "Bytes of the entries held, by kind (a lower bound until the startup count is done).", false),
        ];
        for (name, help, entries) in families {
            page.family(name, Kind::Gauge, help);
            for kind in EntryKind::ALL {
                let tally = self.tally(kind);
                let value = if entries { &tally.count } else { &tally.bytes };
                page.sample(name, &[("kind", kind.dir())], value.load(Ordering::Relaxed));
            }
        }
        page.single(
            "dune_cachefs_box_held_counted",
            Kind::Gauge,
            "1 once the startup count of what the box holds is done (the held counts are exact from then on).",
            u64::from(self.counted()),
        );
    }

    /// `{"<kind dir>": {"count": n, "bytes": n}, ...}`, the `held` of `/_status`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut held = serde_json::Map::new();
        for kind in EntryKind::ALL {
            let tally = self.tally(kind);
            held.insert(
                kind.dir().to_string(),
                serde_json::json!({
                    "count": tally.count.load(Ordering::Relaxed),
                    "bytes": tally.bytes.load(Ordering::Relaxed),
                }),
            );
        }
        serde_json::Value::Object(held)
    }
}
