//! Background upload of the entries Dune stores through the mount.
//!
//! Storing must never wait on the network, and nothing stored may be lost. So an install only
//! *records* the entry — an empty file named after it in the journal directory
//! ([`JOURNAL_DIR`] in the store) — and queues it; worker threads upload it to its owning box and
//! delete the record once the box has it. After a crash or `kill -9` the records are still there,
//! and the next mount queues them again. (The records are not fsynced: a power cut may forget a
//! pending upload, never an entry; `dune-cachefs push` catches any such stragglers up.)
//!
//! Order: metadata is uploaded only after every artifact it names that is still pending here,
//! so a box never offers a rule whose files it lacks. A box that is down makes its uploads wait
//! and retry with a growing back-off; a metadata collision (409) or a refusal (422) is logged
//! and final, never retried forever.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{upload_entry, UploadError, Uploaded};
use crate::cluster::Cluster;
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// The journal of pending uploads, inside the store.
pub const JOURNAL_DIR: &str = ".dune-cachefs-uploads";

/// The first retry delay after a failed upload; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long metadata waits before checking again whether its artifacts are up.
const ORDER_WAIT: Duration = Duration::from_millis(100);

/// Counters for the status file.
#[derive(Default, Debug)]
pub struct UploadStats {
    /// Entries the boxes now hold thanks to us.
    pub uploaded: AtomicU64,
    /// Entries the boxes already had.
    pub already_there: AtomicU64,
    /// Metadata the boxes refused because they hold another value (kept theirs).
    pub collisions: AtomicU64,
    /// Entries a box refused as invalid (final; see the log).
    pub refused: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retries: AtomicU64,
}

/// A queued upload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    entry: Entry,
    failures: u32,
}

/// The uploader of one mount.
pub struct Uploader {
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    journal: PathBuf,
    pending: Mutex<HashSet<Entry>>,
    queue: Sender<Job>,
    delayed: Mutex<BinaryHeap<Reverse<(Instant, Job)>>>,
    delayed_changed: Condvar,
    /// What happened so far.
    pub stats: UploadStats,
}

impl Uploader {
    /// Starts `workers` upload threads and queues every upload left pending by an earlier run.
    pub fn start(
        cluster: Arc<Cluster>,
        store: Arc<Store>,
        workers: usize,
    ) -> Result<Arc<Uploader>, StoreError> {
        let journal = store.root().join(JOURNAL_DIR);
        fs::create_dir_all(&journal).map_err(StoreError::io("create", &journal))?;
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let uploader = Arc::new(Uploader {
            cluster,
            store,
            journal,
            pending: Mutex::new(HashSet::new()),
            queue,
            delayed: Mutex::new(BinaryHeap::new()),
            delayed_changed: Condvar::new(),
            stats: UploadStats::default(),
        });
        for i in 0..workers.max(1) {
            let (worker, jobs) = (uploader.clone(), jobs.clone());
            std::thread::Builder::new()
                .name(format!("upload-{i}"))
                .spawn(move || {
                    for job in jobs {
                        worker.attempt(job);
                    }
                })
                .map_err(|e| StoreError::io("start upload thread for", &uploader.journal)(e))?;
        }
        let delayer = uploader.clone();
        std::thread::Builder::new()
            .name("upload-retry".into())
            .spawn(move || delayer.release_delayed())
            .map_err(|e| StoreError::io("start upload thread for", &uploader.journal)(e))?;
        uploader.resume()?;
        Ok(uploader)
    }

    /// Records `entry` as pending and queues its upload. Returns once the record exists.
    pub fn enqueue(&self, entry: Entry) -> Result<(), StoreError> {
        let record = self.record_path(&entry);
        fs::File::create(&record).map_err(StoreError::io("create", &record))?;
        lock(&self.pending).insert(entry);
        let _ = self.queue.send(Job { entry, failures: 0 });
        Ok(())
    }

    /// How many uploads are pending (recorded and not yet on their box).
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Queues the records an earlier run left, artifacts first.
    fn resume(&self) -> Result<(), StoreError> {
        let mut found = Vec::new();
        for item in fs::read_dir(&self.journal).map_err(StoreError::io("list", &self.journal))? {
            let item = item.map_err(StoreError::io("list", &self.journal))?;
            match item.file_name().to_str().and_then(parse_record_name) {
                Some(entry) => found.push(entry),
                None => log::warn!("ignoring {} in the upload journal", item.path().display()),
            }
        }
        found.sort();
        if !found.is_empty() {
            log::info!("resuming {} pending uploads", found.len());
        }
        lock(&self.pending).extend(found.iter().copied());
        for entry in found {
            let _ = self.queue.send(Job { entry, failures: 0 });
        }
        Ok(())
    }

