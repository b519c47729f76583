//! The record of metadata collisions: a rule key offered a value different from the one held.
//!
//! Collisions are how non-deterministic rules show themselves, so a box keeps every one it sees,
//! in a JSON-lines file in its root (one object per line, appended, so a crash loses at most the
//! line being written) and in memory for `GET /_collisions`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::StoreError;
use crate::sync::lock;

/// The file name, in the box's root. Outside the entry directories, so Dune and fsck ignore it.
pub const FILE_NAME: &str = "dune-cachefs-collisions.jsonl";

/// How many collisions are kept in memory for listing; the file keeps them all.
const KEPT_IN_MEMORY: usize = 10_000;

/// The collision log of one box.
pub struct CollisionLog {
    path: PathBuf,
    inner: Mutex<(File, VecDeque<serde_json::Value>)>,
}

impl CollisionLog {
    /// Opens (creating) the log in `root` and loads the most recent records. Lines that do not
    /// parse (a torn last line after a crash) are skipped.
    pub fn open(root: &Path) -> Result<CollisionLog, StoreError> {
        let path = root.join(FILE_NAME);
        let mut recent = VecDeque::new();
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(StoreError::io("read", &path))?;
                    if let Ok(record) = serde_json::from_str(&line) {
                        recent.push_back(record);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        }
        let excess = recent.len().saturating_sub(KEPT_IN_MEMORY);
        recent.drain(..excess);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        Ok(CollisionLog {
            path,
            inner: Mutex::new((file, recent)),
        })
    }

    /// Appends one record (to the file first: the file is the truth).
    pub fn record(&self, record: serde_json::Value) {
        let mut inner = lock(&self.inner);
        let mut line = record.to_string();
        line.push('\n');
        if let Err(e) = inner.0.write_all(line.as_bytes()) {
            log::error!("cannot append to {}: {e}", self.path.display());
        }
        if inner.1.len() >= KEPT_IN_MEMORY {
            inner.1.pop_front();
        }
        inner.1.push_back(record);
    }

    /// The records kept in memory, oldest first.
    pub fn to_json(&self) -> serde_json::Value {
        let inner = lock(&self.inner);
        serde_json::Value::Array(inner.1.iter().cloned().collect())
    }

    /// How many are kept in memory.
    pub fn len(&self) -> usize {
        lock(&self.inner).1.len()
    }
}
