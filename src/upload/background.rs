//! Background upload of the entries Dune stores through the mount.
//!
//! Storing must never wait on the network, and nothing stored may be lost. So before an entry is
//! installed, the install *records* it — an empty file named after it in the journal directory
//! ([`JOURNAL_DIR`] in the store), made durable with a flush of that directory — and only then
//! links the entry into place and queues the upload ([`Uploader::record`], then
//! [`Recorded::stored`]). If the record cannot be made, the install is refused: an entry is never
//! installed without one. Worker threads upload queued entries to their owning box and delete the
//! record once the box has it; after a crash, `kill -9` or power loss the records are still there,
//! and the next mount queues them again.
//!
//! Order: metadata is uploaded only after every artifact it names that is still pending here,
//! so a box never offers a rule whose files it lacks. Metadata that names a pending artifact is
//! parked on it and released when that artifact's upload ends: sent on, if the box took the
//! artifact; dropped (and counted), if the box refused it for good. Nothing is polled.
//!
//! A box that is down, slow or overloaded makes its uploads wait and retry with a growing
//! back-off, capped at 30 s. A final refusal ([`super::is_final_refusal`]: the entry is
//! too large for the box, the configs disagree, the copy is corrupt) ends the upload: counted,
//! logged once with the reason, and listed in the status file; metadata naming an artifact so
//! refused is dropped. A metadata collision (409) ends an upload too. What survives a crash or a
//! power loss: `docs/deployment.md`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
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
use crate::metrics::{Exposition, Kind};
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// The journal of pending uploads, inside the store.
pub const JOURNAL_DIR: &str = ".dune-cachefs-uploads";

/// The first retry delay after a failed upload; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How many final refusals the status file lists (the most recent ones).
const REFUSALS_SHOWN: usize = 16;

/// Counters for the status file.
#[derive(Default, Debug)]
pub struct UploadStats {
    /// Entries the boxes now hold thanks to us.
    pub uploaded: AtomicU64,
    /// Entries the boxes already had.
    pub already_there: AtomicU64,
    /// Metadata the boxes refused because they hold another value (kept theirs).
    pub collisions: AtomicU64,
    /// Entries a box refused for good (see the log and the status file's `refusals`).
    pub refused: AtomicU64,
    /// Metadata not uploaded because an artifact it names was refused for good, or left the
    /// store before its upload.
    pub dropped: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retries: AtomicU64,
}

/// A queued upload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    entry: Entry,
    failures: u32,
}

/// How an upload ended.
enum Ended {
    /// The box holds the entry (sent now, or it had it).
    OnBox,
    /// It will never be uploaded from here, for the reason given (logged and listed).
    Given(String),
}

/// What is pending, and which metadata waits on which artifact. One lock for both, so that an
/// artifact's upload cannot end between metadata finding it pending and parking on it.
#[derive(Default)]
struct Pending {
    entries: HashSet<Entry>,
    /// Metadata jobs parked on a pending artifact, by that artifact.
    parked: HashMap<Entry, Vec<Job>>,
    /// The most recent final refusals, newest last, for the status file.
    refusals: VecDeque<String>,
    /// The artifacts refused for good during this mount: metadata naming one is dropped.
    refused: HashSet<Entry>,
}

/// What stands between a metadata entry and its upload.
enum ArtifactsAhead {
    /// Nothing: it can go.
    None,
    /// An artifact it names is pending here: the job is parked on it.
    Parked,
    /// An artifact it names was refused for good: it must not go.
    Refused(Entry),
}

/// Whether an install made a new record (see [`Uploader::record`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "tell the uploader how the install ended: Recorded::stored or Recorded::not_stored"]
pub enum Recorded {
    /// The record is new: the entry's install decides whether it stays.
    New(Entry),
    /// The entry was already pending (recorded earlier): its record stands either way.
    AlreadyPending,
}

impl Recorded {
    /// The install stored the entry: its upload is queued.
    pub fn stored(self, uploader: &Uploader) {
        if let Recorded::New(entry) = self {
            let _ = uploader.queue.send(Job { entry, failures: 0 });
        }
    }

    /// The install stored nothing new (the entry was there already, or the install failed): the
    /// record made for it goes.
    pub fn not_stored(self, uploader: &Uploader) {
        if let Recorded::New(entry) = self {
            // Metadata parked on it meanwhile goes on: the artifact is not pending after all.
            uploader.end(&entry, None, Ended::OnBox);
        }
    }
}

