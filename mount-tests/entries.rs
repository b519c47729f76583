//! Cache entries as files: read-only but `chmod`/`touch`-able (Dune does both), names that cannot
//! be entries answered at once without the network, and extended attributes saying where an
//! entry lives.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use dune_cachefs::dune::key::{file_key, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

use crate::common::{self, COMMAND_DEADLINE};
use crate::harness::{
    errno_of, fuse_available, mount_empty_store, pushed_cluster, write_refusal, Mount, Requests,
};

/// Runs a command and says whether it succeeded.
fn succeeds(command: &mut Command) -> bool {
    common::run(command, COMMAND_DEADLINE).status.success()
}

/// Opening an entry for writing (or its first write) or truncation is EACCES; `chmod` and `touch` succeed and change
/// nothing; `rm` fails. For an artifact and a metadata entry, uncached and cached.
#[test]
fn entries_are_read_only() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let mount = mount_empty_store(&cluster, &[]);
    let entries = common::entries(&cache.db);
    let artifact = entries.iter().find(|(e, _)| e.kind == EntryKind::File);
    let metadata = entries.iter().find(|(e, _)| e.kind != EntryKind::File);
    for (entry, original) in [artifact, metadata].into_iter().flatten() {
        let path = mount.path(entry.relative_path());
        let expected = fs::read(original).unwrap();
        let before = fs::metadata(&path).unwrap();
        for (how, options) in [
            ("O_WRONLY", OpenOptions::new().write(true).clone()),
            ("O_RDWR", OpenOptions::new().read(true).write(true).clone()),
            (
                "O_RDONLY|O_TRUNC",
                OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::TRUNC.bits() as i32)
                    .clone(),
            ),
            (
                "O_WRONLY|O_TRUNC",
                OpenOptions::new().write(true).truncate(true).clone(),
            ),
        ] {
            let err = write_refusal(&format!("open({how}) of {entry}"), &path, &options);
            assert_eq!(err, Errno::ACCESS, "open({how}) of {entry}");
        }
        assert!(
            succeeds(Command::new("chmod").arg("0777").arg(&path)),
            "chmod {entry}"
        );
        assert!(succeeds(Command::new("touch").arg(&path)), "touch {entry}");
        assert!(
            !succeeds(Command::new("rm").arg("-f").arg(&path)),
            "rm {entry}"
        );
        let after = fs::metadata(&path).expect("still there after rm");
        assert_eq!(
            after.permissions().mode(),
            before.permissions().mode(),
            "{entry}"
        );
        assert_eq!(
            after.mtime(),
            before.mtime(),
            "touch changed the mtime of {entry}"
        );
        assert_eq!(after.len(), before.len());
        assert!(fs::read(&path).unwrap() == expected, "{entry} changed");
        // Cached now: the same again, against the store's file.
        assert!(succeeds(Command::new("chmod").arg("0777").arg(&path)));
        assert!(succeeds(Command::new("touch").arg(&path)));
        let options = OpenOptions::new().read(true).write(true).clone();
        let err = write_refusal("open(O_RDWR) of a cached entry", &path, &options);
        assert_eq!(err, Errno::ACCESS);
        // Read-only, executable as the original is (the fixture's cache is built afresh per
        // run, so which artifact comes first, and whether it is executable, varies).
        let readable = if common::mode(original) & 0o111 != 0 {
            0o555
        } else {
            0o444
        };
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            readable,
            "{entry} mode once cached"
        );
        assert!(fs::read(&path).unwrap() == expected);
    }
}

