//! An entry being written: bytes stream into a temp file while they are hashed (artifacts) or
//! parsed (metadata), so checking costs no second pass over the data.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{InstallOutcome, Store, StoreError};
use crate::dune::key::ContentHasher;
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::MetadataReader;

/// File modes as Dune writes them: artifacts read-only (keeping the executable bit), metadata
/// an ordinary 0644 file. Matching Dune keeps a store indistinguishable from Dune's own cache.
const MODE_ARTIFACT: u32 = 0o444;
const MODE_ARTIFACT_EXE: u32 = 0o555;
const MODE_METADATA: u32 = 0o644;

/// How an entry's bytes are checked as they arrive.
enum Check {
    Artifact(ContentHasher),
    Metadata {
        /// Boxed: the reader's parse state is large, and most entries are artifacts.
        reader: Box<MetadataReader>,
        digest: blake3::Hasher,
    },
}

/// A new entry on its way into a [`Store`]. Write its bytes with [`PendingEntry::write_chunk`]
/// (or as an [`io::Write`]), then [`PendingEntry::commit`]. If it is dropped uncommitted, or the
/// commit refuses it, the temp file is removed: a failed install leaves nothing behind.
pub struct PendingEntry<'s> {
    store: &'s Store,
    entry: Entry,
    temp: TempFile,
    file: File,
    check: Check,
    size: u64,
    /// The executable bit the sender stated, if it did: a key that says otherwise is refused.
    claimed_executable: Option<bool>,
}

/// Owns the temp file's name: removing it on drop is what makes every failed or abandoned
/// install leave nothing behind, whichever way the install ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove temp file {}: {e}", self.0.display());
            }
        }
    }
}

impl<'s> PendingEntry<'s> {
    pub(super) fn create(
        store: &'s Store,
        entry: Entry,
        temp_path: PathBuf,
    ) -> Result<PendingEntry<'s>, StoreError> {
        let temp_dir = temp_path.parent().expect("temp files live in the temp dir");
        fs::create_dir_all(temp_dir).map_err(StoreError::io("create", temp_dir))?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(StoreError::io("create", &temp_path))?;
        let check = match entry.kind {
            EntryKind::File => Check::Artifact(ContentHasher::new(None)),
            EntryKind::Meta(_) => Check::Metadata {
                reader: Box::new(MetadataReader::new()),
                digest: blake3::Hasher::new(),
            },
        };
        Ok(PendingEntry {
            store,
            entry,
            temp: TempFile(temp_path),
            file,
            check,
            size: 0,
            claimed_executable: None,
        })
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
            Check::Artifact(hasher) => hasher.update(chunk),
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
        self.file
            .write_all(chunk)
            .map_err(StoreError::io("write", &self.temp.0))?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Checks the bytes and, if they are sound, makes the entry visible under its name.
    ///
    /// The data is flushed to disk before it gets its name, so a power cut can lose a fresh entry
    /// but never leave a truncated one under a valid key. An offer for a name already taken is
    /// never linked (first writer wins), so it is answered without that flush: a `push` re-sends
    /// every metadata entry, and the flush costs far more than the look.
    pub fn commit(self) -> Result<InstallOutcome, StoreError> {
        let (mode, offered_metadata) =
            verdict(self.entry, self.size, self.check, self.claimed_executable)?;
        let dest = self.store.path_of(&self.entry);
        if fs::symlink_metadata(&dest).is_ok() {
            return compare_with_held(&dest, offered_metadata);
        }
        let temp_path = &self.temp.0;
        self.file
            .set_permissions(Permissions::from_mode(mode))
            .map_err(StoreError::io("chmod", temp_path))?;
        self.file
            .sync_all()
            .map_err(StoreError::io("sync", temp_path))?;
        let shard_dir = dest.parent().expect("entry paths have a shard directory");
        fs::create_dir_all(shard_dir).map_err(StoreError::io("create", shard_dir))?;
        match fs::hard_link(temp_path, &dest) {
            Ok(()) => Ok(InstallOutcome::Stored),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                compare_with_held(&dest, offered_metadata)
            }
            Err(e) => Err(StoreError::io("link", &dest)(e)),
        }
    }
}

/// The final mode if the bytes are sound (and, for metadata, the digest of the offered value,
/// needed if the name turns out to be taken), or why they are not.
fn verdict(
    entry: Entry,
    size: u64,
    check: Check,
    claimed_executable: Option<bool>,
) -> Result<(u32, Option<[u8; 32]>), StoreError> {
    match check {
        Check::Artifact(hasher) => {
            let Some(m) = hasher.finish().matching(&entry.key) else {
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
        Check::Metadata { reader, digest } => {
            reader
                .finish()
                .map_err(|source| StoreError::BadMetadata { entry, source })?;
            Ok((MODE_METADATA, Some(*digest.finalize().as_bytes())))
        }
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

impl Write for PendingEntry<'_> {
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
