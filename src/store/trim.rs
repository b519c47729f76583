//! Shrinking a store to a size bound, by the rules of the store it is ([`TrimRules`]).
//!
//! A Dune cache on one machine is trimmed with `dune cache trim`'s semantics, so that a store
//! and Dune's own trimming never disagree about what is worth keeping. Dune counts an artifact
//! whose link count is 1 as unused (a build that uses it holds a hard link in `_build`), and
//! removes unused artifacts oldest-ctime first, since Dune bumps an entry's ctime each time it
//! restores it. After that, metadata that names an artifact no longer present is useless (the
//! store's builds could not restore the rule) and goes too.
//!
//! A cache box has no builds linking to its files and no Dune touching their ctime, so it trims
//! any entry, artifact or metadata, by last *read* ([`TrimRules::CacheBox`]); the box bumps an
//! entry's atime when it serves it. And it never removes metadata because an artifact it names is
//! missing: a box holds the rules whose keys it owns, while their artifacts are on the boxes that
//! own *their* keys, so a missing artifact says nothing about whether the rule can be restored.

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
    /// Metadata removed: to get under the bound ([`TrimRules::CacheBox`]), or because an artifact
    /// it names is gone ([`TrimRules::Dune`]).
    pub removed_metadata: u64,
    /// Artifacts that could not be removed because something still links to them.
    pub in_use_artifacts: u64,
}

/// What a trim may remove, and in which order: the caller names the kind of store it trims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimRules {
    /// A Dune cache on one machine (`dune-cachefs trim`, a mount's `--store-size`), as
    /// `dune cache trim` does it: only artifacts with one link (unused by any build), oldest
    /// ctime first; then metadata naming an artifact the store no longer holds.
    Dune,
    /// A cache box: any entry, artifact or metadata, least recently read (oldest atime) first,
    /// and nothing else (the artifacts of a box's rules mostly live on other boxes).
    CacheBox,
}

/// The times and link count of an entry, as a trim weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryStat {
    /// Hard links to the file.
    links: u64,
    /// Last status change (seconds, nanoseconds).
    ctime: (i64, i64),
    /// Last access (seconds, nanoseconds).
    atime: (i64, i64),
}

impl EntryStat {
    fn of(meta: &fs::Metadata) -> EntryStat {
        EntryStat {
            links: meta.nlink(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            atime: (meta.atime(), meta.atime_nsec()),
        }
    }
}

/// Where an entry stands in a trim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Removed, oldest first by this age, while the store is over its bound.
    Candidate((i64, i64)),
    /// An artifact a build links to: kept, and counted.
    InUse,
    /// Metadata not removed to meet the bound (Dune's: it goes only if an artifact it names
    /// does).
    Kept,
}

impl TrimRules {
    /// Where an entry of `kind` with `stat` stands under these rules.
    fn standing(self, kind: EntryKind, stat: EntryStat) -> Standing {
        match (self, kind) {
            (TrimRules::Dune, EntryKind::File) if stat.links > 1 => Standing::InUse,
            (TrimRules::Dune, EntryKind::File) => Standing::Candidate(stat.ctime),
            (TrimRules::Dune, EntryKind::Meta(_)) => Standing::Kept,
            (TrimRules::CacheBox, _) => Standing::Candidate(stat.atime),
        }
    }

    /// Whether metadata naming an artifact the store does not hold is removed after the bound
    /// is met: in a Dune cache, where every artifact of its rules belongs, yes; on a box, whose
    /// rules' artifacts live on the boxes owning their keys, never.
    fn removes_metadata_naming_missing_artifacts(self) -> bool {
        match self {
            TrimRules::Dune => true,
            TrimRules::CacheBox => false,
        }
    }
}

/// One entry the trimmer may remove to meet the bound.
struct Candidate {
    entry: Entry,
    size: u64,
    age: (i64, i64),
}

impl Store {
    /// Removes the candidates of `rules`, oldest first, until all entries total at most `limit`
    /// bytes (or no candidate is left), then, if the rules say so, metadata whose artifacts are
    /// gone.
    pub fn trim(&self, limit: u64, rules: TrimRules) -> Result<TrimReport, StoreError> {
        self.trim_with(limit, rules, |_, _, remove| remove())
    }

    /// [`Store::trim`], with each removal made through `around`: given the entry, its size and
    /// the removal itself, it runs the removal and returns its result (whether the entry was
    /// there to remove). A box counts what it holds this way.
    pub fn trim_with(
        &self,
        limit: u64,
        rules: TrimRules,
        mut around: impl FnMut(
            &Entry,
            u64,
            &dyn Fn() -> Result<bool, StoreError>,
        ) -> Result<bool, StoreError>,
    ) -> Result<TrimReport, StoreError> {
        let mut report = TrimReport::default();
        let mut candidates = Vec::new();
        let mut kept_metadata = Vec::new();
        for entry in self.entries()? {
            let path = self.path_of(&entry);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            };
            report.size_before += meta.len();
            match rules.standing(entry.kind, EntryStat::of(&meta)) {
                Standing::Candidate(age) => candidates.push(Candidate {
                    entry,
                    size: meta.len(),
                    age,
                }),
                Standing::InUse => report.in_use_artifacts += 1,
                Standing::Kept => kept_metadata.push((entry, meta.len())),
            }
        }
        let mut size = report.size_before;
        candidates.sort_by_key(|c| (c.age, c.entry.key));
        for candidate in candidates {
            if size <= limit {
                break;
            }
            let entry = candidate.entry;
            if around(&entry, candidate.size, &|| self.remove(&entry))? {
                size -= candidate.size;
                match entry.kind {
                    EntryKind::File => report.removed_artifacts += 1,
                    EntryKind::Meta(_) => report.removed_metadata += 1,
                }
            }
        }
        if rules.removes_metadata_naming_missing_artifacts() {
            for (entry, len) in kept_metadata {
                if self.names_missing_artifact(&entry)?
                    && around(&entry, len, &|| self.remove(&entry))?
                {
                    size -= len;
                    report.removed_metadata += 1;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    const OLDER: (i64, i64) = (1_000, 5);
    const NEWER: (i64, i64) = (2_000, 7);
    const METADATA: [EntryKind; 2] = [
        EntryKind::Meta(MetaVersion::V4),
        EntryKind::Meta(MetaVersion::V5),
    ];

    fn stat(links: u64) -> EntryStat {
        EntryStat {
            links,
            ctime: OLDER,
            atime: NEWER,
        }
    }

    #[test]
    fn dune_trims_unused_artifacts_by_ctime_then_metadata_naming_missing_artifacts() {
        let dune = TrimRules::Dune;
        assert_eq!(
            dune.standing(EntryKind::File, stat(1)),
            Standing::Candidate(OLDER)
        );
        assert_eq!(dune.standing(EntryKind::File, stat(2)), Standing::InUse);
        for kind in METADATA {
            assert_eq!(dune.standing(kind, stat(1)), Standing::Kept);
        }
        assert!(dune.removes_metadata_naming_missing_artifacts());
    }

    #[test]
    fn a_box_trims_every_kind_by_last_read_and_never_for_an_artifact_it_lacks() {
        let cache_box = TrimRules::CacheBox;
        for kind in [EntryKind::File].into_iter().chain(METADATA) {
            for links in [1, 2] {
                assert_eq!(
                    cache_box.standing(kind, stat(links)),
                    Standing::Candidate(NEWER),
                    "{kind:?} with {links} links"
                );
            }
        }
        assert!(!cache_box.removes_metadata_naming_missing_artifacts());
    }
}