    fn attempt(&self, job: Job) {
        let entry = job.entry;
        if entry.kind != EntryKind::File && self.names_pending_artifact(&entry) {
            return self.delay(job, ORDER_WAIT);
        }
        match upload_entry(&self.cluster, &self.store, &entry) {
            Ok(Uploaded::Sent) => self.finish(&entry, &self.stats.uploaded),
            Ok(Uploaded::AlreadyThere) => self.finish(&entry, &self.stats.already_there),
            Ok(Uploaded::Collision(message)) => {
                log::warn!("upload of {entry}: the box keeps another value ({message})");
                self.finish(&entry, &self.stats.collisions);
            }
            Err(e @ UploadError::Refused { .. }) => {
                log::error!("upload refused: {e}");
                self.finish(&entry, &self.stats.refused);
            }
            Err(UploadError::Local { source, .. })
                if source.io_kind() == Some(io::ErrorKind::NotFound) =>
            {
                log::info!("{entry} left the store before its upload; dropping it");
                self.finish(&entry, &self.stats.refused);
            }
            Err(e) => {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = FIRST_RETRY
                    .saturating_mul(1 << job.failures.min(8))
                    .min(MAX_RETRY);
                log::warn!("upload failed, retrying in {wait:?}: {e}");
                self.delay(
                    Job {
                        entry,
                        failures: job.failures + 1,
                    },
                    wait,
                );
            }
        }
    }

    /// Whether metadata names an artifact whose own upload is still pending here.
    fn names_pending_artifact(&self, entry: &Entry) -> bool {
        let Ok(bytes) = fs::read(self.store.path_of(entry)) else {
            return false;
        };
        let Ok(metadata) = Metadata::parse(&bytes) else {
            return false;
        };
        let pending = lock(&self.pending);
        let waiting = metadata.artifact_keys().any(|key| {
            pending.contains(&Entry {
                kind: EntryKind::File,
                key,
            })
        });
        waiting
    }

    fn finish(&self, entry: &Entry, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).remove(entry);
        let record = self.record_path(entry);
        if let Err(e) = fs::remove_file(&record) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove upload record {}: {e}", record.display());
            }
        }
    }

    fn delay(&self, job: Job, wait: Duration) {
        lock(&self.delayed).push(Reverse((Instant::now() + wait, job)));
        self.delayed_changed.notify_one();
    }

    /// Moves delayed jobs back to the queue when their time comes.
    fn release_delayed(&self) {
        let mut delayed = lock(&self.delayed);
        loop {
            let now = Instant::now();
            match delayed.peek() {
                Some(Reverse((due, _))) if *due <= now => {
                    if let Some(Reverse((_, job))) = delayed.pop() {
                        let _ = self.queue.send(job);
                    }
                }
                Some(Reverse((due, _))) => {
                    let wait = *due - now;
                    delayed = self
                        .delayed_changed
                        .wait_timeout(delayed, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    delayed = self
                        .delayed_changed
                        .wait(delayed)
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    fn record_path(&self, entry: &Entry) -> PathBuf {
        self.journal.join(record_name(entry))
    }

    /// The counters and the pending count, as JSON for the status file.
    pub fn to_json(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "pending": self.pending(),
            "uploaded": load(&self.stats.uploaded),
            "already_there": load(&self.stats.already_there),
            "collisions": load(&self.stats.collisions),
            "refused": load(&self.stats.refused),
            "retries": load(&self.stats.retries),
        })
    }
}

/// `files-v4-<key>`: the entry's kind directory with `/` made `-`, then its key.
fn record_name(entry: &Entry) -> String {
    format!("{}-{}", entry.kind.dir().replace('/', "-"), entry.key)
}

fn parse_record_name(name: &str) -> Option<Entry> {
    let (kind, key) = name.rsplit_once('-')?;
    Some(Entry {
        kind: EntryKind::from_dir(&kind.replace('-', "/"))?,
        key: key.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_round_trip() {
        let key = "ab23456789abcdef0123456789abcdef".parse().unwrap();
        for kind in EntryKind::ALL {
            let entry = Entry { kind, key };
            assert_eq!(parse_record_name(&record_name(&entry)), Some(entry));
        }
        assert_eq!(parse_record_name("files-v4-xyz"), None);
        assert_eq!(parse_record_name("junk"), None);
    }
}
