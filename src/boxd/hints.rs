//! The hints a box keeps ([`crate::hints`]): for each rule key it owns, the rules a build asked
//! for next, in `<root>/.dune-cachefs-hints/<kind dir>/<hh>/<key>`, outside Dune's layout (so
//! neither Dune nor `fsck` sees them). Each `PUT` replaces the hint whole (the latest build's
//! order is the best guess); a crash leaves the old one or the new one, never a mix. A hint is
//! small and advisory: nothing verifies it, and losing one costs only a round trip.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dune::layout::Entry;
use crate::store::{Store, TEMP_DIR};

/// The directory of hints inside a box's root.
pub const HINTS_DIR: &str = ".dune-cachefs-hints";

/// Where the hint of `entry` (a rule's metadata) lives.
pub fn path(root: &Path, entry: &Entry) -> PathBuf {
    root.join(HINTS_DIR).join(entry.relative_path())
}

/// Replaces the hint of `entry` with `body` (already checked): written to a temp file of the
/// store, then renamed over the old one.
pub fn replace(store: &Store, entry: &Entry, body: &[u8]) -> io::Result<()> {
    static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
    let dest = path(store.root(), entry);
    let temp = store.root().join(TEMP_DIR).join(format!(
        "hint.{}.{}.{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed),
        entry.key
    ));
    let written = File::create(&temp).and_then(|mut file| file.write_all(body));
    let renamed = written.and_then(|()| {
        let dir = dest.parent().expect("hint paths have a shard directory");
        fs::create_dir_all(dir)?;
        fs::rename(&temp, &dest)
    });
    if renamed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    renamed
}

/// Removes the hint of `entry`, if there is one (a hint is advice: failing to remove it is
/// harmless, and only logged).
pub fn remove(root: &Path, entry: &Entry) {
    match fs::remove_file(path(root, entry)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            log::warn!("removing the hint of {entry}: {e}")
        }
        _ => {}
    }
}

/// The hint of `entry` as a header value, if there is one (read on the blocking pool).
pub fn read(root: &Path, entry: &Entry) -> Option<String> {
    let body = fs::read(path(root, entry)).ok()?;
    header_of(&body)
}

/// The header value for a stored hint body (which the box checked when it stored it).
pub fn header_of(body: &[u8]) -> Option<String> {
    let next = crate::hints::parse_body(body).ok()?;
    (!next.is_empty()).then(|| crate::hints::header(&next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    #[test]
    fn a_hint_is_replaced_whole_and_read_back_as_a_header() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let meta = |n: u8| Entry {
            kind: EntryKind::Meta(MetaVersion::V5),
            key: format!("{n:02x}{}", "1".repeat(30)).parse().unwrap(),
        };
        assert_eq!(read(dir.path(), &meta(1)), None);
        let first = crate::hints::body(&[meta(2), meta(3)]);
        replace(&store, &meta(1), first.as_bytes()).unwrap();
        let header = read(dir.path(), &meta(1)).unwrap();
        assert_eq!(crate::hints::parse_lenient(&header), vec![meta(2), meta(3)]);
        replace(&store, &meta(1), crate::hints::body(&[meta(4)]).as_bytes()).unwrap();
        let header = read(dir.path(), &meta(1)).unwrap();
        assert_eq!(crate::hints::parse_lenient(&header), vec![meta(4)]);
        assert_eq!(fs::read_dir(dir.path().join(TEMP_DIR)).unwrap().count(), 0);
        // Not under Dune's layout: the store sees no entry.
        assert!(store.entries().unwrap().is_empty());
    }
}
