//! An entry being written: bytes stream into a temp file while they are hashed (artifacts) or
//! parsed (metadata), so checking costs no second pass over the data.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::StoreError;
use super::outcome::InstallOutcome;
use crate::dune::key::{ContentDigests, ContentHasher, Era, KeyMatch};
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::MetadataReader;

/// File modes as Dune writes them: artifacts read-only (keeping the executable bit), metadata
/// an ordinary 0644 file. Matching Dune keeps a store indistinguishable from Dune's own cache.
const MODE_ARTIFACT: u32 = 0o444;
const MODE_ARTIFACT_EXE: u32 = 0o555;
const MODE_METADATA: u32 = 0o644;

/// The era the store's last verified artifact was keyed in (none yet: both are hashed).
#[derive(Debug, Default)]
pub(super) struct EraGuess(AtomicU8);

impl EraGuess {
    pub(super) fn get(&self) -> Option<Era> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Era::Blake3),
            2 => Some(Era::Md5),
            _ => None,
        }
    }

    fn set(&self, era: Era) {
        let code = match era {
            Era::Blake3 => 1,
            Era::Md5 => 2,
        };
        self.0.store(code, Ordering::Relaxed);
    }
}

/// How an entry's bytes are checked as they arrive.
enum Check {
    /// Hashed in the guessed era (`None`: both), then checked against the key.
    Artifact {
        hasher: ContentHasher,
        era: Option<Era>,
        guess: Arc<EraGuess>,
    },
    Metadata {
        /// Boxed: the reader's parse state is large, and most entries are artifacts.
        reader: Box<MetadataReader>,
        digest: blake3::Hasher,
    },
}

/// Entries up to this size are held in memory until committed, and spill to a temp file past
/// it. Creating a file is the costliest step of a small entry's install (a fresh inode), and a
/// fetched entry's reader need not wait for it (see [`VerifiedEntry::open`]); large entries go to
/// disk as they arrive, so memory stays bounded whatever a sender offers.
const SPILL_AT: usize = 128 * 1024;

/// A new entry on its way into a [`Store`](super::Store). Write its bytes with
/// [`PendingEntry::write_chunk`] (or as an [`io::Write`]), then [`PendingEntry::commit`]. If it
/// is dropped uncommitted, or the commit refuses it, its temp file (if it has one) is removed: a
/// failed install leaves nothing behind.
pub struct PendingEntry {
    entry: Entry,
    /// Where the entry goes in the store.
    dest: PathBuf,
    /// Where its bytes go on disk before they get their name.
    temp_path: PathBuf,
    bytes: Bytes,
    check: Check,
    size: u64,
    /// The executable bit the sender stated, if it did: a key that says otherwise is refused.
    claimed_executable: Option<bool>,
}

/// Where a pending entry's bytes are while they arrive.
enum Bytes {
    Memory(Vec<u8>),
    Temp { _temp: TempFile, file: File },
}

/// Where a verified entry's bytes are until they get their name. No descriptor is kept: a mount
/// may hold a thousand verified entries at once.
enum Held {
    Memory(Vec<u8>),
    /// In the temp file, which this owns (and removes when dropped).
    Temp {
        _temp: TempFile,
    },
}

/// What a verified or installed entry's file looks like, for attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryStat {
    /// Its size in bytes.
    pub size: u64,
    /// Its mode bits (the executable bit is the key's).
    pub mode: u32,
    /// Its link count (1 until it is named).
    pub nlink: u64,
}

/// Owns the temp file's name: removing it on drop is what makes every failed or abandoned
/// install leave nothing behind, whichever way the install ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        remove_temp(&self.0);
    }
}

/// Removes the temp file at `path`, if it is still there (a commit may have renamed it).
fn remove_temp(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove temp file {}: {e}", path.display());
        }
    }
}

/// Creates the temp file at `path` (whose directory, the store's temp dir, may not exist yet).
fn create_temp(path: &Path) -> Result<(TempFile, File), StoreError> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let temp_dir = path.parent().expect("temp files live in the temp dir");
            fs::create_dir_all(temp_dir).map_err(StoreError::io("create", temp_dir))?;
            open()
        }
        opened => opened,
    }
    .map_err(StoreError::io("create", path))?;
    Ok((TempFile(path.to_path_buf()), file))
}