/// Names that cannot be entries (not a key, an uppercase key, a key in the wrong shard) are
/// ENOENT at once, and the boxes are never asked.
#[test]
fn malformed_names_are_absent_without_asking_the_boxes() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let mount = mount_empty_store(&cluster, &[]);
    let (entry, _) = common::entries(&cache.db)
        .into_iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .unwrap();
    let key = entry.key.to_string();
    let shard = &key[..2];
    let other_shard = if shard == "00" { "01" } else { "00" };
    let names = [
        format!("files/v4/{shard}/xyz"),
        format!("files/v4/{shard}/{}", key.to_uppercase()),
        format!("files/v4/{}/{}", shard.to_uppercase(), key.to_uppercase()),
        format!("files/v4/{other_shard}/{key}"),
        format!("meta/v4/{other_shard}/{key}"),
        format!("files/v4/{shard}/{key}x"),
    ];
    let before = Requests::take(&cluster.boxes);
    for name in &names {
        let start = Instant::now();
        assert_eq!(
            errno_of(name, fs::metadata(mount.path(name))),
            Errno::NOENT,
            "stat {name}"
        );
        assert_eq!(
            errno_of(name, fs::read(mount.path(name))),
            Errno::NOENT,
            "open {name}"
        );
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "{name} took {took:?}");
    }
    let made = Requests::take(&cluster.boxes).since(&before);
    assert!(made.is_empty(), "malformed names asked the boxes: {made:?}");
    assert_eq!(mount.counter("entry_lookups"), 0);
}

/// `getfattr -d` of an entry: `user.dune-cachefs.location` is its owning box's URL and
/// `user.dune-cachefs.cached` is `no` until it is read, then `local` and `yes`.
#[test]
fn xattrs_say_where_an_entry_lives() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let mount = mount_empty_store(&cluster, &[]);
    let entries = common::entries(&cache.db);
    let picks: Vec<&(Entry, std::path::PathBuf)> = [
        entries.iter().find(|(e, _)| e.kind == EntryKind::File),
        entries.iter().find(|(e, _)| e.kind != EntryKind::File),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (entry, _) in picks {
        let path = mount.path(entry.relative_path());
        // An artifact stays on its box until read; looking up a rule's metadata fetches it
        // (Dune reads it right after), so it is local from the first look.
        let (location, cached) = if entry.kind == EntryKind::File {
            (cluster.boxes[cluster.owner_of(&entry.key)].url(), "no")
        } else {
            ("local".to_string(), "yes")
        };
        let attrs = getfattr(&path);
        assert_eq!(
            attrs.get("user.dune-cachefs.location"),
            Some(&location),
            "{entry}: {attrs:?}"
        );
        assert_eq!(
            attrs.get("user.dune-cachefs.cached").map(String::as_str),
            Some(cached)
        );
        fs::read(&path).unwrap();
        let attrs = getfattr(&path);
        assert_eq!(
            attrs.get("user.dune-cachefs.location").map(String::as_str),
            Some("local"),
            "{entry}: {attrs:?}"
        );
        assert_eq!(
            attrs.get("user.dune-cachefs.cached").map(String::as_str),
            Some("yes")
        );
    }
}

/// The attributes `getfattr -d` prints for `path` (`name="value"` lines).
fn getfattr(path: &Path) -> BTreeMap<String, String> {
    let out = common::run(
        Command::new("getfattr")
            .arg("-d")
            .arg("--absolute-names")
            .arg(path),
        COMMAND_DEADLINE,
    );
    assert!(out.status.success(), "getfattr: {}", out.describe());
    out.stdout
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            Some((name.to_string(), value.trim_matches('"').to_string()))
        })
        .collect()
}

