//! What every request of a box shares: the open root, its options, counters, what it holds and
//! the collision log ([`BoxState`]), and the trim that works on them ([`trim_now`]).
//!
//! Apart from `mod.rs` because both the listener there and the request handler (`handler.rs`)
//! need it: kept in the parent, the handler would import its parent while the parent calls the
//! handler, a cycle. Here, both import it and it imports only its siblings.

use super::collisions;
use super::held;
use super::options::BoxOptions;
use super::stats;
use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind};
use crate::metrics::Exposition;
use crate::store::trim::{TrimOrder, TrimReport};
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
}

impl BoxState {
    pub(super) fn owns(&self, entry: &Entry) -> bool {
        self.options
            .node
            .as_ref()
            .is_none_or(|node| node.owns(&entry.key))
    }

    /// One shard's listing: `<key> <size> <0|1>` per owned entry, sorted.
    pub(super) fn listing(&self, kind: EntryKind, shard: Shard) -> Result<String, StoreError> {
        let mut out = String::new();
        for key in self.store.list_shard(kind, shard)? {
            let entry = Entry { kind, key };
            if !self.owns(&entry) {
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
        let ranges: Vec<String> = match &self.options.node {
            Some(node) => node.ranges().iter().map(ToString::to_string).collect(),
            None => vec!["all".to_string()],
        };
        let mut status = serde_json::json!({
            "url": self.url,
            "root": self.options.root.display().to_string(),
            "ranges": ranges,
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

/// Trims to the configured bound, least recently read first, counting what goes. Without a
/// bound, reports only.
pub(super) fn trim_now(state: &BoxState) -> Result<TrimReport, StoreError> {
    let limit = state.options.max_size.unwrap_or(u64::MAX);
    state.store.trim_with(
        limit,
        TrimOrder::LeastRecentlyRead,
        |entry, size, remove| state.held.removing(entry, size, remove),
    )
}