impl PendingEntry {
    pub(super) fn create(
        entry: Entry,
        dest: PathBuf,
        temp_path: PathBuf,
        guess: Arc<EraGuess>,
        hasher: impl FnOnce(Option<Era>) -> ContentHasher,
    ) -> PendingEntry {
        let check = match entry.kind {
            EntryKind::File => {
                let era = guess.get();
                Check::Artifact {
                    hasher: hasher(era),
                    era,
                    guess,
                }
            }
            EntryKind::Meta(_) => Check::Metadata {
                reader: Box::new(MetadataReader::new()),
                digest: blake3::Hasher::new(),
            },
        };
        PendingEntry {
            entry,
            dest,
            temp_path,
            bytes: Bytes::Memory(Vec::new()),
            check,
            size: 0,
            claimed_executable: None,
        }
    }

    /// The entry being written.
    pub fn entry(&self) -> Entry {
        self.entry
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes [`PendingEntry::commit`] refuse an artifact whose key's executable bit is not
    /// `executable`, with [`StoreError::ExecutableMismatch`]: for senders that state the bit (a
    /// box's `X-Executable`), whose contradiction with the key is an error to report rather than
    /// something the key silently corrects. Metadata has no executable bit; it ignores this.
    pub fn expect_executable(&mut self, executable: bool) {
        self.claimed_executable = Some(executable);
    }

    /// Appends the next chunk. Metadata that is already malformed is refused here, so a server
    /// can stop reading a bad body early.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        match &mut self.check {
            Check::Artifact { hasher, .. } => hasher.update(chunk),
            Check::Metadata { reader, digest } => {
                reader
                    .feed(chunk)
                    .map_err(|source| StoreError::BadMetadata {
                        entry: self.entry,
                        source,
                    })?;
                digest.update(chunk);
            }
        }
        match &mut self.bytes {
            Bytes::Memory(held) if held.len() + chunk.len() <= SPILL_AT => {
                held.extend_from_slice(chunk)
            }
            Bytes::Memory(held) => {
                let (temp, mut file) = create_temp(&self.temp_path)?;
                file.write_all(held)
                    .and_then(|()| file.write_all(chunk))
                    .map_err(StoreError::io("write", &self.temp_path))?;
                self.bytes = Bytes::Temp { _temp: temp, file };
            }
            Bytes::Temp { file, .. } => file
                .write_all(chunk)
                .map_err(StoreError::io("write", &self.temp_path))?,
        }
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Checks the bytes and, if they are sound, makes the entry visible under its name: a
    /// [`PendingEntry::verify`] then a [`VerifiedEntry::commit`].
    pub fn commit(self) -> Result<InstallOutcome, StoreError> {
        self.verify()?.commit()
    }

    /// Checks the bytes, and fixes their final mode if they are sound. The entry has no name in
    /// the store yet: whoever holds the result decides when it gets one, so a reader that is
    /// waiting for the bytes need not also wait for them to reach the disk.
    pub fn verify(self) -> Result<VerifiedEntry, StoreError> {
        let matched = match self.check {
            Check::Artifact { hasher, era, guess } => {
                let matched = hasher.finish().matching(&self.entry.key);
                let matched = match (matched, era) {
                    // The guess was wrong (or the bytes are): the other era, from the held bytes.
                    (None, Some(era)) => {
                        rehash(&self.bytes, &self.temp_path, era.other())?.matching(&self.entry.key)
                    }
                    (matched, _) => matched,
                };
                if let Some(m) = matched {
                    guess.set(m.era);
                }
                Checked::Artifact(matched)
            }
            Check::Metadata { reader, digest } => Checked::Metadata(
                reader
                    .finish()
                    .map(|_| *digest.finalize().as_bytes())
                    .map_err(|source| StoreError::BadMetadata {
                        entry: self.entry,
                        source,
                    })?,
            ),
        };
        let (mode, offered_metadata) =
            verdict(self.entry, self.size, matched, self.claimed_executable)?;
        let bytes = match self.bytes {
            Bytes::Memory(mut held) => {
                held.shrink_to_fit();
                Held::Memory(held)
            }
            Bytes::Temp { _temp, file } => {
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(StoreError::io("chmod", &self.temp_path))?;
                Held::Temp { _temp }
            }
        };
        Ok(VerifiedEntry {
            entry: self.entry,
            dest: self.dest,
            temp_path: self.temp_path,
            size: self.size,
            mode,
            bytes,
            readable: OnceLock::new(),
            offered_metadata,
        })
    }
}

