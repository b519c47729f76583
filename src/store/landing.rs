//! Verified entries on their way to the disk, readable before they get there.
//!
//! A fetched entry is wanted *now* by the reader that asked for it, but making it durable (flush
//! it to disk, then move it under its name) costs a disk flush per entry: on a build that
//! restores rules one after another, more than the transfer itself. So the mount hands what it
//! fetched and verified to a [`Landing`]: readers are answered from memory or the temp file at
//! once, and settler threads flush and name the entries behind them, many at a time with one
//! flush of the disk.
//!
//! Settling waits for a pause. While entries keep landing a restore is under way, and on a
//! machine whose CPUs the build, the fetches and the FUSE threads already share, writing the
//! entries out, the disk flush and the kernel's write-back and journal behind it take CPU the
//! restore needs (by hand, cold Dune 3.22 builds of 4 162 entries from three boxes on loopback,
//! 5 alternating rounds: a median of 2.21 s settling beside them, 1.83 s settling once they
//! paused). So the settlers start once no entry has landed for `QUIET`, or the oldest has
//! waited `DEFER_AT_MOST`, or the landing is three quarters full. Small entries are held in
//! memory up to `MAX_WAITING_IN_MEMORY`; past it they are written out to their temp files at
//! once (not flushed), rather than settled.
//!
//! Nothing is given up for it. An entry never has its name before its bytes are on disk, so a
//! power cut still cannot leave a truncated entry under a valid key. One that has not settled
//! when the process dies is only a local copy lost (its box still holds it) and a temp file,
//! swept when the store's owner starts again. A clean unmount settles everything first
//! ([`Landing::finish`]). First writer wins as in the store: an entry already under its name is
//! what readers get, and one stored through the mount settles what is landing first
//! ([`Landing::settle_now`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::db::Store;
use super::error::StoreError;
use super::outcome::InstallOutcome;
use super::pending::{EntryStat, Stage, VerifiedEntry};
use crate::dune::layout::{Entry, EntryKind};
use crate::sync::lock;

/// Entries waiting to settle at most: past this, [`Landing::land`] settles the entry itself, so
/// a disk slower than the network holds the fetches back rather than piling up temp files.
pub(super) const MAX_WAITING: usize = 8192;

/// Waiting entries past which the settlers start without waiting for a pause.
pub(super) const CROWDED: usize = MAX_WAITING * 3 / 4;

/// Bytes of waiting entries held in memory at most (small entries are; see `SPILL_AT` in
/// `pending`): past this, [`Landing::land`] writes an entry out to its temp file. Small, because
/// it adds to the mount's peak memory whole (freed memory of the inode table is not reused for
/// it), and a larger one restored no faster: cold Dune 3.22 builds, 5 alternating rounds, took a
/// median of 1.64 s with 8 MiB, 1.58 s with 32 MiB and 1.82 s with 64 MiB (in another sitting,
/// against 1.83 s with 32 MiB); with 32 MiB the scale benchmark's peak reached 112 MiB.
pub(super) const MAX_WAITING_IN_MEMORY: u64 = 8 << 20;

/// How long no entry must have landed before the settlers start: entries landing closer together
/// are a restore under way.
pub(super) const QUIET: Duration = Duration::from_millis(250);

/// How long an entry waits for a pause at most before it is settled anyway: a mount busy for
/// long still makes what it fetched durable.
pub(super) const DEFER_AT_MOST: Duration = Duration::from_secs(10);

/// How long an artifact keeps its temp name after it settled, when readers are shown temp names
/// ([`Landing::keep_temp_names`]), twice over: a reader that followed one just before is given
/// time to open it. The reader's side is told to take the name back (the told callback) at the
/// settling, and again one `LINGER` before the temp name goes (a name shown by a reply under way
/// at the settling may have been kept after the first).
pub(super) const LINGER: Duration = Duration::from_secs(5);

/// Threads flushing and naming entries: enough to keep a disk busy with two flushes at a time,
/// while the fetch workers go on.
const SETTLERS: usize = 2;

/// The nice value of the settler threads (the default is 0; 19 is the lowest priority).
const SETTLERS_NICE: i32 = 10;

