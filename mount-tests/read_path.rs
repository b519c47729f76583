//! The read path: a pushed real Dune cache seen through a mount with an empty store, by the
//! programs people run on it, and one big cold artifact read by many at once.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Instant;

use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

use crate::common::{self, BoxCluster, COMMAND_DEADLINE, WAIT_DEADLINE};
use crate::harness::{
    assert_same_tree, fuse_available, pushed_cluster, store_artifact, tree, Mount, Requests,
};

/// The size and mode an entry must show: the original's size; 0555 for an executable artifact,
/// else 0444 (metadata too, whatever its mode in the original cache).
fn expected_size_and_mode(entry: &Entry, original: &Path) -> (u64, u32) {
    let mode = match entry.kind {
        EntryKind::File if common::mode(original) & 0o111 != 0 => 0o555,
        _ => 0o444,
    };
    (fs::metadata(original).unwrap().len(), mode)
}

/// What must not change about an entry once it is shown: inode, size, mode, links, times.
fn stable_attributes(meta: &fs::Metadata) -> [i64; 8] {
    [
        meta.ino() as i64,
        meta.size() as i64,
        i64::from(meta.mode()),
        meta.nlink() as i64,
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ]
}

/// Runs a tool on the mount and asserts that it succeeded.
fn tool(command: &mut Command) -> common::Output {
    let out = common::run(command, COMMAND_DEADLINE);
    assert!(out.status.success(), "{command:?}: {}", out.describe());
    out
}

