//! What the mount says about itself and its entries: the status file (counters, uploads, the
//! boxes' health, what was fetched ahead) and each entry's extended attributes (where it lives,
//! whether it is held here).
//!
//! The status file is a symbolic link, to a snapshot of the status document written for each
//! reader that follows it into a directory of the system's temporary directory ([`Snapshots`];
//! not the store's disk, which may be the full disk the status is read to find out about). A
//! regular file could not give each reader one whole document: by default the kernel opens the
//! mount's files without asking (see `unopened`) and shares one page cache among all of a
//! file's readers, so two readers of a changing document would each get pieces of both. The
//! kernel asks for a link's target each time a path goes through it, and a snapshot never
//! changes once written.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::shared::Shared;
use crate::dune::layout::Entry;

/// Snapshots kept: a reader's snapshot is removed only after this many later readers (the
/// kernel opens a link's target as soon as it has it).
const SNAPSHOTS_KEPT: u64 = 64;

/// The status file's snapshots: a directory of their own, removed with the mount.
pub struct Snapshots {
    dir: tempfile::TempDir,
    written: AtomicU64,
}

impl Snapshots {
    /// A new directory for them, readable by all (a mount with `--allow-other` serves other
    /// users its status too).
    pub fn create() -> io::Result<Snapshots> {
        let dir = tempfile::Builder::new()
            .prefix("dune-cachefs-status-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir()?;
        Ok(Snapshots {
            dir,
            written: AtomicU64::new(0),
        })
    }

    /// Writes `document` as a new snapshot and returns its path, removing the oldest kept.
    fn write(&self, document: &[u8]) -> io::Result<PathBuf> {
        let number = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.dir.path().join(format!("{number}.json"));
        fs::write(&path, document)?;
        if let Some(old) = number.checked_sub(SNAPSHOTS_KEPT) {
            let _ = fs::remove_file(self.dir.path().join(format!("{old}.json")));
        }
        Ok(path)
    }
}

/// The extended attributes every entry has, for `getfattr -d`.
const XATTR_LOCATION: &str = "user.dune-cachefs.location";
const XATTR_CACHED: &str = "user.dune-cachefs.cached";

impl Shared {
    /// Writes a snapshot of the status document for a reader and returns its path: the status
    /// file's target.
    pub(super) fn status_snapshot(&self) -> io::Result<PathBuf> {
        self.status_snapshots.write(&self.status_document())
    }

    fn status_document(&self) -> Vec<u8> {
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
            "reads": self.reads.to_string(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "inodes": self.inodes.assigned(),
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