/// The uploader of one mount.
pub struct Uploader {
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    journal: PathBuf,
    /// The journal directory, kept open to flush new records' names to disk.
    journal_dir: fs::File,
    pending: Mutex<Pending>,
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
        let journal_dir = fs::File::open(&journal).map_err(StoreError::io("open", &journal))?;
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let uploader = Arc::new(Uploader {
            cluster,
            store,
            journal,
            journal_dir,
            pending: Mutex::new(Pending::default()),
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

    /// Records `entry` as pending, durably, before it is installed: returns once the record's
    /// name is on disk. An error means the entry must not be installed (its upload could be
    /// lost). Say how the install ended with [`Recorded::stored`] or [`Recorded::not_stored`].
    pub fn record(&self, entry: Entry) -> Result<Recorded, StoreError> {
        if lock(&self.pending).entries.contains(&entry) {
            return Ok(Recorded::AlreadyPending);
        }
        let record = self.record_path(&entry);
        let made = fs::File::create(&record)
            .map_err(StoreError::io("create", &record))
            .and_then(|_| {
                self.journal_dir
                    .sync_all()
                    .map_err(StoreError::io("flush", &self.journal))
            });
        if let Err(e) = made {
            self.remove_record(&entry);
            return Err(e);
        }
        lock(&self.pending).entries.insert(entry);
        Ok(Recorded::New(entry))
    }

    /// Whether `entry` is waiting for its upload (the store must keep it until then).
    pub fn is_pending(&self, entry: &Entry) -> bool {
        lock(&self.pending).entries.contains(entry)
    }

    /// How many uploads are pending (recorded and not yet on their box).
    pub fn pending(&self) -> usize {
        lock(&self.pending).entries.len()
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
        lock(&self.pending).entries.extend(found.iter().copied());
        for entry in found {
            let _ = self.queue.send(Job { entry, failures: 0 });
        }
        Ok(())
    }

    fn attempt(&self, job: Job) {
        let entry = job.entry;
        if entry.kind != EntryKind::File {
            match self.artifacts_ahead(job) {
                ArtifactsAhead::None => {}
                ArtifactsAhead::Parked => return,
                ArtifactsAhead::Refused(artifact) => return self.drop_naming(&entry, &artifact),
            }
        }
        match upload_entry(&self.cluster, &self.store, &entry) {
            Ok(Uploaded::Sent) => self.end(&entry, Some(&self.stats.uploaded), Ended::OnBox),
            Ok(Uploaded::AlreadyThere) => {
                self.end(&entry, Some(&self.stats.already_there), Ended::OnBox)
            }
            Ok(Uploaded::Collision(message)) => {
                log::warn!("upload of {entry}: the box keeps another value ({message})");
                // The box holds a value for the rule: what parked on this entry (nothing, it is
                // metadata) could go on.
                self.end(&entry, Some(&self.stats.collisions), Ended::OnBox);
            }
            Err(e @ UploadError::Refused { .. }) => {
                let reason = e.to_string();
                log::error!("upload refused for good: {reason}");
                self.end(&entry, Some(&self.stats.refused), Ended::Given(reason));
            }
            Err(UploadError::Local { source, .. })
                if source.io_kind() == Some(io::ErrorKind::NotFound) =>
            {
                let reason = format!("{entry} left the store before its upload");
                log::info!("{reason}; dropping it");
                self.end(&entry, Some(&self.stats.dropped), Ended::Given(reason));
            }
            Err(e) => {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = retry_delay(job.failures);
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

    /// Whether a metadata job must wait for (or give up on) an artifact it names: parks it on
    /// the first one whose upload is still pending here. Nothing is ahead if its file cannot be
    /// read or parsed (the upload then says why).
    fn artifacts_ahead(&self, job: Job) -> ArtifactsAhead {
        let Ok(bytes) = fs::read(self.store.path_of(&job.entry)) else {
            return ArtifactsAhead::None;
        };
        let Ok(metadata) = Metadata::parse(&bytes) else {
            return ArtifactsAhead::None;
        };
        let mut pending = lock(&self.pending);
        for key in metadata.artifact_keys() {
            let artifact = Entry {
                kind: EntryKind::File,
                key,
            };
            if pending.refused.contains(&artifact) {
                return ArtifactsAhead::Refused(artifact);
            }
            if pending.entries.contains(&artifact) {
                pending.parked.entry(artifact).or_default().push(job);
                return ArtifactsAhead::Parked;
            }
        }
        ArtifactsAhead::None
    }

    /// Drops metadata `entry`'s upload: it names `artifact`, which will not reach its box.
    fn drop_naming(&self, entry: &Entry, artifact: &Entry) {
        let reason =
            format!("{entry} not uploaded: it names {artifact}, which will not reach its box");
        log::warn!("{reason}");
        self.end(entry, Some(&self.stats.dropped), Ended::Given(reason));
    }

    /// Ends `entry`'s upload: counts it, removes its record, and settles what was parked on it.
    fn end(&self, entry: &Entry, counter: Option<&AtomicU64>, ended: Ended) {
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let parked = {
            let mut pending = lock(&self.pending);
            pending.entries.remove(entry);
            if let Ended::Given(reason) = &ended {
                if pending.refusals.len() == REFUSALS_SHOWN {
                    pending.refusals.pop_front();
                }
                pending.refusals.push_back(reason.clone());
                if entry.kind == EntryKind::File {
                    pending.refused.insert(*entry);
                }
            }
            pending.parked.remove(entry).unwrap_or_default()
        };
        self.remove_record(entry);
        for job in parked {
            match &ended {
                // The artifact is up: the metadata goes on (to its next pending artifact, if any).
                Ended::OnBox => drop(self.queue.send(job)),
                Ended::Given(_) => self.drop_naming(&job.entry, entry),
            }
        }
    }

    fn remove_record(&self, entry: &Entry) {
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

    /// The counters, the pending count and the recent final refusals, as JSON for the status
    /// file.
    pub fn to_json(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (pending, refusals) = {
            let pending = lock(&self.pending);
            (pending.entries.len(), pending.refusals.clone())
        };
        serde_json::json!({
            "pending": pending,
            "uploaded": load(&self.stats.uploaded),
            "already_there": load(&self.stats.already_there),
            "collisions": load(&self.stats.collisions),
            "refused": load(&self.stats.refused),
            "dropped": load(&self.stats.dropped),
            "retries": load(&self.stats.retries),
            "refusals": refusals,
        })
    }

    /// Uploads pending per owning box, in config order (every box named, with 0 if none): O(the
    /// entries pending), read when metrics are scraped.
    pub fn pending_by_box(&self) -> Vec<(&str, u64)> {
        let mut counts: Vec<(&str, u64)> = self
            .cluster
            .clients()
            .iter()
            .map(|client| (client.url(), 0))
            .collect();
        let index_of = |entry: &Entry| self.cluster.config().owner_index(&entry.key);
        for entry in &lock(&self.pending).entries {
            counts[index_of(entry)].1 += 1;
        }
        counts
    }

    /// The upload counters as Prometheus metrics.
    pub fn write_metrics(&self, page: &mut Exposition) {
        let name = "dune_cachefs_mount_uploads_pending";
        page.family(
            name,
            Kind::Gauge,
            "Entries stored through the mount and not yet on their box, by owning box.",
        );
        for (url, pending) in self.pending_by_box() {
            page.sample(name, &[("box", url)], pending);
        }
        let name = "dune_cachefs_mount_uploads_total";
        page.family(name, Kind::Counter, "Uploads ended, by outcome: uploaded (the box stored it), already_there, collision (the box holds another metadata value), refused (for good), dropped (metadata naming a refused or vanished artifact).");
        let stats = &self.stats;
        for (outcome, counter) in [
            ("uploaded", &stats.uploaded),
            ("already_there", &stats.already_there),
            ("collision", &stats.collisions),
            ("refused", &stats.refused),
            ("dropped", &stats.dropped),
        ] {
            page.sample(
                name,
                &[("outcome", outcome)],
                counter.load(Ordering::Relaxed),
            );
        }
        page.single(
            "dune_cachefs_mount_upload_retries_total",
            Kind::Counter,
            "Upload attempts that failed and will be retried.",
            stats.retries.load(Ordering::Relaxed),
        );
    }
}

/// How long to wait before the next attempt after `failures` failed ones: doubling from
/// [`FIRST_RETRY`], capped at [`MAX_RETRY`].
fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.min(16))
        .min(MAX_RETRY)
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

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        assert_eq!(retry_delay(0), FIRST_RETRY);
        assert_eq!(retry_delay(1), FIRST_RETRY * 2);
        assert_eq!(retry_delay(3), FIRST_RETRY * 8);
        assert_eq!(retry_delay(6), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