/// Every entry of a real cache pushed to three boxes shows through a mount with an empty store
/// with the right size and mode before any read, whether looked up alone or listed by `find`
/// (which lists each exactly once); `cp -r`, `rsync -a` and `tar` copy it byte
/// for byte; and reading it all a second time costs no request at the boxes.
#[test]
fn pushed_cache_reads_back_through_an_empty_mount() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let store = cluster.dir().join("store");
    let mount = Mount::start(&store, Some(&cluster.config), &[]);
    let originals = common::entries(&cache.db);

    // Sizes and modes are right before anything is read: asked one by one (each a lookup at
    // the owning box; a rule's metadata is fetched by its lookup, with the artifacts it names,
    // as a restoring Dune reads them next) ...
    let mut before_read = Vec::new();
    for (entry, original) in &originals {
        let meta = fs::metadata(mount.path(entry.relative_path()))
            .unwrap_or_else(|e| panic!("stat {entry}: {e}"));
        assert_eq!(
            (meta.len(), meta.permissions().mode() & 0o7777),
            expected_size_and_mode(entry, original),
            "{entry}: size and mode"
        );
        before_read.push(stable_attributes(&meta));
    }
    // ... and as `find` lists them (from the boxes' shard listings), in a second empty mount.
    let listing = Mount::start(&cluster.dir().join("store-2"), Some(&cluster.config), &[]);
    let found = tool(
        Command::new("find")
            .args([".", "(", "-type", "f", "-o", "-type", "l", ")"])
            .args(["-printf", "%s %m %P\\n"])
            .current_dir(&listing.point),
    );
    let mut listed = BTreeMap::new();
    for line in found.stdout.lines() {
        let mut fields = line.splitn(3, ' ');
        let (size, mode, path) = (
            fields.next().unwrap().parse::<u64>().unwrap(),
            u32::from_str_radix(fields.next().unwrap(), 8).unwrap(),
            fields
                .next()
                .unwrap_or_else(|| panic!("find printed {line:?}")),
        );
        if path == ".dune-cachefs-status" {
            assert!(
                listed.insert(None, (size, mode)).is_none(),
                "status file twice"
            );
            continue;
        }
        let entry = Entry::from_relative_path(Path::new(path))
            .unwrap_or_else(|| panic!("find listed {path:?}, which is not a cache entry"));
        assert!(
            listed.insert(Some(entry), (size, mode)).is_none(),
            "find listed {entry} twice"
        );
    }
    assert!(
        listed.remove(&None).is_some(),
        "find did not list the status file"
    );
    let expected: BTreeMap<_, _> = originals
        .iter()
        .map(|(e, original)| (Some(*e), expected_size_and_mode(e, original)))
        .collect();
    assert_eq!(
        listed, expected,
        "find lists each entry once, with its size and mode"
    );
    let metadata_entries = originals
        .iter()
        .filter(|(e, _)| e.kind != EntryKind::File)
        .count() as u64;
    // Each fetched metadata entry prefetches the artifacts it names, as a restoring Dune reads
    // them next: every other fetch is one of those (a prefetch of an artifact already in flight,
    // named by two rules, joins it and is no fetch of its own).
    let (fetches, prefetches) = (mount.counter("fetches"), mount.counter("prefetches"));
    assert!(
        fetches >= metadata_entries && fetches <= metadata_entries + prefetches,
        "{fetches} fetches, {prefetches} prefetches, {metadata_entries} metadata entries: stat \
         fetched an artifact itself, or not each metadata entry"
    );
    assert_eq!(listing.counter("fetches"), 0, "find fetched something");

    // cp -r, rsync -a and tar, each on a mount that has read nothing yet, reproduce files/ and
    // meta/ byte for byte.
    let original_tree = tree(&cache.db, &["files", "meta"]);
    let copies = cluster.dir().join("copies");
    for name in ["cp", "rsync", "tar"] {
        fs::create_dir_all(copies.join(name)).unwrap();
    }
    tool(
        Command::new("cp")
            .arg("-r")
            .args([mount.path("files"), mount.path("meta")])
            .arg(copies.join("cp")),
    );
    assert_same_tree(
        "cp -r",
        &original_tree,
        &tree(&copies.join("cp"), &["files", "meta"]),
    );
    // tar warns "file changed as we read it" (and fails) if an entry's attributes move while it
    // reads it: the first read must not change them.
    let archive = copies.join("cache.tar");
    tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&listing.point)
            .args(["files", "meta"]),
    );
    tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(copies.join("tar")),
    );
    assert_same_tree(
        "tar c",
        &original_tree,
        &tree(&copies.join("tar"), &["files", "meta"]),
    );
    drop(listing);
    let third = Mount::start(&cluster.dir().join("store-3"), Some(&cluster.config), &[]);
    tool(
        Command::new("rsync")
            .arg("-a")
            .args([third.path("files"), third.path("meta")])
            .arg(copies.join("rsync")),
    );
    drop(third);
    let rsync_dir = copies.join("rsync");
    assert_same_tree(
        "rsync -a",
        &original_tree,
        &tree(&rsync_dir, &["files", "meta"]),
    );
    for (entry, original) in &originals {
        if entry.kind == EntryKind::File {
            assert_eq!(
                common::mode(&rsync_dir.join(entry.relative_path())),
                common::mode(original),
                "rsync -a keeps the mode of {entry}"
            );
        }
    }

    // Reading an entry (so fetching it) changed none of its attributes.
    for ((entry, _), before) in originals.iter().zip(&before_read) {
        let meta = fs::metadata(mount.path(entry.relative_path())).unwrap();
        assert_eq!(
            &stable_attributes(&meta),
            before,
            "{entry}: attributes before and after the first read"
        );
    }

    // A second read of every file makes no request at any box.
    common::wait_until("no transfer is in flight", || {
        mount.counter("fetches_in_flight") == 0
    });
    let before = Requests::take(&cluster.boxes);
    for (entry, original) in &originals {
        let out = common::run(
            Command::new("cmp")
                .arg(original)
                .arg(mount.path(entry.relative_path())),
            COMMAND_DEADLINE,
        );
        assert!(out.status.success(), "cmp {entry}: {}", out.describe());
    }
    let made = Requests::take(&cluster.boxes).since(&before);
    assert!(made.is_empty(), "reading again asked the boxes: {made:?}");
    assert_eq!(mount.counter("verification_failures"), 0);
}

/// Reads `path` to the end in 1 MiB steps, comparing with `expected` as it goes.
fn read_and_compare(path: &Path, expected: &[u8]) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        if n == 0 {
            break;
        }
        if expected.get(offset..offset + n) != Some(&buf[..n]) {
            return Err(format!("wrong bytes at {offset}"));
        }
        offset += n;
    }
    if offset != expected.len() {
        return Err(format!("read {offset} of {} bytes", expected.len()));
    }
    Ok(())
}

