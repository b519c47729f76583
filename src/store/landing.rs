//! Verified entries on their way to the disk, readable before they get there.
//!
//! A fetched entry is wanted *now* by the reader that asked for it, but making it durable (flush
//! it to disk, then link it under its name) costs a disk flush per entry: on a build that
//! restores rules one after another, more than the transfer itself. So the mount hands what it
//! fetched and verified to a [`Landing`]: readers are answered from memory or the temp file at
//! once, and settler threads flush and name the entries behind them, many at a time with one
//! flush of the disk.
//!
//! Nothing is given up for it. An entry never has its name before its bytes are on disk, so a
//! power cut still cannot leave a truncated entry under a valid key. One that has not settled
//! when the process dies is only a local copy lost (its box still holds it) and a temp file,
//! swept when the store's owner starts again. A clean unmount settles everything first
//! ([`Landing::finish`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::{InstallOutcome, Stage, Store, StoreError, VerifiedEntry};
use crate::dune::layout::Entry;

/// Entries waiting to settle at most: past this, [`Landing::land`] settles the entry itself, so
/// a disk slower than the network holds the fetches back rather than piling up temp files and
/// open descriptors.
const MAX_WAITING: usize = 1024;

/// Threads flushing and naming entries: enough to keep a disk busy with two flushes at a time,
/// while the fetch workers go on.
const SETTLERS: usize = 2;

/// Entries a settler writes out and then flushes to disk together: one flush of the disk for
/// many entries is what keeps up with a network that delivers thousands of small ones a second.
const BATCH: usize = 256;

/// Entries fetched and verified but not yet durable in the store, and the threads settling them.
/// Reads of entries go through here ([`Landing::open`], [`Landing::metadata`]), so an entry is
/// found the same way whether it has settled or not.
pub struct Landing {
    store: Arc<Store>,
    waiting: Mutex<HashMap<Entry, Arc<VerifiedEntry>>>,
    /// `None` once [`Landing::finish`] has begun: entries are then settled at once.
    queue: Mutex<Option<Sender<Entry>>>,
    settlers: Mutex<Vec<JoinHandle<()>>>,
}

impl Landing {
    /// A landing for `store`, with its settler threads running.
    pub fn start(store: Arc<Store>) -> Arc<Landing> {
        Landing::start_with(store, SETTLERS)
    }

    /// A landing with `settlers` threads (none: entries wait for [`Landing::finish`], which
    /// tests use to see that it settles everything itself).
    pub(super) fn start_with(store: Arc<Store>, settlers: usize) -> Arc<Landing> {
        let (queue, settle) = crossbeam_channel::unbounded::<Entry>();
        let landing = Arc::new(Landing {
            store,
            waiting: Mutex::new(HashMap::new()),
            queue: Mutex::new(Some(queue)),
            settlers: Mutex::new(Vec::new()),
        });
        let settlers = (0..settlers)
            .map(|i| {
                let landing = landing.clone();
                let settle = settle.clone();
                std::thread::Builder::new()
                    .name(format!("settle-{i}"))
                    .spawn(move || {
                        for first in &settle {
                            let mut batch = vec![first];
                            batch.extend(settle.try_iter().take(BATCH - 1));
                            landing.settle(&batch);
                        }
                    })
                    .expect("cannot start a settler thread")
            })
            .collect();
        *lock(&landing.settlers) = settlers;
        landing
    }

    /// Makes `verified` readable at once, and durable under its name soon. When too many entries
    /// are waiting already (or the landing is finishing), it is settled here and now instead,
    /// and an error doing so is returned.
    pub fn land(&self, verified: VerifiedEntry) -> Result<(), StoreError> {
        let entry = verified.entry();
        // Installed meanwhile (by Dune, through the mount): that copy stands.
        if self.store.path_of(&entry).exists() {
            return Ok(());
        }
        let queue = lock(&self.queue);
        let mut waiting = lock(&self.waiting);
        match queue.as_ref() {
            // A second copy of an entry already landing (fetched twice) adds nothing.
            _ if waiting.contains_key(&entry) => Ok(()),
            Some(queue) if waiting.len() < MAX_WAITING => {
                waiting.insert(entry, Arc::new(verified));
                // The settlers stop only after the queue is dropped: a send cannot fail.
                let _ = queue.send(entry);
                Ok(())
            }
            _ => {
                drop(waiting);
                drop(queue);
                report(&entry, verified.commit()).map(|_| ())
            }
        }
    }

