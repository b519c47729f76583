//! What every request of a box shares: the open root, its options, counters, what it holds and
//! the collision log ([`BoxState`]), and the trim that works on them ([`trim_now`]).
//!
//! Apart from `mod.rs` because both the listener there and the request handler (`handler.rs`)
//! need it: kept in the parent, the handler would import its parent while the parent calls the
//! handler, a cycle. Here, both import it and it imports only its siblings.

use std::sync::{RwLock, RwLockReadGuard};

use super::collisions;
use super::held;
use super::options::{BoxOptions, Ownership};
use super::stats;
use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind};
use crate::metrics::Exposition;
use crate::store::trim::{TrimReport, TrimRules};
use crate::store::{InstallOutcome, Store, StoreError, VerifiedEntry};

/// Everything a request handler needs, shared by all connections.
pub(super) struct BoxState {
    pub(super) store: Store,
    pub(super) options: BoxOptions,
    pub(super) stats: stats::Stats,
    /// What the root holds, counted at startup and kept as entries come and go.
    pub(super) held: held::Held,
    pub(super) collisions: collisions::CollisionLog,
    /// The URL this box answers as: its node URL, or `http://<listen address>`.
    pub(super) url: String,
    pub(super) url_header: hyper::header::HeaderValue,
    /// The keys the box answers for (`None`: all); replaced when its config is read again.
    pub(super) ownership: RwLock<Option<Ownership>>,
}

impl BoxState {
    fn ownership(&self) -> RwLockReadGuard<'_, Option<Ownership>> {
        self.ownership.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces what the box answers for (its config was read again).
    pub(super) fn set_ownership(&self, ownership: Ownership) {
        *self.ownership.write().unwrap_or_else(|e| e.into_inner()) = Some(ownership);
    }

    /// Whether the box owns `entry`'s key: it stores it (and its hint).
    pub(super) fn owns(&self, entry: &Entry) -> bool {
        self.ownership().as_ref().is_none_or(|o| o.owns(&entry.key))
    }

    /// Whether the box serves `entry`'s key: it owns it, or owned it under the previous table
    /// of its config (the entry may not have moved yet).
    pub(super) fn serves(&self, entry: &Entry) -> bool {
        self.ownership()
            .as_ref()
            .is_none_or(|o| o.serves(&entry.key))
    }

    /// One shard's listing: `<key> <size> <0|1>` per entry served, sorted.
    pub(super) fn listing(&self, kind: EntryKind, shard: Shard) -> Result<String, StoreError> {
        let mut out = String::new();
        for key in self.store.list_shard(kind, shard)? {
            let entry = Entry { kind, key };
            if !self.serves(&entry) {
                continue;
            }
            if let Some(local) = self.store.lookup(&entry)? {
                let exe = u8::from(local.executable);
                out.push_str(&format!("{key} {} {exe}\n", local.size));
            }
        }
        Ok(out)
    }

    /// The shards of `kind` holding entries, one `<hh>` per line.
    pub(super) fn shards(&self, kind: EntryKind) -> Result<String, StoreError> {
        Ok(self
            .store
            .non_empty_shards(kind)?
            .into_iter()
            .map(|shard| format!("{shard}\n"))
            .collect())
    }

    /// The `/_status` document: what the box holds, what it has done, what it owns. O(1): the
    /// counts of what it holds are kept as it goes ([`held`]); `held_counted` is false until the
    /// startup count is done.
    pub(super) fn status(&self) -> serde_json::Value {
        let (ranges, previous_ranges): (Vec<String>, Vec<String>) = match &*self.ownership() {
            Some(o) => (
                o.owned.iter().map(ToString::to_string).collect(),
                o.previous.iter().map(ToString::to_string).collect(),
            ),
            None => (vec!["all".to_string()], Vec::new()),
        };
        let mut status = serde_json::json!({
            "url": self.url,
            "root": self.options.root.display().to_string(),
            "ranges": ranges,
            "previous_ranges": previous_ranges,
            "held": self.held.to_json(),
            "held_counted": self.held.counted(),
            "collisions": self.collisions.len(),
            "max_body": self.options.max_body,
            "max_size": self.options.max_size,
        });
        if let (Some(map), serde_json::Value::Object(counters)) =
            (status.as_object_mut(), self.stats.to_json())
        {
            map.extend(counters);
        }
        status
    }

    /// The `/metrics` page: the counters of `/_status` in the Prometheus text format. O(1) in
    /// the entries held, like `/_status`.
    pub(super) fn metrics(&self) -> String {
        let mut page = Exposition::default();
        self.stats.write_metrics(&mut page);
        self.held.write_metrics(&mut page);
        page.finish()
    }

    /// Installs a checked entry, counting it if it is stored: flushed to disk outside its
    /// shard's lock, linked inside it ([`held`]).
    pub(super) fn install(&self, verified: &VerifiedEntry) -> Result<InstallOutcome, StoreError> {
        let (entry, size) = (verified.entry(), verified.size());
        verified.commit_with(|staged| self.held.installing(&entry, size, || staged.link()))
    }
}

/// Removes every entry the box does not own (and its hint): what it held for keys that have
/// moved to another box. Entries it owned under its config's previous table go too, so this is
/// for after they moved. Counts what goes.
pub(super) fn drop_unowned(state: &BoxState) -> Result<DropReport, StoreError> {
    let mut report = DropReport::default();
    for entry in state.store.entries()? {
        if state.owns(&entry) {
            continue;
        }
        let path = state.store.path_of(&entry);
        let size = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("stat", &path)(e)),
        };
        let removed = state
            .held
            .removing(&entry, size, || state.store.remove(&entry))?;
        if removed {
            report.entries += 1;
            report.bytes += size;
        }
        if entry.kind != EntryKind::File {
            super::hints::remove(state.store.root(), &entry);
        }
    }
    Ok(report)
}

/// What [`drop_unowned`] removed.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DropReport {
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

/// Trims to the configured bound by a box's rules ([`TrimRules::CacheBox`]: any entry, least
/// recently read first, and no metadata for naming an artifact held elsewhere), counting what
/// goes. Without a bound, removes nothing and reports.
pub(super) fn trim_now(state: &BoxState) -> Result<TrimReport, StoreError> {
    let limit = state.options.max_size.unwrap_or(u64::MAX);
    state
        .store
        .trim_with(limit, TrimRules::CacheBox, |entry, size, remove| {
            state.held.removing(entry, size, remove)
        })
}
