//! Checking every entry of a store (or of any Dune `db/` directory) for soundness.
//!
//! An artifact is sound when its bytes reproduce its key in some era and its mode agrees with the
//! executable bit the key encodes (Dune gives restored files the cache file's mode, so a wrong mode
//! is as harmful as wrong bytes). Metadata is sound when it parses. Anything else inside an entry
//! directory — a name that is not a key, a key filed under the wrong shard, a directory where a file
//! should be — is reported too, because Dune would never find it and it hides real data.
//!
//! fsck reads only: it never repairs, so what it reports is exactly what was found.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::db::Store;
use super::error::StoreError;
use crate::dune::key::{self, mode_is_executable, Key, Shard};
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;

/// Why one path failed the check.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The bytes do not reproduce the key in any era.
    KeyMismatch,
    /// The bytes match the key, but the file's mode disagrees with the key's executable bit.
    WrongMode {
        /// What the key says.
        key_says_executable: bool,
        /// The file's permission bits.
        mode: u32,
    },
    /// Metadata that does not parse.
    BadMetadata(String),
    /// A name inside an entry directory that is not an entry (not a key, or the wrong shard).
    NotAnEntry,
    /// Something that is not a regular file where an entry or shard directory should be.
    WrongFileType,
    /// The path could not be read.
    Unreadable(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::KeyMismatch => f.write_str("content does not match its key in any era"),
            Problem::WrongMode {
                key_says_executable,
                mode,
            } => {
                let want = if *key_says_executable {
                    "executable"
                } else {
                    "not executable"
                };
                write!(f, "key says {want} but the mode is {:o}", mode & 0o7777)
            }
            Problem::BadMetadata(why) => write!(f, "metadata does not parse: {why}"),
            Problem::NotAnEntry => f.write_str("not a cache entry (bad name or wrong shard)"),
            Problem::WrongFileType => f.write_str("not a regular file or shard directory"),
            Problem::Unreadable(why) => write!(f, "cannot read: {why}"),
        }
    }
}

/// One bad path, with the entry it claims to be when its name is well-formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The offending path.
    pub path: PathBuf,
    /// The entry named by the path, if it is a well-formed entry path.
    pub entry: Option<Entry>,
    /// What is wrong.
    pub problem: Problem,
}

/// The result of checking a whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Artifacts checked.
    pub artifacts: u64,
    /// Metadata entries checked.
    pub metadata: u64,
    /// Sound metadata that names an artifact this store does not hold: normal in a shared cache
    /// (trimmed, or stored elsewhere), so it is counted, not reported as a problem.
    pub dangling_metadata: u64,
    /// Every bad path found.
    pub findings: Vec<Finding>,
}

impl FsckReport {
    /// Whether every entry is sound.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl Store {
    /// Checks every entry. Failing to read one path is a finding, not an abort, so one bad
    /// sector does not hide the state of everything after it.
    pub fn fsck(&self) -> Result<FsckReport, StoreError> {
        let mut report = FsckReport::default();
        for kind in EntryKind::ALL {
            let kind_dir = self.root().join(kind.dir());
            for (shard_path, shard) in list_dir(&kind_dir, &mut report)? {
                let is_dir = fs::symlink_metadata(&shard_path).is_ok_and(|m| m.is_dir());
                let Some(shard) = shard
                    .as_deref()
                    .and_then(Shard::from_name)
                    .filter(|_| is_dir)
                else {
                    report.findings.push(Finding {
                        path: shard_path,
                        entry: None,
                        problem: Problem::WrongFileType,
                    });
                    continue;
                };
                for (path, name) in list_dir(&shard_path, &mut report)? {
                    let key = name.as_deref().and_then(|n| n.parse::<Key>().ok());
                    let Some(key) = key.filter(|k| k.shard() == shard) else {
                        report.findings.push(Finding {
                            path,
                            entry: None,
                            problem: Problem::NotAnEntry,
                        });
                        continue;
                    };
                    let entry = Entry { kind, key };
                    if let Some(problem) = self.check_entry(&entry, &path, &mut report) {
                        report.findings.push(Finding {
                            path,
                            entry: Some(entry),
                            problem,
                        });
                    }
                }
            }
        }
        Ok(report)
    }

    fn check_entry(
        &self,
        entry: &Entry,
        path: &std::path::Path,
        report: &mut FsckReport,
    ) -> Option<Problem> {
        let unreadable = |e: io::Error| Some(Problem::Unreadable(e.to_string()));
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Some(Problem::WrongFileType),
            Err(e) => return unreadable(e),
        };
        match entry.kind {
            EntryKind::File => {
                report.artifacts += 1;
                let verified = File::open(path).and_then(|f| key::verify(&entry.key, f));
                match verified {
                    Err(e) => unreadable(e),
                    Ok(None) => Some(Problem::KeyMismatch),
                    Ok(Some(m)) if m.executable != mode_is_executable(meta.mode()) => {
                        Some(Problem::WrongMode {
                            key_says_executable: m.executable,
                            mode: meta.mode(),
                        })
                    }
                    Ok(Some(_)) => None,
                }
            }
            EntryKind::Meta(_) => {
                report.metadata += 1;
                let bytes = match fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) => return unreadable(e),
                };
                match Metadata::parse(&bytes) {
                    Err(e) => Some(Problem::BadMetadata(e.to_string())),
                    Ok(metadata) => {
                        let dangling = metadata.artifact_keys().any(|key| {
                            let artifact = Entry {
                                kind: EntryKind::File,
                                key,
                            };
                            !self.path_of(&artifact).is_file()
                        });
                        report.dangling_metadata += u64::from(dangling);
                        None
                    }
                }
            }
        }
    }
}

/// The items of a directory with their names (`None` when not UTF-8), sorted for a stable report.
/// A missing directory is empty; an unreadable one is a finding.
fn list_dir(
    dir: &std::path::Path,
    report: &mut FsckReport,
) -> Result<Vec<(PathBuf, Option<String>)>, StoreError> {
    let items = match fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            report.findings.push(Finding {
                path: dir.to_path_buf(),
                entry: None,
                problem: Problem::Unreadable(e.to_string()),
            });
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    for item in items {
        let item = item.map_err(StoreError::io("list", dir))?;
        out.push((item.path(), item.file_name().into_string().ok()));
    }
    out.sort();
    Ok(out)
}
