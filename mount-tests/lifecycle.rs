//! Starting and stopping: SIGTERM unmounts cleanly; a `kill -9` leaves a dead mount that a new
//! mount names and refuses, that `fusermount3 -u` or `mount --recover` clears, and a store that
//! passes `fsck`.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use rustix::io::Errno;

use crate::common::{self, COMMAND_DEADLINE};
use crate::harness::{fuse_available, is_mounted, pushed_cluster, Mount};

/// SIGTERM to the mount process: it exits 0, the mount is gone from the mount table, and the
/// mount point is an ordinary, usable directory again.
#[test]
fn sigterm_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::start(&dir.path().join("store"), None, &[]);
    let exit = mount.stop();
    assert!(
        exit.success(),
        "the mount exited with {exit}:\n{}",
        mount.log()
    );
    assert!(!mount.is_mounted(), "still in /proc/self/mounts");
    let probe = mount.point.join("probe");
    fs::write(&probe, b"usable").expect("the mount point is writable again");
    assert_eq!(fs::read(&probe).unwrap(), b"usable");
    fs::remove_file(&probe).unwrap();
    assert_eq!(fs::read_dir(&mount.point).unwrap().count(), 0);
}

/// SIGTERM while a file on the mount is open (a build reading, a shell inside it): the mount
/// point is detached and usable at once, the open file keeps reading, and the process exits 0 once
/// the file is closed.
#[test]
fn sigterm_with_a_file_open_detaches_at_once_and_exits_when_it_is_closed() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    fs::write(store.join("beacon"), b"still readable\n").unwrap();
    let mut mount = Mount::start(&store, None, &[]);
    let mut open = fs::File::open(mount.path("beacon")).unwrap();
    mount.terminate();
    common::wait_until("the busy mount is detached", || !mount.is_mounted());
    assert_eq!(
        fs::read_dir(&mount.point).unwrap().count(),
        0,
        "the mount point is the empty directory again"
    );
    let mut text = String::new();
    open.read_to_string(&mut text)
        .expect("an open file keeps reading after the detach");
    assert_eq!(text, "still readable\n");
    assert!(mount.is_running(), "exited with a file still open");
    drop(open);
    let exit = mount.wait_exit();
    assert!(
        exit.success(),
        "the mount exited with {exit}:\n{}",
        mount.log()
    );
}

/// Whether the mount point answers "Transport endpoint is not connected" (to a listing: a `stat`
/// may be answered from the kernel's attribute cache without asking the dead process).
fn is_dead(point: &Path) -> bool {
    fs::read_dir(point)
        .err()
        .and_then(|e| e.raw_os_error())
        .is_some_and(|e| Errno::from_raw_os_error(e) == Errno::NOTCONN)
}

