//! The macOS platform policy, run on Linux: every path its own inode with one link, Finder's
//! files refused, and `link()` an independent copy. A Linux-policy mount of the same store is
//! the control that shows the hard links are really there.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::io::Errno;

use crate::common::{self, COMMAND_DEADLINE};
use crate::harness::{errno_of, fuse_available, Mount};

/// Every file and directory under `root` (not following symlinks), with its metadata.
fn walk(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    fn go(dir: &Path, out: &mut BTreeMap<PathBuf, fs::Metadata>) {
        for item in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}")) {
            let path = item.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            if meta.is_dir() {
                go(&path, out);
            }
            out.insert(path, meta);
        }
    }
    let mut out = BTreeMap::new();
    out.insert(root.to_path_buf(), fs::symlink_metadata(root).unwrap());
    go(root, &mut out);
    out
}

/// Under `--platform-policy macos`: all inode numbers distinct and every file's link count 1,
/// even for hard-linked files (which show 2 links under the Linux policy); `._*` and `.DS_Store`
/// cannot be created; a `link()` inside the mount makes an independent copy.
#[test]
fn macos_policy_gives_every_path_its_own_inode_and_one_link() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let copy = common::run(
        Command::new("cp").arg("-a").arg(&cache.db).arg(&store),
        COMMAND_DEADLINE,
    );
    assert!(copy.status.success(), "cp -a: {}", copy.describe());
    // Hard links in the store: a scratch pair, and an entry with a second (scratch) name.
    fs::write(store.join("pair-a"), b"one file, two names\n").unwrap();
    fs::hard_link(store.join("pair-a"), store.join("pair-b")).unwrap();
    let (entry, _) = common::entries(&store)
        .into_iter()
        .next()
        .expect("an entry");
    fs::hard_link(store.join(entry.relative_path()), store.join("entry-link")).unwrap();
    let linked = [
        PathBuf::from("pair-a"),
        PathBuf::from("pair-b"),
        PathBuf::from("entry-link"),
        entry.relative_path(),
    ];

    let linux = Mount::start(&store, None, &["--platform-policy", "linux"]);
    for path in &linked {
        let nlink = fs::metadata(linux.path(path)).unwrap().nlink();
        assert_eq!(nlink, 2, "{path:?} under the Linux policy");
    }
    drop(linux);

    let mac = Mount::start(&store, None, &["--platform-policy", "macos"]);
    let all = walk(&mac.point);
    assert!(all.len() > 300, "walked only {} paths", all.len());
    let mut by_ino: BTreeMap<u64, &Path> = BTreeMap::new();
    for (path, meta) in &all {
        if let Some(other) = by_ino.insert(meta.ino(), path) {
            panic!("{path:?} and {other:?} share inode {}", meta.ino());
        }
        if !meta.is_dir() {
            assert_eq!(meta.nlink(), 1, "{path:?} shows {} links", meta.nlink());
        }
    }

    // Finder's files are refused, at the root and in a scratch directory.
    fs::create_dir(mac.path("promoting.test")).unwrap();
    for name in ["._foo", ".DS_Store", "promoting.test/._bar"] {
        let err = errno_of(name, fs::write(mac.path(name), b"finder"));
        assert_eq!(err, Errno::ACCESS, "creating {name}");
        assert!(!store.join(name).exists(), "{name} reached the store");
    }
    let err = errno_of(
        "renaming to ._pair",
        fs::rename(mac.path("pair-a"), mac.path("._pair")),
    );
    assert_eq!(err, Errno::ACCESS);

    // link() copies: a new inode, one link each, same bytes, and independent afterwards.
    fs::hard_link(mac.path("pair-a"), mac.path("pair-c")).expect("link inside the mount");
    let (a, c) = (
        fs::metadata(mac.path("pair-a")).unwrap(),
        fs::metadata(mac.path("pair-c")).unwrap(),
    );
    assert_ne!(a.ino(), c.ino(), "link() gave the same inode");
    assert_eq!((a.nlink(), c.nlink()), (1, 1));
    assert_eq!(
        fs::read(mac.path("pair-c")).unwrap(),
        b"one file, two names\n"
    );
    OpenOptions::new()
        .append(true)
        .open(mac.path("pair-c"))
        .and_then(|mut f| f.write_all(b"changed\n"))
        .unwrap();
    assert_eq!(
        fs::read(mac.path("pair-a")).unwrap(),
        b"one file, two names\n"
    );
    let (store_a, store_c) = (
        fs::metadata(store.join("pair-a")).unwrap(),
        fs::metadata(store.join("pair-c")).unwrap(),
    );
    assert_ne!(store_a.ino(), store_c.ino(), "the store holds a real link");
    assert_eq!(store_a.nlink(), 2, "pair-a keeps its one other name");
}