/// The kernel keeps the listings of the layout's directories: listing a shard again costs the
/// mount no listing. Storing an entry through the mount takes the listing back, so the next `ls`
/// shows the new entry (and its shard, in a kind that did not list it).
#[test]
fn kept_listings_are_taken_back_when_an_entry_is_stored() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("db");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&cache.db)
        .arg(&store)
        .status()
        .unwrap()
        .success());
    let mount = crate::harness::Mount::start(&store, None, &[]);
    let names = |relative: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(mount.path(relative))
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };

    // A new artifact, and a shard of files/v4 that it falls in (which may be new).
    let bytes = format!("kept listings {:?}\n", Instant::now()).into_bytes();
    let key =
        dune_cachefs::dune::key::file_key(dune_cachefs::dune::key::Era::Md5, &bytes[..], false)
            .unwrap();
    let entry = Entry {
        kind: EntryKind::File,
        key,
    };
    let shard = entry.relative_path().parent().unwrap().to_path_buf();
    let kind = shard.parent().unwrap().to_path_buf();
    let shard_name = shard.file_name().unwrap().to_str().unwrap().to_string();

    let kind_before = names(&kind);
    let shard_before = if kind_before.contains(&shard_name) {
        names(&shard)
    } else {
        Vec::new()
    };
    let listed = mount.counter("listings");
    assert_eq!(names(&kind), kind_before);
    if !shard_before.is_empty() {
        assert_eq!(names(&shard), shard_before);
    }
    assert_eq!(
        mount.counter("listings"),
        listed,
        "listing the same directories again made the mount list them"
    );

    fs::create_dir_all(mount.path("temp")).unwrap();
    let scratch = mount.path("temp/new-artifact");
    fs::write(&scratch, &bytes).unwrap();
    fs::rename(&scratch, mount.path(entry.relative_path())).unwrap();

    assert!(
        names(&kind).contains(&shard_name),
        "{shard_name} not listed"
    );
    let mut shard_after = shard_before.clone();
    shard_after.push(key.to_string());
    shard_after.sort();
    assert_eq!(names(&shard), shard_after, "the new entry is not listed");
}

/// `find` reads a kind's shards in order, and each shard's first read waited for the daemon to
/// list it: so while one is read, the mount lists the next two ahead. The next shard's first read
/// uses that listing (the names the store holds), but never one made before something was stored
/// through the mount: an entry stored after the listing ahead was made is listed.
#[test]
fn shards_are_listed_ahead_and_never_stale() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, store) = own_store(dir.path());
    // Contents whose artifacts fall in `shard`, found by trying (one in 256 does).
    let mut tried = 0u32;
    let mut in_shard = |shard: u8| -> Vec<u8> {
        loop {
            tried += 1;
            let bytes = format!("listed ahead {tried}\n").into_bytes();
            if file_key(Era::Md5, &bytes[..], false).unwrap().shard().0 == shard {
                return bytes;
            }
        }
    };
    let mut held: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for shard in [0x10u8, 0x11, 0x12] {
        for _ in 0..2 {
            let entry = install_artifact(&store, &in_shard(shard));
            held.entry(shard).or_default().push(entry.key.to_string());
        }
        held.get_mut(&shard).unwrap().sort();
    }
    let mount = Mount::start(&store_dir, None, &[]);
    let names = |shard: u8| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(mount.path(format!("files/v4/{shard:02x}")))
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let wait_listed_ahead = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while mount.counter("listed_ahead") < count {
            assert!(Instant::now() < deadline, "not {count} shards listed ahead");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Reading shard 10 lists 11 and 12 ahead; 11's first read uses its listing.
    assert_eq!(names(0x10), held[&0x10]);
    wait_listed_ahead(2);
    assert_eq!(mount.counter("listed_ahead_used"), 0);
    assert_eq!(names(0x11), held[&0x11]);
    assert_eq!(mount.counter("listed_ahead_used"), 1);

    // Reading 11 lists 13 ahead (12 was already). An artifact stored through the mount in 12
    // now makes 12's listing ahead stale: 12's first read lists it anew, with the new entry.
    wait_listed_ahead(3);
    let bytes = in_shard(0x12);
    let key = file_key(Era::Md5, &bytes[..], false).unwrap();
    fs::create_dir_all(mount.path("temp")).unwrap();
    fs::write(mount.path("temp/new-artifact"), &bytes).unwrap();
    fs::rename(
        mount.path("temp/new-artifact"),
        mount.path(format!("files/v4/12/{key}")),
    )
    .unwrap();
    let mut after = held[&0x12].clone();
    after.push(key.to_string());
    after.sort();
    assert_eq!(names(0x12), after, "a stale listing made ahead was used");
    assert_eq!(mount.counter("listed_ahead_used"), 1);
}