/// After `kill -9` of a mount (while it fetches): the mount point answers ENOTCONN; mounting
/// there again without `--recover` fails with a message naming `fusermount3 -u`, which does clear
/// it; a mount with `--recover` clears it by itself; and the store passes `fsck`.
#[test]
fn a_killed_mount_is_recovered_and_its_store_is_sound() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let store = cluster.dir().join("store");
    let config = Some(cluster.config.as_path());
    let entries = common::entries(&cache.db);

    // Killed in the middle of fetching: a reader keeps it busy until the kill.
    let mount = Mount::start(&store, config, &[]);
    let paths: Vec<_> = entries
        .iter()
        .map(|(e, _)| mount.path(e.relative_path()))
        .collect();
    let reader = std::thread::spawn(move || {
        for path in paths {
            // Reads fail once the mount is dead; that is the point.
            let _ = fs::read(path);
        }
    });
    common::wait_until("the mount has fetched something", || {
        mount.counter("fetches") > 0
    });
    let dead = mount.kill9();
    reader.join().expect("the reader thread");
    assert!(
        is_dead(&dead.point),
        "expected ENOTCONN at {:?}; the killed mount had logged:\n{}",
        dead.point,
        dead.log
    );

    let refused = common::run(
        common::dune_cachefs_command()
            .arg("mount")
            .arg("--store")
            .arg(&store)
            .arg(&dead.point),
        COMMAND_DEADLINE,
    );
    assert!(!refused.status.success(), "mounted over a dead mount");
    assert!(
        refused.stderr.contains("fusermount3 -u"),
        "the refusal should say how to recover: {}",
        refused.describe()
    );
    let unmount = common::run(
        Command::new("fusermount3").arg("-u").arg(&dead.point),
        COMMAND_DEADLINE,
    );
    assert!(
        unmount.status.success(),
        "fusermount3 -u: {}",
        unmount.describe()
    );
    assert!(!is_mounted(&dead.point) && !is_dead(&dead.point));

    // Again, recovered by the next mount itself.
    let mount = dead.remount(&store, config, &[]);
    let (entry, original) = &entries[0];
    assert_eq!(
        fs::read(mount.path(entry.relative_path())).unwrap(),
        fs::read(original).unwrap()
    );
    let dead = mount.kill9();
    assert!(is_dead(&dead.point), "{}", dead.log);
    let mut mount = dead.remount(&store, config, &["--recover"]);
    assert_eq!(
        fs::read(mount.path(entry.relative_path())).unwrap(),
        fs::read(original).unwrap()
    );
    let exit = mount.stop();
    assert!(exit.success(), "{exit}:\n{}", mount.log());

    let fsck = common::dune_cachefs(&["fsck".as_ref(), store.as_os_str()]);
    assert!(
        fsck.status.success(),
        "fsck of the store: {}",
        fsck.describe()
    );
    assert!(
        !common::entries(&store).is_empty(),
        "the killed mount installed nothing: fsck checked an empty store"
    );
}

/// Reads are answered before what they fetched is flushed and named in the store (it settles in
/// the background): SIGTERM right after a burst of cold reads still leaves every fetched entry
/// in the store, byte for byte, with no temp file, and `fsck` passes.
#[test]
fn sigterm_right_after_cold_reads_keeps_every_fetched_entry() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let store = cluster.dir().join("store");
    let mut mount = Mount::start(&store, Some(&cluster.config), &[]);
    let originals = common::entries(&cache.db);
    for (entry, original) in &originals {
        let read = fs::read(mount.path(entry.relative_path()))
            .unwrap_or_else(|e| panic!("reading {entry}: {e}"));
        assert!(read == fs::read(original).unwrap(), "{entry}: wrong bytes");
    }
    let exit = mount.stop();
    assert!(exit.success(), "exit {exit}:\n{}", mount.log());
    for (entry, original) in &originals {
        let stored = fs::read(store.join(entry.relative_path()))
            .unwrap_or_else(|e| panic!("{entry} is not in the store after the stop: {e}"));
        assert!(
            stored == fs::read(original).unwrap(),
            "{entry}: stored bytes differ"
        );
    }
    let temp = store.join(dune_cachefs::store::TEMP_DIR);
    let left = fs::read_dir(&temp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "temp files left in {}", temp.display());
    let fsck = common::dune_cachefs(&["fsck".as_ref(), store.as_os_str()]);
    assert!(fsck.status.success(), "fsck: {}", fsck.describe());
}