/// 64 threads opening one cold 64 MiB artifact at once share one transfer: the box answers one
/// `GET`, and every reader gets the right bytes.
#[test]
fn sixty_four_readers_of_one_cold_key_cause_one_get() {
    if !fuse_available() {
        return;
    }
    const READERS: usize = 64;
    let cluster = BoxCluster::start(&[&[("0x00", "0xff")]], "", &[]);
    let mut bytes = vec![0u8; 64 << 20];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("64 MiB of random bytes");
    let entry = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &bytes[..], false).unwrap(),
    };
    let b = &cluster.boxes[0];
    let answer = common::raw_put(
        b.addr(),
        &format!("/{}", entry.relative_path().display()),
        "",
        &bytes,
    );
    assert_eq!(answer.status, 201, "storing {entry}: {}", answer.text());

    let mount = Mount::start(&cluster.dir().join("store"), Some(&cluster.config), &[]);
    let path = mount.path(entry.relative_path());
    let before = Requests::take([b]);
    // Plain threads reporting on a channel, so a hung read fails the test at the deadline
    // (dropping the mount then ends the reads) instead of hanging it.
    let bytes = Arc::new(bytes);
    let start = Arc::new(Barrier::new(READERS));
    let (done, results) = mpsc::channel();
    for reader in 0..READERS {
        let (path, bytes, start, done) = (path.clone(), bytes.clone(), start.clone(), done.clone());
        std::thread::spawn(move || {
            start.wait();
            let _ = done
                .send(read_and_compare(&path, &bytes).map_err(|e| format!("reader {reader}: {e}")));
        });
    }
    let deadline = Instant::now() + WAIT_DEADLINE;
    for _ in 0..READERS {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = results
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{READERS} readers not done within {WAIT_DEADLINE:?}"));
        result.unwrap_or_else(|e| panic!("{e}"));
    }
    let made = Requests::take([b]).since(&before);
    let gets: u64 = made
        .iter()
        .filter(|(outcome, _)| outcome.starts_with("GET "))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(gets, 1, "one transfer for {READERS} readers: {made:?}");
    assert_eq!(made.get("GET 200"), Some(&1), "{made:?}");
}