/// An entry whose bytes are checked and complete, not yet under its name. Its bytes can be
/// read ([`VerifiedEntry::open`]) before [`VerifiedEntry::commit`] makes them durable and names
/// them; dropped, it removes its temp file.
pub struct VerifiedEntry {
    entry: Entry,
    dest: PathBuf,
    temp_path: PathBuf,
    size: u64,
    mode: u32,
    bytes: Held,
    /// For bytes held in memory: a nameless file holding them, made on the first
    /// [`VerifiedEntry::open`] (a reader needs a file; an install that commits at once does not).
    readable: OnceLock<File>,
    /// The digest of a metadata value, needed if its name turns out to be taken.
    offered_metadata: Option<[u8; 32]>,
}

impl VerifiedEntry {
    /// The entry.
    pub fn entry(&self) -> Entry {
        self.entry
    }

    /// The entry's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Opens the verified bytes for reading. Once the commit has named them they are opened by
    /// that name, so they stay readable until `self` is dropped unless the entry is removed from
    /// the store meanwhile (a trim: the reader then finds it missing, as any reader of the store).
    pub fn open(&self) -> io::Result<File> {
        match &self.bytes {
            Held::Temp { .. } => self.open_temp(),
            Held::Memory(held) => {
                let file = match self.readable.get() {
                    Some(file) => file,
                    None => {
                        let file = nameless_file(held, self.mode)?;
                        self.readable.get_or_init(|| file)
                    }
                };
                reopen(file)
            }
        }
    }

    /// The path of the temp file holding the verified bytes, if they are in one (not held in
    /// memory): a name readers may be shown until the entry settles, and for as long after as
    /// the entry is kept (see [`Staged::link_keeping_temp`]).
    pub fn temp_name(&self) -> Option<&Path> {
        match &self.bytes {
            Held::Temp { .. } => Some(&self.temp_path),
            Held::Memory(_) => None,
        }
    }

    /// The verified bytes, if they are held in memory (not spilled to a temp file).
    pub fn held(&self) -> Option<&[u8]> {
        match &self.bytes {
            Held::Memory(held) => Some(held),
            Held::Temp { .. } => None,
        }
    }

    /// The verified bytes.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        match &self.bytes {
            Held::Temp { .. } => {
                let mut bytes = Vec::with_capacity(self.size as usize);
                self.open_temp()?.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            Held::Memory(held) => Ok(held.clone()),
        }
    }

    /// Opens the temp file, or its entry's name once the commit has moved it there (a commit
    /// renames it where the filesystem can: see [`Staged::link`]).
    fn open_temp(&self) -> io::Result<File> {
        File::open(&self.temp_path).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => File::open(&self.dest),
            _ => Err(e),
        })
    }

    /// What the entry's file looks like (size and mode as it will have them).
    pub fn stat(&self) -> EntryStat {
        EntryStat {
            size: self.size,
            mode: self.mode,
            nlink: 1,
        }
    }

    /// Whether its bytes are held in memory (they count against a landing's memory budget).
    pub fn in_memory(&self) -> bool {
        matches!(self.bytes, Held::Memory(_))
    }

    /// Moves bytes held in memory out to the entry's temp file (not flushed: that is the
    /// commit's), freeing the memory; nothing if they are in the temp file already.
    pub fn spill(&mut self) -> Result<(), StoreError> {
        if let Held::Memory(held) = &self.bytes {
            let temp = self.write_temp(held)?;
            self.bytes = Held::Temp { _temp: temp };
        }
        Ok(())
    }

    /// Writes `held`, this entry's bytes, to its temp file with the entry's mode (not flushed).
    fn write_temp(&self, held: &[u8]) -> Result<TempFile, StoreError> {
        let (temp, mut file) = create_temp(&self.temp_path)?;
        file.write_all(held)
            .and_then(|()| file.set_permissions(Permissions::from_mode(self.mode)))
            .map_err(StoreError::io("write", &self.temp_path))?;
        Ok(temp)
    }

    /// Makes the entry visible under its name: [`VerifiedEntry::stage`], flush the file, then
    /// [`Staged::link`].
    ///
    /// The data is flushed to disk before it gets its name, so a power cut can lose a fresh entry
    /// but never leave a truncated one under a valid key. An offer for a name already taken is
    /// never linked (first writer wins), so it is answered without that flush: a `push` re-sends
    /// every metadata entry, and the flush costs far more than the look.
    pub fn commit(&self) -> Result<InstallOutcome, StoreError> {
        self.commit_with(|staged| staged.link())
    }

    /// A [`VerifiedEntry::commit`] whose last step, naming the staged and flushed entry, is
    /// `link`'s, which calls [`Staged::link`]: for an owner that counts what it holds around the
    /// moment an entry appears (a box).
    pub fn commit_with(
        &self,
        link: impl FnOnce(Staged<'_>) -> Result<InstallOutcome, StoreError>,
    ) -> Result<InstallOutcome, StoreError> {
        match self.stage()? {
            Stage::Taken(outcome) => Ok(outcome),
            Stage::Staged(staged) => {
                staged.sync()?;
                link(staged)
            }
        }
    }

    /// The first half of a commit, for committing many entries with one flush of the disk: the
    /// entry's bytes written out to its temp file (if they were held in memory), or the outcome
    /// already, if its name is taken. Its bytes must reach the disk before [`Staged::link`].
    pub fn stage(&self) -> Result<Stage<'_>, StoreError> {
        if fs::symlink_metadata(&self.dest).is_ok() {
            return compare_with_held(&self.dest, self.offered_metadata).map(Stage::Taken);
        }
        let written = match &self.bytes {
            Held::Temp { .. } => None,
            Held::Memory(held) => Some(self.write_temp(held)?),
        };
        Ok(Stage::Staged(Staged {
            verified: self,
            _written: written,
        }))
    }
}