    /// Opens `entry`'s bytes for reading, landing or settled.
    pub fn open(&self, entry: &Entry) -> io::Result<File> {
        match self.landing(entry) {
            Some(verified) => verified.open(),
            None => File::open(self.store.path_of(entry)),
        }
    }

    /// The attributes of `entry`'s file, landing or settled.
    pub fn metadata(&self, entry: &Entry) -> io::Result<fs::Metadata> {
        match self.landing(entry) {
            Some(verified) => verified.metadata(),
            None => fs::metadata(self.store.path_of(entry)),
        }
    }

    /// Whether `entry` is held locally, landing or settled.
    pub fn holds(&self, entry: &Entry) -> bool {
        self.landing(entry).is_some() || self.store.path_of(entry).exists()
    }

    /// How many entries are waiting to settle (for the mount's status).
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Settles every waiting entry and stops the settlers: call before the process exits, so a
    /// clean stop keeps every entry it fetched. From then on, [`Landing::land`] settles at once.
    pub fn finish(&self) {
        drop(lock(&self.queue).take());
        for settler in std::mem::take(&mut *lock(&self.settlers)) {
            if settler.join().is_err() {
                log::error!("a settler thread panicked");
            }
        }
        // Whatever the settlers left (a panicked one's share), settled here.
        let left: Vec<Entry> = lock(&self.waiting).keys().copied().collect();
        for batch in left.chunks(BATCH) {
            self.settle(batch);
        }
    }

    fn landing(&self, entry: &Entry) -> Option<Arc<VerifiedEntry>> {
        lock(&self.waiting).get(entry).cloned()
    }

    /// Writes out, flushes and names `entries`, then forgets them: their names now find the
    /// same files. They stay in the waiting map while they settle, so readers find them
    /// throughout.
    fn settle(&self, entries: &[Entry]) {
        let landed: Vec<(Entry, Arc<VerifiedEntry>)> = entries
            .iter()
            .filter_map(|entry| self.landing(entry).map(|verified| (*entry, verified)))
            .collect();
        let mut staged = Vec::new();
        for (entry, verified) in &landed {
            match verified.stage() {
                Ok(Stage::Staged(s)) => staged.push((entry, s)),
                Ok(Stage::Taken(outcome)) => drop(report(entry, Ok(outcome))),
                Err(e) => drop(report(entry, Err(e))),
            }
        }
        match flush(&self.store, staged.iter().map(|(_, s)| s.file())) {
            Ok(()) => {
                for (entry, s) in staged {
                    let _ = report(entry, s.link());
                }
            }
            Err(e) => log::warn!(
                "cannot flush {} entries to disk in {}: {e}; not keeping them (their boxes hold them)",
                staged.len(),
                self.store.root().display()
            ),
        }
        let mut waiting = lock(&self.waiting);
        for (entry, _) in &landed {
            waiting.remove(entry);
        }
    }
}

/// Gets `files` (temp files of `store`) to disk: with one `syncfs` of the store's filesystem
/// when there are several (on Linux), else one `fsync` each.
fn flush<'f>(store: &Store, files: impl ExactSizeIterator<Item = &'f File>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if files.len() > 1 {
        let root = File::open(store.root())?;
        return nix::unistd::syncfs(&root).map_err(io::Error::from);
    }
    let _ = store;
    for file in files {
        file.sync_all()?;
    }
    Ok(())
}

/// Logs what is worth knowing about settling `entry`: a failure (the local copy is lost, the
/// box still holds the entry) or a different metadata value installed meanwhile (which stands).
fn report(
    entry: &Entry,
    outcome: Result<InstallOutcome, StoreError>,
) -> Result<InstallOutcome, StoreError> {
    match &outcome {
        Err(e) => log::warn!("keeping {entry} in the store: {e}; its box still holds it"),
        Ok(InstallOutcome::Collision { .. }) => {
            log::warn!("{entry}: another value was stored meanwhile; it stands")
        }
        Ok(_) => {}
    }
    outcome
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain maps).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