/// `--reads links`: each artifact the store holds is a symbolic link to its store file, which
/// the kernel follows and reads itself; metadata stays files. Through the links, programs read
/// the same bytes, a touch (Dune 2.9's `utimensat`) changes the store file with no SETATTR sent
/// to the mount, and the status file names a new snapshot at each read (the kernel keeps links'
/// targets in this mode). An artifact trimmed from the store while the kernel kept its link is
/// fetched again from its box through that link.
#[test]
fn links_name_the_store_files_of_held_artifacts() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let store = cluster.dir().join("store");
    // A store is a Dune cache directory: this one holds the whole cache.
    let copied = common::run(
        Command::new("cp").arg("-a").arg(&cache.db).arg(&store),
        COMMAND_DEADLINE,
    );
    assert!(copied.status.success(), "cp: {}", copied.describe());
    let held_bytes: u64 = common::entries(&store)
        .iter()
        .map(|(_, path)| fs::metadata(path).unwrap().len())
        .sum();
    // Bounded to what it holds: nothing is trimmed until something more comes in.
    let bound = held_bytes.to_string();
    let mount = Mount::start(
        &store,
        Some(&cluster.config),
        &[
            "--reads",
            "links",
            "--store-size",
            &bound,
            "--trim-interval",
            "1",
        ],
    );
    let originals = common::entries(&cache.db);
    let read_all = || {
        for (entry, original) in &originals {
            let through = mount.path(entry.relative_path());
            let read = fs::read(&through).unwrap_or_else(|e| panic!("read {entry}: {e}"));
            assert_eq!(read, fs::read(original).unwrap(), "{entry}");
        }
    };
    for (entry, _) in &originals {
        let through = mount.path(entry.relative_path());
        let shown = fs::symlink_metadata(&through).unwrap();
        if entry.kind == EntryKind::File {
            let in_store = fs::canonicalize(store.join(entry.relative_path())).unwrap();
            assert!(shown.file_type().is_symlink(), "{entry} is no link");
            assert_eq!(fs::read_link(&through).unwrap(), in_store, "{entry}");
        } else {
            assert!(shown.file_type().is_file(), "metadata {entry} is no file");
        }
    }
    // A listing says the same as the lookups: links for the artifacts, files for metadata.
    for (entry, _) in &originals {
        let shard = mount.path(entry.relative_path().parent().unwrap());
        let name = entry.key.to_string();
        let listed = fs::read_dir(&shard)
            .unwrap()
            .map(|item| item.unwrap())
            .find(|item| item.file_name().to_str() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{entry} is not listed"));
        let kind = listed.file_type().unwrap();
        let link = entry.kind == EntryKind::File;
        assert_eq!(kind.is_symlink(), link, "{entry} listed as {kind:?}");
    }
    read_all();
    // The kernel keeps the links' targets: reading everything again asks for none.
    let readlinks = || mount.status()["requests"]["readlink"].as_u64().unwrap();
    let before = readlinks();
    read_all();
    // (Reading the status file is a READLINK of its own each time.)
    assert!(
        readlinks() <= before + 1,
        "READLINKs again: {}",
        readlinks() - before
    );
    assert_eq!(
        mount.counter("trimmed_artifacts"),
        0,
        "trimmed at the bound"
    );

    // A touch through a link reaches the store file, not the mount.
    let (touched, _) = common::artifacts(&store).swap_remove(0);
    let touched = Entry {
        kind: EntryKind::File,
        key: touched,
    };
    let store_file = store.join(touched.relative_path());
    let setattrs = mount.status()["requests"]["setattr"].as_u64().unwrap();
    let before = fs::metadata(&store_file).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let touch = common::run(
        Command::new("touch").arg(mount.path(touched.relative_path())),
        COMMAND_DEADLINE,
    );
    assert!(touch.status.success(), "touch: {}", touch.describe());
    assert!(fs::metadata(&store_file).unwrap().modified().unwrap() > before);
    assert_eq!(
        mount.status()["requests"]["setattr"].as_u64().unwrap(),
        setattrs,
        "a touch through a link asked the mount"
    );

    let status = mount.path(".dune-cachefs-status");
    let first = fs::read_link(&status).unwrap();
    assert_ne!(fs::read_link(&status).unwrap(), first, "a stale status");

    // An artifact stored through the mount takes the store past its bound: the trim that
    // follows removes artifacts whose links the kernel keeps. A program holding such a link
    // (here by an `O_PATH` descriptor, which the kernel opens alone) reads it again and gets the
    // store file, fetched back from its box; by its name, each reads back all the same.
    let artifacts: Vec<(Entry, std::path::PathBuf)> = originals
        .iter()
        .filter(|(entry, _)| entry.kind == EntryKind::File)
        .cloned()
        .collect();
    let held: Vec<rustix::fd::OwnedFd> = artifacts
        .iter()
        .map(|(entry, _)| {
            let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW;
            let path = mount.path(entry.relative_path());
            rustix::fs::open(&path, flags, rustix::fs::Mode::empty()).unwrap()
        })
        .collect();
    let bytes = b"one more artifact, past the bound\n".to_vec();
    let key = key::file_key(Era::Md5, &bytes[..], false).unwrap();
    store_artifact(&mount, &key, &bytes);
    common::wait_until("a trim removes kept links' artifacts", || {
        mount.counter("trimmed_artifacts") > 0
    });
    let fetched = mount.counter("fetches");
    let mut gone = 0;
    for ((entry, original), link) in artifacts.iter().zip(&held) {
        let in_store = store.join(entry.relative_path());
        if in_store.exists() {
            continue;
        }
        gone += 1;
        let target = rustix::fs::readlinkat(link, "", Vec::new())
            .unwrap_or_else(|e| panic!("read the held link of {entry}: {e}"));
        let target = std::path::PathBuf::from(target.to_str().unwrap());
        assert_eq!(target, fs::canonicalize(&in_store).unwrap(), "{entry}");
        let read = fs::read(&target).unwrap_or_else(|e| panic!("{entry} fetched again: {e}"));
        assert_eq!(read, fs::read(original).unwrap(), "{entry}");
        let by_name = fs::read(mount.path(entry.relative_path())).unwrap();
        assert_eq!(by_name, read, "{entry} by its name");
    }
    assert!(gone > 0, "the trim removed no artifact whose link was held");
    assert!(
        mount.counter("fetches") >= fetched + gone,
        "{gone} trimmed artifacts, {} fetches",
        mount.counter("fetches") - fetched
    );
}
