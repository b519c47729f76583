//! The store itself: [`Store`], a Dune `db/` directory, with how it is opened (and owned), looked
//! up, listed and written to, and [`LocalEntry`], an installed entry as seen on disk.
//!
//! Apart from `mod.rs` because the store's other parts work on a [`Store`]: landing holds one,
//! trim and fsck add methods to it. Kept in the parent, each of them would import its parent. Here
//! it imports only what it is made of (`error`, `outcome`, `pending`), and `landing`, `trim` and
//! `fsck` import it. Re-exported as `store::Store`, `store::LocalEntry` and `store::TEMP_DIR`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::error::StoreError;
use super::outcome::InstallOutcome;
use super::pending::{EntryStat, EraGuess, PendingEntry};
use crate::dune::key::{mode_is_executable, Awaited, ContentHasher, Era, Key, Shard};
use crate::dune::layout::{Entry, EntryKind};

/// Our scratch directory inside `db/`, for entries being written. It is on the same filesystem
/// as the entries (so the rename into place is atomic) and its name is not one Dune uses.
pub const TEMP_DIR: &str = ".dune-cachefs-tmp";

/// A temp file untouched for this long belongs to a writer that died; [`Store::open`] removes it.
/// A live writer touches its file on every chunk, so even a slow transfer is never swept.
pub(super) const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// An exclusive owner sweeps temp files of any age: no other writer can be alive.
const ANY_AGE: Duration = Duration::ZERO;

/// An installed entry as seen on disk: what `stat` and the protocol need to describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEntry {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is executable (artifacts only; metadata never is).
    pub executable: bool,
}

/// A Dune `db/` directory used as a store. Cheap to share: all methods take `&self` and the
/// filesystem is the only state, so the mount's threads, uploaders and a box can use one store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    temp_dir: PathBuf,
    next_temp: AtomicU64,
    /// The era new artifacts are hashed in first.
    pub(super) era_guess: Arc<EraGuess>,
    /// For an exclusive owner: the temp directory, locked (`flock`) while this descriptor is
    /// open, so as long as the store lives.
    _owner: Option<fs::File>,
}

impl Store {
    /// Opens the store at `root`, the `db/` directory itself, and sweeps temp files left by
    /// writers that died. It creates nothing: directories appear as the first entry needs them,
    /// so opening a user's Dune cache just to check or list it leaves no trace in it.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let temp_dir = root.join(TEMP_DIR);
        let meta = fs::metadata(&root).map_err(StoreError::io("open", &root))?;
        if !meta.is_dir() {
            return Err(StoreError::io("open", &root)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        let store = Store {
            root,
            temp_dir,
            next_temp: AtomicU64::new(0),
            era_guess: Arc::default(),
            _owner: None,
        };
        store.sweep_temp_files(STALE_TEMP_AGE)?;
        Ok(store)
    }

    /// Opens the store at `root` for the one process that writes to it — a mount or a box — and
    /// sweeps *every* temp file, whatever its age: what is there was left by a writer that died
    /// (a `kill -9` in the middle of a transfer), and leaving it for an hour would let it fill a
    /// disk across crashes. That is only correct if no other writer is alive, so it is made true:
    /// the store's temp directory (created if missing) is locked (`flock`) for as long as the
    /// returned store lives, and a second owner is refused with [`StoreError::InUse`]. Readers
    /// and occasional writers (`fsck`, `push`, `trim`) use [`Store::open`] and are not refused.
    pub fn open_exclusive(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let mut store = Store::open(root)?;
        let dir = &store.temp_dir;
        fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
        let handle = fs::File::open(dir).map_err(StoreError::io("open", dir))?;
        match rustix::fs::flock(&handle, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(StoreError::InUse {
                    path: store.root.clone(),
                })
            }
            Err(errno) => return Err(StoreError::io("lock", dir)(io::Error::from(errno))),
        }
        store._owner = Some(handle);
        store.sweep_temp_files(ANY_AGE)?;
        Ok(store)
    }

