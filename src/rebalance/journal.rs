//! The journal of a rebalance: the entries already settled on their new owners, so a run that was
//! killed resumes where it stopped instead of asking every box about every entry again.
//!
//! One line per settled entry (`<outcome> <entry path>`), appended as each one settles, after a
//! first line naming the transition it belongs to (a digest of the moves). A journal of another
//! transition is started afresh; a line cut short by a kill is ignored, and its entry is moved
//! again, which is harmless: a box keeps the first copy of an entry, and an artifact is only
//! sent if its new owner lacks it. Nothing here is trusted for correctness, only for speed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::dune::layout::Entry;
use crate::sync::lock;

/// The first line's start; the digest of the transition follows it.
const HEADER: &str = "dune-cachefs rebalance journal";

/// The settled entries of one transition, and the file recording them.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    settled: HashSet<Entry>,
}

impl Journal {
    /// Opens the journal at `path` for the transition `digest`: its settled entries are read
    /// back if it records the same transition; else (or if it does not exist) it starts empty.
    pub fn open(path: &Path, digest: &str) -> io::Result<Journal> {
        let header = format!("{HEADER} {digest}");
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut lines: Vec<&str> = text.lines().collect();
        if !text.ends_with('\n') {
            // Cut short by a kill.
            lines.pop();
        }
        let settled: HashSet<Entry> = match lines.split_first() {
            Some((first, rest)) if *first == header => rest
                .iter()
                .filter_map(|line| {
                    let (_, entry) = line.split_once(' ')?;
                    Entry::from_relative_path(Path::new(entry))
                })
                .collect(),
            _ => HashSet::new(),
        };
        let mut file = if settled.is_empty() {
            let mut file = File::create(path)?;
            writeln!(file, "{header}")?;
            file
        } else {
            let mut file = OpenOptions::new().append(true).open(path)?;
            // A line cut short by a kill is ended, so the next one starts on its own line.
            if !text.ends_with('\n') {
                writeln!(file)?;
            }
            file
        };
        file.flush()?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            settled,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier run settled `entry`.
    pub fn settled(&self, entry: &Entry) -> bool {
        self.settled.contains(entry)
    }

    /// How many entries earlier runs settled.
    pub fn settled_count(&self) -> usize {
        self.settled.len()
    }

    /// Records that `entry` is settled, with its `outcome` (one word), in one write.
    pub fn record(&self, entry: &Entry, outcome: &str) -> io::Result<()> {
        let line = format!("{outcome} {}\n", entry.relative_path().display());
        lock(&self.file).write_all(line.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn entry(n: u8, kind: EntryKind) -> Entry {
        Entry {
            kind,
            key: crate::dune::key::Key::from_bytes([n; 16]),
        }
    }

    #[test]
    fn settled_entries_survive_a_kill_and_another_transition_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (a, b) = (
            entry(1, EntryKind::File),
            entry(2, EntryKind::Meta(MetaVersion::V5)),
        );
        let journal = Journal::open(&path, "one").unwrap();
        assert_eq!(journal.settled_count(), 0);
        journal.record(&a, "moved").unwrap();
        journal.record(&b, "collision").unwrap();
        drop(journal);
        // A kill in the middle of a line: that line does not count, the others do.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("moved files/v4/03/0303");
        fs::write(&path, &text).unwrap();
        let journal = Journal::open(&path, "one").unwrap();
        assert!(journal.settled(&a) && journal.settled(&b));
        assert_eq!(journal.settled_count(), 2);
        let c = entry(3, EntryKind::File);
        journal.record(&c, "there").unwrap();
        drop(journal);
        let journal = Journal::open(&path, "one").unwrap();
        assert!(
            journal.settled(&c),
            "{}",
            fs::read_to_string(&path).unwrap()
        );
        assert_eq!(journal.settled_count(), 3);
        drop(journal);
        let other = Journal::open(&path, "two").unwrap();
        assert_eq!(other.settled_count(), 0);
        assert!(!other.settled(&a));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "dune-cachefs rebalance journal two\n"
        );
    }
}