/// Where a [`VerifiedEntry::stage`] left an entry.
pub enum Stage<'v> {
    /// Its name was taken already: what that means for it.
    Taken(InstallOutcome),
    /// Its bytes are in its temp file, to be flushed to disk and then linked.
    Staged(Staged<'v>),
}

/// An entry whose bytes are in its temp file: flush them to disk ([`Staged::sync`], or a
/// `syncfs` of the store's filesystem for many), then [`Staged::link`].
pub struct Staged<'v> {
    verified: &'v VerifiedEntry,
    /// The temp file written by the stage, for bytes that were held in memory (removed when
    /// this is dropped: once linked, the entry's name keeps the file).
    _written: Option<TempFile>,
}

impl Staged<'_> {
    /// Flushes the entry's temp file to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        let path = &self.verified.temp_path;
        File::open(path)
            .and_then(|file| file.sync_all())
            .map_err(StoreError::io("sync", path))
    }

    /// Names the entry: moves its temp file into place, never over an entry already there. Call
    /// only once its bytes are on disk.
    pub fn link(self) -> Result<InstallOutcome, StoreError> {
        self.name_by(name_without_replacing)
    }

    /// Names the entry as [`Staged::link`] does, but as a second name of its temp file, which
    /// keeps its own until the [`VerifiedEntry`] is dropped: for a landing whose temp names were
    /// shown to readers ([`VerifiedEntry::temp_name`]), which may still follow one for a moment.
    /// Until then the file has two names (its link count reads 2). Call only once its bytes are
    /// on disk.
    pub fn link_keeping_temp(self) -> Result<InstallOutcome, StoreError> {
        self.name_by(|temp, dest| fs::hard_link(temp, dest))
    }

    /// Gives the temp file the entry's name by `name(temp, dest)`, which fails with
    /// `AlreadyExists` if the name is taken: what holds it is then compared with this entry.
    fn name_by(
        self,
        name: impl FnOnce(&Path, &Path) -> io::Result<()>,
    ) -> Result<InstallOutcome, StoreError> {
        let verified = self.verified;
        let shard_dir = verified
            .dest
            .parent()
            .expect("entry paths have a shard directory");
        fs::create_dir_all(shard_dir).map_err(StoreError::io("create", shard_dir))?;
        match name(&verified.temp_path, &verified.dest) {
            Ok(()) => Ok(InstallOutcome::Stored),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                compare_with_held(&verified.dest, verified.offered_metadata)
            }
            Err(e) => Err(StoreError::io("name", &verified.dest)(e)),
        }
    }
}