    /// The `db/` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `entry` lives (whether or not it is there). Built at its final size rather than with
    /// `join`, which copies the root and then grows: a box builds one per request.
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        let relative = entry.relative_path();
        let mut path =
            PathBuf::with_capacity(self.root.as_os_str().len() + 1 + relative.as_os_str().len());
        path.push(&self.root);
        path.push(relative);
        path
    }

    /// The entry if it is installed. Any error but "not found" is reported, not hidden as a miss,
    /// so a broken disk does not silently turn every lookup into a network fetch.
    pub fn lookup(&self, entry: &Entry) -> Result<Option<LocalEntry>, StoreError> {
        let path = self.path_of(entry);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(LocalEntry {
                size: meta.len(),
                executable: entry.kind == EntryKind::File && mode_is_executable(meta.mode()),
                path,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("stat", &path)(e)),
        }
    }

    /// Starts writing a new entry: write its bytes to the returned [`PendingEntry`], then
    /// [`PendingEntry::commit`] it. Dropping it without committing leaves nothing behind.
    pub fn begin(&self, entry: Entry) -> PendingEntry {
        self.begin_with(entry, ContentHasher::new)
    }

    /// [`Store::begin`] for an entry nobody is waiting for yet (fetched ahead of its reader):
    /// an MD5-era artifact is hashed beside others, cheaper but not at once, until `awaited`
    /// says someone waits ([`ContentHasher::shared`]).
    pub fn begin_ahead(&self, entry: Entry, awaited: Awaited) -> PendingEntry {
        self.begin_with(entry, |era| ContentHasher::shared(era, awaited))
    }

    fn begin_with(
        &self,
        entry: Entry,
        hasher: impl FnOnce(Option<Era>) -> ContentHasher,
    ) -> PendingEntry {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{}.{}", std::process::id(), n, entry.key);
        PendingEntry::create(
            entry,
            self.path_of(&entry),
            self.temp_dir.join(name),
            self.era_guess.clone(),
            hasher,
        )
    }

    /// Installs an entry from a byte slice: the convenient form for small values and tests.
    pub fn install_bytes(&self, entry: Entry, bytes: &[u8]) -> Result<InstallOutcome, StoreError> {
        let mut pending = self.begin(entry);
        pending.write_chunk(bytes)?;
        pending.commit()
    }

    /// Installs an entry from a copy of an existing file (Dune's scratch file, renamed or linked
    /// into the cache through the mount). Copying rather than linking means no descriptor still
    /// open on the source can ever write into the installed entry.
    pub fn install_file(&self, entry: Entry, source: &Path) -> Result<InstallOutcome, StoreError> {
        let mut file = fs::File::open(source).map_err(StoreError::io("open", source))?;
        let mut pending = self.begin(entry);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => pending.write_chunk(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("read", source)(e)),
            }
        }
        pending.commit()
    }

    /// The keys present in one shard directory of one kind, sorted. Names that are not keys
    /// (Dune's or anyone's stray files) are skipped: they are not entries.
    pub fn list_shard(&self, kind: EntryKind, shard: Shard) -> Result<Vec<Key>, StoreError> {
        let mut keys = self
            .shard_items(kind, shard)?
            .map(|item| item.map(|(key, _)| key))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_unstable();
        Ok(keys)
    }

    /// The keys present in one shard directory of one kind, each with its file's size, mode and
    /// links, in directory order. Each is stat'ed relative to the directory read, so a listing
    /// walks no path per entry.
    pub fn list_shard_stated(
        &self,
        kind: EntryKind,
        shard: Shard,
    ) -> Result<Vec<(Key, EntryStat)>, StoreError> {
        let dir = self.shard_dir(kind, shard);
        self.shard_items(kind, shard)?
            .map(|item| {
                let (key, item) = item?;
                let meta = item.metadata().map_err(StoreError::io("stat", &dir))?;
                let stat = EntryStat {
                    size: meta.len(),
                    mode: meta.mode(),
                    nlink: meta.nlink(),
                };
                Ok((key, stat))
            })
            .collect()
    }

    /// The shards of `kind` holding at least one entry: what `ls` of a kind directory shows, so a
    /// copy of the cache has exactly the directories the original has. Each shard is read only
    /// up to its first key, a few names at a time: listing a kind costs 256 small reads, not a
    /// walk of every entry (a plain read of a directory asks for 32 KiB of names at once, which
    /// is a whole shard of a large cache).
    pub fn non_empty_shards(&self, kind: EntryKind) -> Result<Vec<Shard>, StoreError> {
        let mut shards = Vec::new();
        for shard in Shard::all() {
            if self.shard_holds_a_key(kind, shard)? {
                shards.push(shard);
            }
        }
        Ok(shards)
    }

    fn shard_dir(&self, kind: EntryKind, shard: Shard) -> PathBuf {
        self.root.join(kind.dir()).join(shard.to_string())
    }

    /// Whether one shard directory holds a key (reading it 2 KiB of names at a time).
    fn shard_holds_a_key(&self, kind: EntryKind, shard: Shard) -> Result<bool, StoreError> {
        use rustix::fs::{Mode, OFlags, RawDir};
        let dir = self.shard_dir(kind, shard);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(StoreError::io("list", &dir)(e.into())),
        };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let mut names = RawDir::new(fd, &mut buf);
        while let Some(item) = names.next() {
            let item = item.map_err(|e| StoreError::io("list", &dir)(e.into()))?;
            let key = item
                .file_name()
                .to_str()
                .ok()
                .and_then(|name| name.parse::<Key>().ok());
            if key.is_some_and(|key| key.shard() == shard) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The keys in one shard directory, with their directory items, in directory order (none
    /// if it does not exist).
    fn shard_items(
        &self,
        kind: EntryKind,
        shard: Shard,
    ) -> Result<impl Iterator<Item = Result<(Key, fs::DirEntry), StoreError>>, StoreError> {
        let dir = self.shard_dir(kind, shard);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("list", &dir)(e)),
        };
        Ok(entries.into_iter().flatten().filter_map(move |item| {
            let item = match item {
                Ok(item) => item,
                Err(e) => return Some(Err(StoreError::io("list", &dir)(e))),
            };
            let key = item.file_name().to_str()?.parse::<Key>().ok()?;
            (key.shard() == shard).then_some(Ok((key, item)))
        }))
    }

    /// Every installed entry of every kind, artifacts first (the order uploads need).
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut all = Vec::new();
        for kind in EntryKind::ALL {
            for shard in Shard::all() {
                all.extend(
                    self.list_shard(kind, shard)?
                        .into_iter()
                        .map(|key| Entry { kind, key }),
                );
            }
        }
        Ok(all)
    }

    /// The total size in bytes of all entries (what `trim` bounds).
    pub fn total_size(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in self.entries()? {
            if let Some(local) = self.lookup(&entry)? {
                total += local.size;
            }
        }
        Ok(total)
    }

    /// Removes the temp files untouched for at least `min_age`.
    fn sweep_temp_files(&self, min_age: Duration) -> Result<(), StoreError> {
        let dir = &self.temp_dir;
        let now = SystemTime::now();
        let items = match fs::read_dir(dir) {
            Ok(items) => items,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", dir)(e)),
        };
        for item in items {
            let item = item.map_err(StoreError::io("list", dir))?;
            let Ok(meta) = item.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= min_age {
                let path = item.path();
                match fs::remove_file(&path) {
                    Ok(()) => log::info!("removed a dead writer's temp file {}", path.display()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", &path)(e)),
                }
            }
        }
        Ok(())
    }
}
