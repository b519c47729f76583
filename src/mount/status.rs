//! What the mount says about itself and its entries: the status file (counters, uploads, the
//! boxes' health, what was fetched ahead), the same counters as Prometheus metrics, and each
//! entry's extended attributes (where it lives, whether it is held here).
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
use crate::cluster::health::HealthState;
use crate::dune::layout::Entry;
use crate::dune::md5_streams;
use crate::metrics::{Exposition, Kind};

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
                    HealthState::Up => serde_json::json!({"state": "up"}),
                    HealthState::Down { cause, until, .. } => {
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
        let md5_hashed = md5_streams::hashed();
        let document = serde_json::json!({
            "store": self.store.root().display().to_string(),
            "policy": self.policy.to_string(),
            "reads": self.reads.to_string(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "inodes": self.inodes.assigned(),
            "inodes_evicted": self.inodes.evictions(),
            "settling": self.landing.waiting(),
            "counters": self.stats.to_json(),
            "md5_ahead_hashed_bytes": {
                "alone": md5_hashed.alone,
                "beside_others": md5_hashed.beside_others,
            },
            "ahead": self.remote.as_ref().map(|r| serde_json::json!({
                "bytes": r.ahead_bytes(),
                "rules": r.ahead_rules(),
            })),
            "requests": self.requests.to_json(),
            "uploads": self.uploader.as_ref().map(|u| u.to_json()),
            "boxes": boxes,
            "errors": self.remote.as_ref().map(|r| r.recent_errors()),
        });
        let mut text = serde_json::to_vec_pretty(&document).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// The metrics page: the status file's counters in the Prometheus text format, plus the
    /// latency of transfers.
    pub(super) fn metrics_page(&self) -> String {
        let mut page = Exposition::default();
        self.stats.each(|name, kind, help, value| {
            let suffix = if kind == Kind::Counter { "_total" } else { "" };
            let name = format!("dune_cachefs_mount_{name}{suffix}");
            page.single(&name, kind, &help, value);
        });
        let name = "dune_cachefs_mount_kernel_requests_total";
        page.family(
            name,
            Kind::Counter,
            "Requests from the kernel, by operation.",
        );
        self.requests.each(|operation, _, _, value| {
            page.sample(name, &[("operation", operation)], value);
        });
        page.single(
            "dune_cachefs_mount_inodes",
            Kind::Gauge,
            "Inode numbers the kernel holds.",
            self.inodes.assigned() as u64,
        );
        page.single(
            "dune_cachefs_mount_settling_entries",
            Kind::Gauge,
            "Fetched entries readable but not yet flushed and named in the store.",
            self.landing.waiting() as u64,
        );
        let name = "dune_cachefs_mount_md5_ahead_hashed_bytes_total";
        page.family(
            name,
            Kind::Counter,
            "Bytes of MD5-era artifacts fetched ahead, hashed alone or beside other entries' in vector lanes (the second costs a fraction of the CPU).",
        );
        let md5_hashed = md5_streams::hashed();
        page.sample(name, &[("hashed", "alone")], md5_hashed.alone);
        page.sample(
            name,
            &[("hashed", "beside_others")],
            md5_hashed.beside_others,
        );
        if let Some(remote) = &self.remote {
            let name = "dune_cachefs_mount_transfer_duration_seconds";
            page.family(name, Kind::Histogram, "Time a transfer from a box took, from a worker taking it to its end (found, missing or failed), verification included.");
            page.histogram(name, &[], remote.transfer_durations());
            let name = "dune_cachefs_mount_box_up";
            page.family(name, Kind::Gauge, "1 while this mount sends requests to the box, 0 while it is down (requests fail fast until its next probe).");
            for client in remote.cluster().clients() {
                let up = u64::from(client.health() == HealthState::Up);
                page.sample(name, &[("box", client.url())], up);
            }
            page.single(
                "dune_cachefs_mount_ahead_unused_bytes",
                Kind::Gauge,
                "Bytes fetched ahead of Dune that Dune has not asked for yet (what a wrong hint would waste).",
                remote.ahead_bytes(),
            );
            page.single(
                "dune_cachefs_mount_ahead_unused_rules",
                Kind::Gauge,
                "Rules fetched ahead of Dune that Dune has not asked for yet.",
                remote.ahead_rules() as u64,
            );
        }
        if let Some(uploader) = &self.uploader {
            uploader.write_metrics(&mut page);
        }
        page.finish()
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