/// The nice value a settler thread takes: [`SETTLERS_NICE`], or the starting thread's own if
/// that is lower in priority already (a mount run under `nice`).
pub(super) fn settlers_nice() -> i32 {
    let own = rustix::process::getpriority_process(None).unwrap_or(0);
    own.max(SETTLERS_NICE)
}

/// Entries a settler writes out and then flushes to disk together: one flush of the disk for
/// many entries is what keeps up with a network that delivers thousands of small ones a second.
const BATCH: usize = 256;

/// Entries fetched and verified but not yet durable in the store, and the threads settling them.
/// Reads of entries go through here ([`Landing::open`], [`Landing::stat`]), so an entry is found
/// the same way whether it has settled or not.
pub struct Landing {
    store: Arc<Store>,
    waiting: Mutex<Waiting>,
    /// Each entry to settle and when it landed. `None` once [`Landing::finish`] has begun:
    /// entries are then settled at once.
    queue: Mutex<Option<Sender<(Entry, Instant)>>>,
    settlers: Mutex<Vec<JoinHandle<()>>>,
    /// Told of the artifacts each settling names ([`Landing::on_artifacts_named`]).
    named: OnceLock<ArtifactsNamed>,
    /// Set when readers are shown landing artifacts by their temp names
    /// ([`Landing::keep_temp_names`]).
    keeps_temp_names: OnceLock<()>,
    /// Artifacts settled while their temp names were shown, each with the moment of its next
    /// step and whether the reader's side was told a second time (then the step is dropping it,
    /// which removes the temp name).
    lingering: Mutex<Vec<(Arc<VerifiedEntry>, Instant, bool)>>,
}

/// What is told of the artifacts a settling named in the store.
type ArtifactsNamed = Box<dyn Fn(Vec<Entry>, ToldOn) + Send + Sync>;

/// The thread the told callback ([`Landing::on_artifacts_named`]) runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToldOn {
    /// A settler thread: it may wait, for the kernel among others.
    Settler,
    /// A thread that may be answering a reader's request (a settling made for it): it must not
    /// wait for anything, the kernel least of all (it may be waiting for that request).
    Reader,
}

#[derive(Default)]
struct Waiting {
    entries: HashMap<Entry, Arc<VerifiedEntry>>,
    /// The bytes of those held in memory.
    in_memory: u64,
    /// Those a thread is settling now: no other may settle them too.
    settling: HashSet<Entry>,
    /// When the last entry landed.
    last_landed: Option<Instant>,
}

impl Waiting {
    fn remove(&mut self, entry: &Entry) {
        self.settling.remove(entry);
        if let Some(verified) = self.entries.remove(entry) {
            if verified.in_memory() {
                self.in_memory -= verified.size();
            }
        }
    }
}

impl Landing {
    /// A landing for `store`, with its settler threads running.
    pub fn start(store: Arc<Store>) -> Arc<Landing> {
        Landing::start_with(store, SETTLERS)
    }

