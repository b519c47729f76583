//! Shrinking a store to a size bound, with `dune cache trim`'s semantics.
//!
//! Dune counts an artifact whose link count is 1 as unused (a build that uses it holds a hard
//! link in `_build`), and removes unused artifacts oldest-ctime first, since Dune bumps an entry's
//! ctime each time it restores it. After that, metadata that names an artifact no longer present
//! is useless (restoring the rule would fail) and goes too. We follow the same rules so that a
//! store and Dune's own trimming never disagree about what is worth keeping.
//!
//! A cache box has no builds linking to its files and no Dune touching their ctime, so it trims
//! by last *read* instead ([`TrimOrder::LeastRecentlyRead`]); the box bumps an entry's atime
//! when it serves it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;

use super::db::Store;
use super::error::StoreError;
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;

/// What a trim did, for the command's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Total size of all entries before.
    pub size_before: u64,
    /// Total size of all entries after.
    pub size_after: u64,
    /// Artifacts removed to get under the bound.
    pub removed_artifacts: u64,
    /// Metadata removed because an artifact it names is gone.
    pub removed_metadata: u64,
    /// Artifacts that could not be removed because something still links to them.
    pub in_use_artifacts: u64,
}

/// Which artifacts go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimOrder {
    /// Dune's rule: only artifacts with one link (unused by any build), oldest ctime first.
    DuneUnused,
    /// A box's rule: any artifact, least recently read (oldest atime) first.
    LeastRecentlyRead,
}

/// One artifact as the trimmer sees it.
struct Candidate {
    entry: Entry,
    size: u64,
    age: (i64, i64),
}

impl Store {
    /// Removes artifacts in `order` until all entries total at most `limit` bytes (or no
    /// candidate is left), then removes metadata whose artifacts are gone.
    pub fn trim(&self, limit: u64, order: TrimOrder) -> Result<TrimReport, StoreError> {
        self.trim_with(limit, order, |_, _, remove| remove())
    }

    /// [`Store::trim`], with each removal made through `around`: given the entry, its size and
    /// the removal itself, it runs the removal and returns its result (whether the entry was
    /// there to remove). A box counts what it holds this way.
    pub fn trim_with(
        &self,
        limit: u64,
        order: TrimOrder,
        mut around: impl FnMut(
            &Entry,
            u64,
            &dyn Fn() -> Result<bool, StoreError>,
        ) -> Result<bool, StoreError>,
    ) -> Result<TrimReport, StoreError> {
        let mut report = TrimReport::default();
        let mut candidates = Vec::new();
        let mut metadata = Vec::new();
        for entry in self.entries()? {
            let path = self.path_of(&entry);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            };
            report.size_before += meta.len();
            let unused = meta.nlink() == 1;
            match (entry.kind, order) {
                (EntryKind::File, TrimOrder::DuneUnused) if !unused => report.in_use_artifacts += 1,
                (EntryKind::File, TrimOrder::DuneUnused) => candidates.push(Candidate {
                    entry,
                    size: meta.len(),
                    age: (meta.ctime(), meta.ctime_nsec()),
                }),
                (EntryKind::File, TrimOrder::LeastRecentlyRead) => candidates.push(Candidate {
                    entry,
                    size: meta.len(),
                    age: (meta.atime(), meta.atime_nsec()),
                }),
                (EntryKind::Meta(_), _) => metadata.push((entry, meta.len())),
            }
        }
        let mut size = report.size_before;
        candidates.sort_by_key(|c| (c.age, c.entry.key));
        for candidate in candidates {
            if size <= limit {
                break;
            }
            if around(&candidate.entry, candidate.size, &|| {
                self.remove(&candidate.entry)
            })? {
                size -= candidate.size;
                report.removed_artifacts += 1;
            }
        }
        for (entry, len) in metadata {
            if self.names_missing_artifact(&entry)? && around(&entry, len, &|| self.remove(&entry))?
            {
                size -= len;
                report.removed_metadata += 1;
            }
        }
        report.size_after = size;
        Ok(report)
    }

    /// Whether a metadata entry names an artifact the store does not hold. Metadata that does not
    /// parse is left alone: that is a problem for `fsck` to report, not for trim to hide.
    fn names_missing_artifact(&self, entry: &Entry) -> Result<bool, StoreError> {
        let path = self.path_of(entry);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        let Ok(metadata) = Metadata::parse(&bytes) else {
            return Ok(false);
        };
        for key in metadata.artifact_keys() {
            let artifact = Entry {
                kind: EntryKind::File,
                key,
            };
            if self.lookup(&artifact)?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes one entry; `false` if someone else removed it first.
    pub fn remove(&self, entry: &Entry) -> Result<bool, StoreError> {
        let path = self.path_of(entry);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove", &path)(e)),
        }
    }
}
