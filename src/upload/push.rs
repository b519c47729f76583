//! `push`: upload a whole local Dune cache to the boxes that own its entries.
//!
//! Two phases, each spread over a few threads: first every artifact, then every metadata entry
//! whose artifacts all made it (uploaded now, already on their box, or found there). Re-running
//! after an interruption finishes the job, since entries a box already has are skipped.

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{upload_entry, UploadError, Uploaded};
use crate::cluster::Cluster;
use crate::dune::key::Key;
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;
use crate::store::{Store, StoreError};

/// The outcome of a push, entry by entry where it matters.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Entries the boxes did not have and now do.
    pub sent: u64,
    /// Entries the boxes already had.
    pub already_there: u64,
    /// Metadata refused because the box holds a different value: `(entry, the box's message)`.
    pub collisions: Vec<(Entry, String)>,
    /// Entries that did not reach their box, with the reason.
    pub failures: Vec<UploadError>,
}

impl PushReport {
    /// Whether every entry is now on its box (collisions count as settled: the box keeps the
    /// first value, which is the design).
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Progress so far, for a progress line.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Entries handled.
    pub done: u64,
    /// Entries in all.
    pub total: u64,
    /// Entries that failed so far.
    pub failed: u64,
}

/// Uploads every entry of `store` to its owning box, `parallelism` transfers at a time, calling
/// `progress` after each entry (from any of the worker threads).
pub fn push(
    cluster: &Cluster,
    store: &Store,
    parallelism: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<PushReport, StoreError> {
    let entries = store.entries()?;
    let (artifacts, metadata): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| e.kind == EntryKind::File);
    let total = (artifacts.len() + metadata.len()) as u64;
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let report = Mutex::new(PushReport::default());
    let on_artifacts_box = Mutex::new(HashSet::new());

    let record = |entry: &Entry, result: Result<Uploaded, UploadError>| {
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(uploaded) => {
                if entry.kind == EntryKind::File {
                    on_artifacts_box
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(entry.key);
                }
                match uploaded {
                    Uploaded::Sent => report.sent += 1,
                    Uploaded::AlreadyThere => report.already_there += 1,
                    Uploaded::Collision(message) => report.collisions.push((*entry, message)),
                }
            }
            Err(e) => {
                log::warn!("{e}");
                failed.fetch_add(1, Ordering::Relaxed);
                report.failures.push(e);
            }
        }
        drop(report);
        progress(Progress {
            done: done.fetch_add(1, Ordering::Relaxed) + 1,
            total,
            failed: failed.load(Ordering::Relaxed),
        });
    };

    parallel_each(&artifacts, parallelism, |entry| {
        record(entry, upload_entry(cluster, store, entry));
    });
    let uploaded_artifacts =
        std::mem::take(&mut *on_artifacts_box.lock().unwrap_or_else(|e| e.into_inner()));
    let local_artifacts: HashSet<Key> = artifacts.iter().map(|e| e.key).collect();
    parallel_each(&metadata, parallelism, |entry| {
        let result =
            first_missing_artifact(cluster, store, entry, &uploaded_artifacts, &local_artifacts)
                .and_then(|()| upload_entry(cluster, store, entry));
        record(entry, result);
    });
    Ok(report.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// `Ok` if every artifact `entry` names is on its box: uploaded in this push, or (when this store
/// does not hold it) found on its box now, or on its previous owner while entries move.
fn first_missing_artifact(
    cluster: &Cluster,
    store: &Store,
    entry: &Entry,
    uploaded: &HashSet<Key>,
    local: &HashSet<Key>,
) -> Result<(), UploadError> {
    let path = store.path_of(entry);
    let local_err = |source| UploadError::Local {
        entry: *entry,
        source,
    };
    let bytes = fs::read(&path).map_err(|e| local_err(StoreError::io("read", &path)(e)))?;
    let metadata = Metadata::parse(&bytes).map_err(|source| {
        local_err(StoreError::BadMetadata {
            entry: *entry,
            source,
        })
    })?;
    for key in metadata.artifact_keys() {
        let artifact = Entry {
            kind: EntryKind::File,
            key,
        };
        let on_box = if uploaded.contains(&key) {
            true
        } else if local.contains(&key) {
            false
        } else {
            matches!(cluster.read(&key, |c| c.head(&artifact)), Ok(Some(_)))
        };
        if !on_box {
            return Err(UploadError::MissingArtifact {
                entry: *entry,
                missing: artifact,
            });
        }
    }
    Ok(())
}

/// Runs `f` on every item with `threads` worker threads pulling from a shared index: the
/// simplest scheduler that keeps every worker busy until the list is done.
pub(crate) fn parallel_each<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    f(item);
                }
            });
        }
    });
}