/// A store of its own in `dir`.
fn own_store(dir: &Path) -> (std::path::PathBuf, dune_cachefs::store::Store) {
    let store_dir = dir.join("store");
    fs::create_dir_all(&store_dir).unwrap();
    let store = dune_cachefs::store::Store::open(&store_dir).unwrap();
    (store_dir, store)
}

/// Installs `bytes` in `store` as an artifact under its MD5-era key.
fn install_artifact(store: &dune_cachefs::store::Store, bytes: &[u8]) -> Entry {
    let entry = Entry {
        kind: EntryKind::File,
        key: file_key(Era::Md5, bytes, false).unwrap(),
    };
    let _ = store.install_bytes(entry, bytes).unwrap();
    entry
}

/// Dune 2.9 sets an artifact's times just before it copies it: the mount hands the kernel the
/// artifact's pages at that SETATTR, so the read that follows asks nothing, and reads the
/// artifact's bytes exactly (a size that is no multiple of a page included). Each `touch`
/// hands them again (the kernel may have dropped them meanwhile). An artifact above the bound
/// (4 MiB) is read as before.
#[test]
fn a_touched_artifact_is_read_from_pages_handed_to_the_kernel() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, store) = own_store(dir.path());
    let install = |bytes: &[u8]| install_artifact(&store, bytes);
    let small_bytes: Vec<u8> = (0..150_001u32).map(|i| (i % 251) as u8).collect();
    let large_bytes: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 241) as u8).collect();
    let small = install(&small_bytes);
    let large = install(&large_bytes);
    let mount = Mount::start(&store_dir, None, &[]);
    let reads = || mount.status()["requests"]["read"].as_u64().expect("reads");
    let handed = || mount.counter("pages_handed");

    let path = mount.path(small.relative_path());
    assert!(succeeds(Command::new("touch").arg(&path)), "touch {small}");
    assert_eq!(handed(), 1, "the touch handed the kernel {small}'s pages");
    let before = reads();
    assert!(
        fs::read(&path).unwrap() == small_bytes,
        "{small} reads back its bytes"
    );
    assert_eq!(
        reads(),
        before,
        "reading {small} after the touch asked nothing"
    );
    assert!(
        succeeds(Command::new("touch").arg(&path)),
        "touch {small} again"
    );
    assert_eq!(
        handed(),
        1,
        "a touch soon after is not handed again (the kernel has them)"
    );
    assert!(
        fs::read(&path).unwrap() == small_bytes,
        "{small} reads back its bytes again"
    );
    assert_eq!(reads(), before, "and again with no READ");

    let path = mount.path(large.relative_path());
    assert!(succeeds(Command::new("touch").arg(&path)), "touch {large}");
    let before = reads();
    assert!(
        fs::read(&path).unwrap() == large_bytes,
        "{large} reads back its bytes"
    );
    assert!(
        reads() > before,
        "{large} is above the bound and read by requests"
    );
    assert_eq!(handed(), 1, "{large} was not handed");
}

