//! What the mount says about itself and its entries: the status file (counters, uploads, the
//! boxes' health, what was fetched ahead) and each entry's extended attributes (where it lives,
//! whether it is held here).

use std::sync::atomic::Ordering;

use super::shared::Shared;
use crate::dune::layout::Entry;

/// The extended attributes every entry has, for `getfattr -d`.
const XATTR_LOCATION: &str = "user.dune-cachefs.location";
const XATTR_CACHED: &str = "user.dune-cachefs.cached";

impl Shared {
    pub(super) fn status_document(&self) -> Vec<u8> {
        let mut boxes = Vec::new();
        if let Some(remote) = &self.remote {
            for client in remote.cluster().clients() {
                let state = match client.health() {
                    crate::cluster::health::HealthState::Up => serde_json::json!({"state": "up"}),
                    crate::cluster::health::HealthState::Down { cause, until, .. } => {
                        serde_json::json!({
                            "state": "down",
                            "cause": cause,
                            "retry_in_ms": until.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
                        })
                    }
                };
                boxes.push(serde_json::json!({ "url": client.url(), "health": state }));
            }
        }
        let document = serde_json::json!({
            "store": self.store.root().display().to_string(),
            "policy": self.policy.to_string(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "inodes": self.inodes.assigned(),
            "inodes_evicted": self.inodes.evictions(),
            "settling": self.landing.waiting(),
            "counters": self.stats.to_json(),
            "ahead": self.remote.as_ref().map(|r| r.ahead_json()),
            "requests": self.requests.to_json(),
            "uploads": self.uploader.as_ref().map(|u| u.to_json()),
            "boxes": boxes,
        });
        let mut text = serde_json::to_vec_pretty(&document).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// The extended attributes of an entry: where it lives and whether it is installed.
    pub(super) fn entry_xattrs(&self, entry: &Entry) -> Vec<(&'static str, String)> {
        let cached = self.landing.holds(entry);
        let location = match (&self.remote, cached) {
            (_, true) => "local".to_string(),
            (Some(remote), false) => remote.cluster().owner(&entry.key).url().to_string(),
            (None, false) => "absent".to_string(),
        };
        vec![
            (XATTR_LOCATION, location),
            (XATTR_CACHED, if cached { "yes" } else { "no" }.to_string()),
        ]
    }
}