    /// A landing with `settlers` threads (none: entries wait for [`Landing::finish`], which
    /// tests use to see that it settles everything itself).
    pub(super) fn start_with(store: Arc<Store>, settlers: usize) -> Arc<Landing> {
        let (queue, settle) = crossbeam_channel::unbounded::<(Entry, Instant)>();
        let landing = Arc::new(Landing {
            store,
            waiting: Mutex::new(Waiting::default()),
            queue: Mutex::new(Some(queue)),
            settlers: Mutex::new(Vec::new()),
            named: OnceLock::new(),
            keeps_temp_names: OnceLock::new(),
            lingering: Mutex::new(Vec::new()),
        });
        let settlers = (0..settlers)
            .map(|i| {
                let landing = landing.clone();
                let settle = settle.clone();
                std::thread::Builder::new()
                    .name(format!("settle-{i}"))
                    .spawn(move || {
                        // One descriptor of the store's filesystem per settler, for its whole
                        // life: `syncfs` reports a write-back error once per descriptor, so a
                        // fresh one per batch, or one shared, could miss another's error.
                        let root = File::open(landing.store.root()).ok();
                        // Settling is behind every reader, so it yields the CPU to them: on a
                        // machine busy with a build (Dune, the fetches, the FUSE threads) a
                        // settler at the default priority took the CPU from Dune's restore. A
                        // settler that falls behind only makes `land` settle inline, past
                        // MAX_WAITING. (On Linux the nice value is the calling thread's own.)
                        let _ = rustix::process::setpriority_process(None, settlers_nice());
                        loop {
                            let (first, landed_at) = match settle.recv_timeout(LINGER) {
                                Ok(landed) => landed,
                                Err(RecvTimeoutError::Timeout) => {
                                    landing.let_temp_names_go(Some(Instant::now()));
                                    continue;
                                }
                                Err(RecvTimeoutError::Disconnected) => break,
                            };
                            landing.wait_to_settle(landed_at);
                            let mut batch = vec![first];
                            batch.extend(settle.try_iter().take(BATCH - 1).map(|(e, _)| e));
                            landing.settle(&batch, root.as_ref(), ToldOn::Settler);
                            landing.let_temp_names_go(Some(Instant::now()));
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
    pub fn land(&self, mut verified: VerifiedEntry) -> Result<(), StoreError> {
        let entry = verified.entry();
        let shown_by_temp_name =
            self.keeps_temp_names.get().is_some() && entry.kind == EntryKind::File;
        let over_budget = verified.in_memory()
            && lock(&self.waiting).in_memory + verified.size() > MAX_WAITING_IN_MEMORY;
        let spill = verified.in_memory() && (shown_by_temp_name || over_budget);
        // Written out before the locks are taken: readers go on meanwhile. A failure (a full
        // disk) leaves it in memory: one shown by its temp name is then shown as a file, and
        // one over the budget is settled here below, which reports the error.
        let spilled = spill && verified.spill().is_ok();
        let queue = lock(&self.queue);
        let mut waiting = lock(&self.waiting);
        let room = waiting.entries.len() < MAX_WAITING && (!over_budget || spilled);
        match queue.as_ref() {
            // A second copy of an entry already landing (fetched twice) adds nothing.
            _ if waiting.entries.contains_key(&entry) => Ok(()),
            Some(queue) if room => {
                if verified.in_memory() {
                    waiting.in_memory += verified.size();
                }
                waiting.entries.insert(entry, Arc::new(verified));
                let now = Instant::now();
                waiting.last_landed = Some(now);
                // The settlers stop only after the queue is dropped: a send cannot fail.
                let _ = queue.send((entry, now));
                Ok(())
            }
            _ => {
                drop(waiting);
                drop(queue);
                report(&entry, verified.commit()).map(|_| ())
            }
        }
    }

    /// Returns once a settler holding an entry that landed at `landed_at` should settle it (and
    /// those queued behind it): see [`settles_now`].
    fn wait_to_settle(&self, landed_at: Instant) {
        loop {
            let (last_landed, waiting) = {
                let waiting = lock(&self.waiting);
                (waiting.last_landed, waiting.entries.len())
            };
            let finishing = lock(&self.queue).is_none();
            if settles_now(Instant::now(), landed_at, last_landed, waiting, finishing) {
                return;
            }
            std::thread::sleep(QUIET / 5);
        }
    }

    /// Opens `entry`'s bytes for reading, landing or settled.
    pub fn open(&self, entry: &Entry) -> io::Result<File> {
        match self.landing(entry) {
            Some(verified) => verified.open(),
            None => File::open(self.store.path_of(entry)),
        }
    }

    /// `size` bytes of `entry` from `offset` (fewer at its end), landing or settled. One landing
    /// in memory is read from there: opening it instead makes a nameless file of its bytes,
    /// which a reader that only wants them (the kernel's READ, pages handed to it) has no use
    /// for.
    pub fn read_at(&self, entry: &Entry, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        match self.landing(entry) {
            Some(verified) => match verified.held() {
                Some(bytes) => Ok(window(bytes, offset, size).to_vec()),
                None => read_file_at(&verified.open()?, offset, size),
            },
            None => read_file_at(&File::open(self.store.path_of(entry))?, offset, size),
        }
    }

    /// All of `entry`'s bytes, landing or settled, and what its file looks like; an error if it
    /// has more than `at_most` bytes. For small entries read whole (a rule's metadata, several
    /// times as the kernel learns it): one landing in memory is copied from there, without the
    /// nameless file [`Landing::open`] would make of it.
    pub fn read_whole(&self, entry: &Entry, at_most: u64) -> io::Result<(Vec<u8>, EntryStat)> {
        match self.landing(entry) {
            Some(verified) => match verified.held() {
                Some(bytes) => {
                    let stat = verified.stat();
                    refuse_past(stat.size, at_most)?;
                    Ok((bytes.to_vec(), stat))
                }
                None => read_whole_file(&verified.open()?, at_most),
            },
            None => read_whole_file(&File::open(self.store.path_of(entry))?, at_most),
        }
    }

    /// Asks the kernel to start reading `entry`'s file into the page cache, without waiting for
    /// it: a read of it follows soon. Nothing if it is not held.
    pub fn will_need(&self, entry: &Entry) {
        if let Ok(file) = self.open(entry) {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        }
    }

    /// Whether `entry` is held and the start of its file is not in the page cache: a read of it
    /// would wait for the disk. One landing is in memory, or was written lately.
    pub fn on_disk_only(&self, entry: &Entry) -> bool {
        use rustix::io::{preadv2, ReadWriteFlags};
        if lock(&self.waiting).entries.contains_key(entry) {
            return false;
        }
        let Ok(file) = File::open(self.store.path_of(entry)) else {
            return false;
        };
        let mut byte = [0u8; 1];
        let bufs = &mut [std::io::IoSliceMut::new(&mut byte)];
        preadv2(&file, bufs, 0, ReadWriteFlags::NOWAIT) == Err(rustix::io::Errno::AGAIN)
    }

    /// What `entry`'s file looks like, landing or settled.
    pub fn stat(&self, entry: &Entry) -> io::Result<EntryStat> {
        match self.landing(entry) {
            Some(verified) => Ok(verified.stat()),
            None => fs::metadata(self.store.path_of(entry)).map(|meta| EntryStat {
                size: meta.len(),
                mode: meta.mode(),
                nlink: meta.nlink(),
            }),
        }
    }

    /// Whether `entry` is held locally, landing or settled.
    pub fn holds(&self, entry: &Entry) -> bool {
        // Waiting, it is held whether or not it has its name yet (it leaves the map once named):
        // no `stat` is needed to know it.
        lock(&self.waiting).entries.contains_key(entry) || self.store.path_of(entry).exists()
    }

    /// How many entries are waiting to settle (for the mount's status).
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).entries.len()
    }

    /// Has `told` called with the artifacts each settling names in the store from now on, on
    /// the settling thread (which says whether it may wait), and, with temp names kept, again
    /// before their temp names go ([`Landing::keep_temp_names`]), on a settler thread.
    pub fn on_artifacts_named(&self, told: impl Fn(Vec<Entry>, ToldOn) + Send + Sync + 'static) {
        let _ = self.named.set(Box::new(told));
    }

    /// Settles `entry` now if it is landing: before something else is stored under its name,
    /// so that what readers were given stays what the store keeps (first writer wins).
    pub fn settle_now(&self, entry: &Entry) {
        // A settler may have it in hand: then wait for it to finish.
        while lock(&self.waiting).entries.contains_key(entry) {
            if !self.settle(&[*entry], None, ToldOn::Reader) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
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
        let left: Vec<Entry> = lock(&self.waiting).entries.keys().copied().collect();
        let root = File::open(self.store.root()).ok();
        for batch in left.chunks(BATCH) {
            self.settle(batch, root.as_ref(), ToldOn::Settler);
        }
        self.let_temp_names_go(None);
    }

    /// Shows readers each artifact still landing by the name of its temp file
    /// ([`Landing::temp_name`]), which is written as it lands (none is held in memory). When
    /// it settles, its name in the store is a second name of that file, and the temp name stays
    /// a while more (twice 5 s: readers are told again, then it goes), for a reader that
    /// followed it just before to open it. Call before anything lands.
    pub fn keep_temp_names(&self) {
        let _ = self.keeps_temp_names.set(());
    }

    /// The temp file holding artifact `entry`'s bytes while it lands, if readers are shown
    /// temp names ([`Landing::keep_temp_names`]) and it is in one.
    pub fn temp_name(&self, entry: &Entry) -> Option<PathBuf> {
        self.keeps_temp_names.get()?;
        let verified = lock(&self.waiting).entries.get(entry).cloned()?;
        verified.temp_name().map(Path::to_path_buf)
    }

    /// Takes the next step for each temp name kept past its moment by `now`: the reader's side
    /// told again (the name then stays one more [`LINGER`]), or, once told, the name removed;
    /// with `None` (the landing is finishing, the readers are gone), all of them removed, untold.
    pub(super) fn let_temp_names_go(&self, now: Option<Instant>) {
        let (telling, going) = {
            let mut lingering = lock(&self.lingering);
            let mut telling = HashSet::new();
            let mut going = Vec::new();
            lingering.retain_mut(|(verified, until, told)| match now {
                Some(now) if *until > now => true,
                Some(now) if !*told => {
                    telling.insert(verified.entry());
                    // Not to go before the telling below has returned (then LINGER more).
                    (*until, *told) = (now + DEFER_AT_MOST + LINGER, true);
                    true
                }
                _ => {
                    going.push(verified.clone());
                    false
                }
            });
            (telling, going)
        };
        if let (Some(told), false) = (self.named.get(), telling.is_empty()) {
            told(telling.iter().copied().collect(), ToldOn::Settler);
            let until = Instant::now() + LINGER;
            for (verified, at, _) in lock(&self.lingering).iter_mut() {
                if telling.contains(&verified.entry()) {
                    *at = until;
                }
            }
        }
        drop(going);
    }

    /// The landing copy of `entry`, unless there is none or, for a rule's metadata, the name is
    /// taken already (by a value stored meanwhile, or this one as it settles): the name then
    /// stands. An artifact's name can only hold the same bytes (its key is their hash, and both
    /// were verified), so it is not looked for: readers ask for artifacts many times each, and
    /// the `stat` was most of the mount's system calls in a restore.
    fn landing(&self, entry: &Entry) -> Option<Arc<VerifiedEntry>> {
        let verified = lock(&self.waiting).entries.get(entry).cloned()?;
        let name_taken = || self.store.path_of(entry).exists();
        (entry.kind == EntryKind::File || !name_taken()).then_some(verified)
    }

    /// Writes out, flushes and names `entries`, then forgets them: their names now find the
    /// same bytes. They stay in the waiting map while they settle, so readers find them
    /// throughout. Many are flushed with one `syncfs` of `root` (a descriptor of the store's
    /// filesystem); if there is none, or it fails, each is flushed alone. Entries another
    /// thread is settling are left to it; false if there were any.
    fn settle(&self, entries: &[Entry], root: Option<&File>, on: ToldOn) -> bool {
        let mut all_mine = true;
        let landed: Vec<(Entry, Arc<VerifiedEntry>)> = {
            let mut waiting = lock(&self.waiting);
            let mut landed = Vec::new();
            for entry in entries {
                let Some(verified) = waiting.entries.get(entry).cloned() else {
                    continue;
                };
                if waiting.settling.insert(*entry) {
                    landed.push((*entry, verified));
                } else {
                    all_mine = false;
                }
            }
            landed
        };
        let mut staged = Vec::new();
        let mut named = Vec::new();
        let mut name = |entry: &Entry, outcome| {
            let held = matches!(
                report(entry, outcome),
                Ok(InstallOutcome::Stored | InstallOutcome::AlreadyPresent)
            );
            if held && entry.kind == EntryKind::File {
                named.push(*entry);
            }
        };
        for (entry, verified) in &landed {
            match verified.stage() {
                Ok(Stage::Staged(s)) => staged.push((entry, s)),
                Ok(Stage::Taken(outcome)) => name(entry, Ok(outcome)),
                Err(e) => name(entry, Err(e)),
            }
        }
        let flushed_together = staged.len() > 1 && root.is_some_and(sync_filesystem);
        let keeps_temp_names = self.keeps_temp_names.get().is_some();
        for (entry, s) in staged {
            let synced = if flushed_together { Ok(()) } else { s.sync() };
            let named = match keeps_temp_names && entry.kind == EntryKind::File {
                true => synced.and_then(|()| s.link_keeping_temp()),
                false => synced.and_then(|()| s.link()),
            };
            name(entry, named);
        }
        let mut waiting = lock(&self.waiting);
        for (entry, _) in &landed {
            waiting.remove(entry);
        }
        drop(waiting);
        if let (Some(told), false) = (self.named.get(), named.is_empty()) {
            told(named, on);
        }
        if keeps_temp_names {
            // Counted from when the telling returned (a settler's waits for the kernel).
            let until = Instant::now() + LINGER;
            let shown = landed
                .iter()
                .filter(|(e, v)| e.kind == EntryKind::File && v.temp_name().is_some());
            let lingering = shown.map(|(_, verified)| (verified.clone(), until, false));
            lock(&self.lingering).extend(lingering);
        }
        all_mine
    }
}

/// Whether an entry that landed at `landed_at` is settled `now`, the last entry having landed at
/// `last_landed`, with `waiting` entries waiting: once entries stopped landing for [`QUIET`],
/// once it has waited [`DEFER_AT_MOST`], once the landing is [`CROWDED`], and when it is
/// finishing.
pub(super) fn settles_now(
    now: Instant,
    landed_at: Instant,
    last_landed: Option<Instant>,
    waiting: usize,
    finishing: bool,
) -> bool {
    let quiet = last_landed.is_none_or(|last| now.saturating_duration_since(last) >= QUIET);
    quiet
        || now.saturating_duration_since(landed_at) >= DEFER_AT_MOST
        || waiting >= CROWDED
        || finishing
}

/// Flushes the filesystem of `root` to disk; false (logged) if that failed.
#[cfg(target_os = "linux")]
fn sync_filesystem(root: &File) -> bool {
    match rustix::fs::syncfs(root) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot flush the store's filesystem ({e}); flushing entry by entry");
            false
        }
    }
}

/// Elsewhere there is no `syncfs`: entries are flushed one by one.
#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_root: &File) -> bool {
    false
}

/// Logs what is worth knowing about settling `entry`: a failure (the local copy is lost, the
/// box still holds the entry) or a different metadata value installed meanwhile (which stands).
fn report(
    entry: &Entry,
    outcome: Result<InstallOutcome, StoreError>,
) -> Result<InstallOutcome, StoreError> {
    match &outcome {
        Err(e) => log::warn!("cannot keep {entry} in the store: {e}; its box still holds it"),
        Ok(InstallOutcome::Collision { .. }) => {
            log::warn!("{entry}: another value was stored meanwhile; it stands")
        }
        Ok(_) => {}
    }
    outcome
}

/// All of `file`'s bytes, read at position 0 (its offset is left alone), and what it looks
/// like; an error if it has more than `at_most` bytes.
pub fn read_whole_file(file: &File, at_most: u64) -> io::Result<(Vec<u8>, EntryStat)> {
    let meta = file.metadata()?;
    refuse_past(meta.len(), at_most)?;
    let mut bytes = vec![0u8; meta.len() as usize];
    file.read_exact_at(&mut bytes, 0)?;
    let stat = EntryStat {
        size: meta.len(),
        mode: meta.mode(),
        nlink: meta.nlink(),
    };
    Ok((bytes, stat))
}

/// An error if `size` is past `at_most`.
fn refuse_past(size: u64, at_most: u64) -> io::Result<()> {
    if size > at_most {
        return Err(io::Error::other(format!(
            "{size} bytes, more than the {at_most} expected"
        )));
    }
    Ok(())
}

/// `size` bytes of `file` from `offset`, fewer at its end.
pub fn read_file_at(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// `size` bytes of `bytes` from `offset`, fewer at the end.
pub fn window(bytes: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    let end = start.saturating_add(size as usize).min(bytes.len());
    &bytes[start..end]
}