/// A program copying a listed shard (`cp -r`) reads its artifacts in the shard's order, and the
/// mount hands the kernel the next ones' pages ahead of it: the copy is exact, it costs far fewer
/// READs than one per artifact (against the same copy with `--no-warming`, which hands none),
/// and a second copy finds the attributes still fresh (a file the kernel READ has its access
/// time marked stale, which costs a GETATTR at the next `stat`).
#[test]
fn a_shard_read_through_is_handed_to_the_kernel_ahead_of_the_reader() {
    use dune_cachefs::mount::through::WINDOW;
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, store) = own_store(dir.path());
    // 1 500 artifacts of 1-9 KiB, about 6 a shard, and 300 more in one shard, read through in
    // several windows.
    let mut installed = 0;
    let mut in_shard = 0;
    for i in 0u32.. {
        if installed >= 1_500 && in_shard >= 300 {
            break;
        }
        let bytes: Vec<u8> = format!("artifact {i} ")
            .bytes()
            .cycle()
            .take(1024 + (i as usize * 37) % 8192)
            .collect();
        let key = file_key(Era::Md5, &bytes[..], false).unwrap();
        let shard_00 = key.to_string().starts_with("00");
        if installed >= 1_500 && !shard_00 {
            continue;
        }
        install_artifact(&store, &bytes);
        installed += 1;
        in_shard += usize::from(shard_00);
    }
    let files = installed as u64;
    let expected = crate::harness::tree(&store_dir, &["files"]);
    let copy = |mount: &Mount, to: &str| {
        let to = dir.path().join(to);
        fs::create_dir(&to).unwrap();
        let mut cp = Command::new("cp");
        cp.arg("-r").arg(mount.path("files")).arg(to.join("files"));
        assert!(succeeds(&mut cp), "cp -r out of the mount");
        let got = crate::harness::tree(&to, &["files"]);
        crate::harness::assert_same_tree("the copy", &expected, &got);
    };
    let requests =
        |mount: &Mount, which: &str| mount.status()["requests"][which].as_u64().unwrap_or(0);

    // Each copy is made twice, the second asking only about what the first READ: a READ marks
    // a file's (or a listing's) access time stale in the kernel, so the next `stat` of it is a
    // GETATTR. (A few pages may still be asked for again: this machine's host may reclaim fresh
    // page cache at any moment.)
    let copy_twice = |mount: &Mount, name: &str| {
        copy(mount, &format!("{name}-1"));
        let reads = requests(mount, "read");
        let asked_before = reads + requests(mount, "getattr");
        copy(mount, &format!("{name}-2"));
        let asked_again = requests(mount, "read") + requests(mount, "getattr") - asked_before;
        (reads, asked_again)
    };
    let plain = Mount::start(&store_dir, None, &["--no-warming"]);
    let (plain_reads, plain_again) = copy_twice(&plain, "plain");
    assert!(
        plain_reads >= files,
        "without warming each artifact is READ ({plain_reads} of {files})"
    );
    drop(plain);

    // The races between the copy and the handing depend on the machine's load: the copies
    // show the gain in full on quiet cores (scripts/bench-mount), and under load only that it
    // asks less.
    let mount = Mount::start(&store_dir, None, &[]);
    let (reads, again) = copy_twice(&mount, "handed");
    assert!(
        reads < plain_reads,
        "the copy READ {reads} artifacts, {plain_reads} without handing"
    );
    assert!(
        mount.counter("pages_handed") + reads >= files,
        "each artifact is handed or read"
    );
    assert!(
        again < plain_again,
        "the second copy asked {again} READs and GETATTRs, {plain_again} without handing"
    );
    drop(mount);

    // Read through slowly, the window is handed in full before the reader gets there: the
    // first read of the big shard (in its listing's order, which is its inode numbers') offers
    // the next artifacts but the marker, which the reader then reads with no request.
    let mount = Mount::start(&store_dir, None, &[]);
    let shard = mount.path("files/v4/00");
    let mut order: Vec<(u64, std::path::PathBuf)> = fs::read_dir(&shard)
        .unwrap()
        .map(|item| {
            let item = item.unwrap();
            (item.metadata().unwrap().ino(), item.path())
        })
        .collect();
    assert!(
        order.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "a shard lists in inode order"
    );
    order.truncate(WINDOW);
    let reads = || requests(&mount, "read");
    let before = reads();
    let read_back = |path: &Path| {
        let bytes = fs::read(path).unwrap();
        assert_eq!(
            bytes,
            fs::read(store_dir.join(path.strip_prefix(mount.path("")).unwrap())).unwrap()
        );
    };
    read_back(&order[0].1);
    assert_eq!(reads(), before + 1, "the first read asks");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount.counter("pages_handed") < (WINDOW - 2) as u64 {
        assert!(Instant::now() < deadline, "the window was never handed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let marker = WINDOW / 2;
    for (position, (_, path)) in order.iter().enumerate().skip(1) {
        if position != marker {
            read_back(path);
        }
    }
    assert_eq!(
        reads(),
        before + 1,
        "the handed window read with no request"
    );
    read_back(&order[marker].1);
    assert_eq!(reads(), before + 2, "the marker asks");
}