/// The inode table follows the kernel's references: after `find` over thousands of entries and
/// the kernel dropping its caches, the mount holds numbers only for what is still open (here,
/// nothing but the root and a handful of directories).
#[test]
fn the_inode_table_shrinks_when_the_kernel_forgets() {
    if !fuse_available() {
        return;
    }
    const ENTRIES: u32 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    store_of_small_artifacts(&store_dir, ENTRIES);
    let mount = Mount::start(&store_dir, None, &[]);
    let found = common::run(
        Command::new("find").arg(&mount.point).arg("-type").arg("f"),
        common::COMMAND_DEADLINE,
    );
    assert!(found.status.success(), "find: {}", found.describe());
    let inodes = || {
        mount.status()["inodes"]
            .as_u64()
            .expect("inodes in the status file")
    };
    let after_find = inodes();
    assert!(
        after_find > u64::from(ENTRIES),
        "{after_find} numbers after find over {ENTRIES} entries"
    );
    common::wait_until(
        "the kernel forgets the entries and the table shrinks",
        || {
            fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the kernel's caches");
            inodes() < 300
        },
    );
    assert!(mount.status()["requests"]["forget"].as_u64() > Some(0));
}

/// A store at `store_dir` of `count` small artifacts (`entry <n>\n`), each at its path in the
/// layout and with its bytes.
fn store_of_small_artifacts(store_dir: &Path, count: u32) -> Vec<(String, Vec<u8>)> {
    use dune_cachefs::dune::key::{file_key, Era};
    use dune_cachefs::dune::layout::{Entry, EntryKind};
    fs::create_dir_all(store_dir).unwrap();
    let store = dune_cachefs::store::Store::open(store_dir).unwrap();
    (0..count)
        .map(|n| {
            let bytes = format!("entry {n}\n").into_bytes();
            let entry = Entry {
                kind: EntryKind::File,
                key: file_key(Era::Md5, bytes.as_slice(), false).unwrap(),
            };
            let _ = store.install_bytes(entry, &bytes).unwrap();
            let path = entry.relative_path().to_str().unwrap().to_string();
            (path, bytes)
        })
        .collect()
}

/// With a bound on the numbers the kernel holds (`--max-inodes`), a `find` over five times as
/// many entries leaves the table near the bound: the mount asks the kernel to drop the names
/// used least recently, and it forgets them. Every entry still reads back right afterwards
/// (a dropped name is looked up again), and a file held open all along keeps reading.
#[test]
fn the_inode_table_stays_near_its_bound() {
    if !fuse_available() {
        return;
    }
    const ENTRIES: u32 = 5000;
    const BOUND: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let entries = store_of_small_artifacts(&store_dir, ENTRIES);
    let mount = Mount::start(&store_dir, None, &["--max-inodes", &BOUND.to_string()]);
    let inodes = || {
        mount.status()["inodes"]
            .as_u64()
            .expect("inodes in the status file")
    };
    let (held_path, held_bytes) = &entries[0];
    let mut held = fs::File::open(mount.path(held_path)).expect("open an entry");

    let found = common::run(
        Command::new("find").arg(&mount.point).arg("-type").arg("f"),
        COMMAND_DEADLINE,
    );
    assert!(found.status.success(), "find: {}", found.describe());
    let listed = found.stdout.lines().count();
    assert_eq!(
        listed, ENTRIES as usize,
        "every entry (the status file is a link)"
    );
    // The kernel forgets what it was asked to drop just after: wait for it, without help
    // from drop_caches.
    common::wait_until("the table is back near its bound after find", || {
        inodes() <= BOUND + BOUND / 10
    });
    let evicted = mount.status()["inodes_evicted"].as_u64().unwrap();
    assert!(
        evicted >= u64::from(ENTRIES) - BOUND,
        "only {evicted} names dropped"
    );

    // Every entry, dropped or not, reads back right.
    for (path, bytes) in &entries {
        let read = fs::read(mount.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&read, bytes, "{path}");
    }
    common::wait_until("the table is back near its bound after reading", || {
        inodes() <= BOUND + BOUND / 10
    });
    // The file open all along was never dropped, and reads as before.
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert_eq!(&again, held_bytes);
    let held_ino = std::os::unix::fs::MetadataExt::ino(&held.metadata().unwrap());
    let by_name = fs::metadata(mount.path(held_path)).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&by_name),
        held_ino,
        "the open entry keeps its number"
    );
}