/// Gives the file at `temp` the name `dest`, or fails with `AlreadyExists` if `dest` is taken.
/// A rename that refuses to replace (`RENAME_NOREPLACE`) where the filesystem has one, so the
/// file never has two names: the mount reports an entry's real link count, and a `stat` between a
/// hard link and the temp name's removal would read 2, then 1 (`tar` fails on "file changed as we
/// read it"). Elsewhere a hard link, and the temp name is removed at once (readers of a verified
/// entry then open its name), which leaves only a moment with two names.
fn name_without_replacing(temp: &Path, dest: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, temp, CWD, dest, RenameFlags::NOREPLACE) {
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
            renamed => return renamed.map_err(io::Error::from),
        }
    }
    fs::hard_link(temp, dest)?;
    remove_temp(temp);
    Ok(())
}

/// A new open of `file`, with an offset of its own (through /proc where there is one: else a
/// duplicate, sharing its offset, which the mount's readers do not mind: they read at positions).
fn reopen(file: &File) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).or_else(|_| file.try_clone())
    }
    #[cfg(not(target_os = "linux"))]
    file.try_clone()
}

/// A file holding `bytes` with `mode` that has no name on any disk, for readers of an entry
/// held in memory: on Linux a memfd, which costs no inode of the store's filesystem.
fn nameless_file(bytes: &[u8], mode: u32) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    let mut file = File::from(rustix::fs::memfd_create(
        c"dune-cachefs-entry",
        rustix::fs::MemfdFlags::CLOEXEC,
    )?);
    #[cfg(not(target_os = "linux"))]
    let mut file = tempfile::tempfile()?;
    file.write_all(bytes)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// The digests in `era` of the bytes held so far: the second pass, when the era guessed did
/// not reproduce the key.
fn rehash(bytes: &Bytes, temp_path: &Path, era: Era) -> Result<ContentDigests, StoreError> {
    match bytes {
        Bytes::Memory(held) => {
            let mut hasher = ContentHasher::new(Some(era));
            hasher.update(held);
            Ok(hasher.finish())
        }
        // Written without buffering: the file holds every byte written.
        Bytes::Temp { .. } => File::open(temp_path)
            .and_then(|file| ContentHasher::digest_reader(Some(era), file))
            .map_err(StoreError::io("read", temp_path)),
    }
}

/// What checking an entry's bytes found.
enum Checked {
    /// The era and executable bit that reproduce an artifact's key, if any does.
    Artifact(Option<KeyMatch>),
    /// A metadata value that parses, and its digest.
    Metadata([u8; 32]),
}

/// The final mode if the bytes are sound (and, for metadata, the digest of the offered value,
/// needed if the name turns out to be taken), or why they are not.
fn verdict(
    entry: Entry,
    size: u64,
    checked: Checked,
    claimed_executable: Option<bool>,
) -> Result<(u32, Option<[u8; 32]>), StoreError> {
    match checked {
        Checked::Artifact(matched) => {
            let Some(m) = matched else {
                return Err(StoreError::KeyMismatch { entry, size });
            };
            if let Some(claimed) = claimed_executable.filter(|&c| c != m.executable) {
                return Err(StoreError::ExecutableMismatch { entry, claimed });
            }
            let mode = if m.executable {
                MODE_ARTIFACT_EXE
            } else {
                MODE_ARTIFACT
            };
            Ok((mode, None))
        }
        Checked::Metadata(digest) => Ok((MODE_METADATA, Some(digest))),
    }
}

/// The name is taken. An artifact's key fixes its bytes, so it is the same entry; a rule key
/// does not, so metadata is compared by digest and a different value is a collision.
fn compare_with_held(
    dest: &Path,
    offered_metadata: Option<[u8; 32]>,
) -> Result<InstallOutcome, StoreError> {
    let Some(offered) = offered_metadata else {
        return Ok(InstallOutcome::AlreadyPresent);
    };
    let held_file = File::open(dest).map_err(StoreError::io("open", dest))?;
    let held = *blake3::Hasher::new()
        .update_reader(held_file)
        .map_err(StoreError::io("read", dest))?
        .finalize()
        .as_bytes();
    Ok(if held == offered {
        InstallOutcome::AlreadyPresent
    } else {
        InstallOutcome::Collision { held, offered }
    })
}

impl Write for PendingEntry {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(|e| match e {
            StoreError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
