use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::db::STALE_TEMP_AGE;
use super::fsck::Problem;
use super::trim::TrimRules;
use super::*;
use crate::dune::key::{file_key, Era};
use crate::dune::layout::{Entry, EntryKind, MetaVersion};

const META_V4: &[u8] = b"((8:metadata)(5:files(53:.aliases/default/all-0000000000000000000000000000000032:acb63fbb6dc230c163646604a888be96)))";

fn artifact(era: Era, content: &[u8], executable: bool) -> Entry {
    Entry {
        kind: EntryKind::File,
        key: file_key(era, content, executable).unwrap(),
    }
}

fn meta_entry(key: &str) -> Entry {
    Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key: key.parse().unwrap(),
    }
}

/// Metadata naming the given artifacts, in Dune 2.9's shape.
fn metadata_naming(entries: &[Entry]) -> Vec<u8> {
    let mut out = b"((8:metadata)(5:files".to_vec();
    for (i, e) in entries.iter().enumerate() {
        let path = format!("_build/default/t{i}");
        out.extend(format!("({}:{path}32:{})", path.len(), e.key).into_bytes());
    }
    out.extend(b"))");
    out
}

/// Installs an entry that must be new.
fn stored(store: &Store, entry: Entry, bytes: &[u8]) {
    assert_eq!(
        store.install_bytes(entry, bytes).unwrap(),
        InstallOutcome::Stored
    );
}

fn temp_files(store: &Store) -> Vec<String> {
    match fs::read_dir(store.root().join(TEMP_DIR)) {
        Ok(items) => items
            .map(|i| i.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn artifacts_of_both_eras_install_with_their_mode_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for era in Era::ALL {
        for (exe, mode) in [(false, 0o444), (true, 0o555)] {
            let entry = artifact(era, b"content\n", exe);
            assert_eq!(
                store.install_bytes(entry, b"content\n").unwrap(),
                InstallOutcome::Stored
            );
            let local = store.lookup(&entry).unwrap().expect("installed");
            assert_eq!((local.size, local.executable), (8, exe));
            assert_eq!(mode_of(&local.path), mode, "{era} exe={exe}");
            assert_eq!(
                store.install_bytes(entry, b"content\n").unwrap(),
                InstallOutcome::AlreadyPresent
            );
        }
    }
    assert!(temp_files(&store).is_empty());
}

#[test]
fn mismatched_artifact_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = artifact(Era::Blake3, b"content\n", false);
    let err = store.install_bytes(entry, b"content!").unwrap_err();
    assert!(
        matches!(err, StoreError::KeyMismatch { size: 8, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&entry.key.to_string()), "{err}");
    assert_eq!(store.lookup(&entry).unwrap(), None);
    assert!(temp_files(&store).is_empty());
}

#[test]
fn an_executable_bit_contradicting_the_key_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for exe in [false, true] {
        let entry = artifact(Era::Md5, b"content\n", exe);
        let mut pending = store.begin(entry);
        pending.expect_executable(!exe);
        pending.write_chunk(b"content\n").unwrap();
        let err = pending.commit().unwrap_err();
        assert!(
            matches!(err, StoreError::ExecutableMismatch { claimed, .. } if claimed != exe),
            "{err}"
        );
        assert_eq!(store.lookup(&entry).unwrap(), None);
        assert!(temp_files(&store).is_empty());

        let mut pending = store.begin(entry);
        pending.expect_executable(exe);
        pending.write_chunk(b"content\n").unwrap();
        assert_eq!(pending.commit().unwrap(), InstallOutcome::Stored);
    }
}

#[test]
fn abandoned_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = artifact(Era::Md5, b"content\n", false);
    let mut pending = store.begin(entry);
    pending.write_chunk(b"cont").unwrap();
    assert!(
        temp_files(&store).is_empty(),
        "a small entry is held in memory"
    );
    pending.write_chunk(&vec![b'x'; 200 << 10]).unwrap();
    assert_eq!(
        temp_files(&store).len(),
        1,
        "a large one spills to a temp file"
    );
    drop(pending);
    assert!(temp_files(&store).is_empty());
    assert_eq!(store.lookup(&entry).unwrap(), None);
}

#[test]
fn metadata_first_writer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = meta_entry("7abbbc416088cc7e54649169214caf32");
    assert_eq!(
        store.install_bytes(entry, META_V4).unwrap(),
        InstallOutcome::Stored
    );
    assert_eq!(
        store.install_bytes(entry, META_V4).unwrap(),
        InstallOutcome::AlreadyPresent
    );
    let other = metadata_naming(&[artifact(Era::Md5, b"x", false)]);
    match store.install_bytes(entry, &other).unwrap() {
        InstallOutcome::Collision { held, offered } => {
            assert_eq!(held, *blake3::hash(META_V4).as_bytes());
            assert_eq!(offered, *blake3::hash(&other).as_bytes());
        }
        outcome => panic!("expected a collision, got {outcome:?}"),
    }
    assert_eq!(fs::read(store.path_of(&entry)).unwrap(), META_V4);
    assert_eq!(mode_of(&store.path_of(&entry)), 0o644);
    assert!(temp_files(&store).is_empty());
}

#[test]
fn malformed_metadata_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = meta_entry("7abbbc416088cc7e54649169214caf32");
    for bad in [
        &b"((8:metadata)(5:files"[..],
        b"hello",
        b"",
        b"((8:metadata)(5:files(1:a)))",
    ] {
        let err = store.install_bytes(entry, bad).unwrap_err();
        assert!(
            matches!(err, StoreError::BadMetadata { .. }),
            "{bad:?}: {err}"
        );
        assert_eq!(store.lookup(&entry).unwrap(), None);
    }
    assert!(temp_files(&store).is_empty());
}

#[test]
fn concurrent_different_metadata_values_store_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = meta_entry("0b0aaf78d87e75f45e5f7691858b8585");
    let values: Vec<Vec<u8>> = (0..8u8)
        .map(|i| metadata_naming(&[artifact(Era::Md5, &[i], false)]))
        .collect();
    let outcomes: Vec<InstallOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = values
            .iter()
            .map(|v| s.spawn(|| store.install_bytes(entry, v).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = outcomes
        .iter()
        .filter(|o| **o == InstallOutcome::Stored)
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
    let held = fs::read(store.path_of(&entry)).unwrap();
    let winner = outcomes
        .iter()
        .position(|o| *o == InstallOutcome::Stored)
        .unwrap();
    assert_eq!(held, values[winner]);
}

#[test]
fn listing_skips_names_that_are_not_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = artifact(Era::Md5, b"a", false);
    stored(&store, a, b"a");
    let shard_dir = store.path_of(&a).parent().unwrap().to_path_buf();
    fs::write(shard_dir.join("junk"), b"").unwrap();
    fs::write(shard_dir.join("ffffffffffffffffffffffffffffffff"), b"").unwrap();
    assert_eq!(
        store.list_shard(EntryKind::File, a.key.shard()).unwrap(),
        vec![a.key]
    );
    let m = meta_entry("7abbbc416088cc7e54649169214caf32");
    stored(&store, m, META_V4);
    assert_eq!(store.entries().unwrap(), vec![a, m], "artifacts come first");
    assert_eq!(store.total_size().unwrap(), 1 + META_V4.len() as u64);

    // A kind lists the shards holding a key, however many other names a shard holds: far more
    // than one small read of names, before and after the key.
    let shard_number = u8::from_str_radix(&a.key.to_string()[..2], 16).unwrap();
    let junk_dir = shard_dir
        .parent()
        .unwrap()
        .join(format!("{:02x}", shard_number.wrapping_add(1)));
    fs::create_dir(&junk_dir).unwrap();
    for n in 0..400 {
        fs::write(shard_dir.join(format!("junk-{n:04}")), b"").unwrap();
        fs::write(junk_dir.join(format!("junk-{n:04}")), b"").unwrap();
    }
    assert_eq!(
        store.non_empty_shards(EntryKind::File).unwrap(),
        vec![a.key.shard()]
    );
}

#[test]
fn a_shard_is_listed_with_each_entry_s_size_mode_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = artifact(Era::Md5, b"abc", false);
    let x = artifact(Era::Md5, b"abc", true);
    stored(&store, a, b"abc");
    stored(&store, x, b"abc");
    let mut listed = store
        .list_shard_stated(EntryKind::File, a.key.shard())
        .unwrap();
    listed.extend(
        store
            .list_shard_stated(EntryKind::File, x.key.shard())
            .unwrap(),
    );
    listed.sort_by_key(|(key, _)| *key);
    listed.dedup_by_key(|(key, _)| *key);
    let mut expected: Vec<_> = [a, x]
        .iter()
        .map(|e| {
            let meta = fs::metadata(store.path_of(e)).unwrap();
            (
                e.key,
                (
                    3,
                    std::os::unix::fs::MetadataExt::mode(&meta),
                    std::os::unix::fs::MetadataExt::nlink(&meta),
                ),
            )
        })
        .collect();
    expected.sort_by_key(|(key, _)| *key);
    let got: Vec<_> = listed
        .iter()
        .map(|(key, stat)| (*key, (stat.size, stat.mode, stat.nlink)))
        .collect();
    assert_eq!(got, expected);
    assert!(
        got.iter().any(|(_, (_, mode, _))| mode & 0o111 != 0),
        "the executable one"
    );
}

#[test]
fn open_sweeps_only_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join(TEMP_DIR);
    fs::create_dir_all(&temp).unwrap();
    let stale = File::create(temp.join("stale")).unwrap();
    stale
        .set_modified(SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1))
        .unwrap();
    File::create(temp.join("live")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(temp_files(&store), vec!["live".to_string()]);
}

/// A mount or a box owns its store: at its start every temp file is a dead writer's, however
/// young (a `kill -9` a second ago), and is swept; a second owner is refused while the first
/// lives, and readers are not.
#[test]
fn open_exclusive_sweeps_every_temp_file_and_refuses_a_second_owner() {
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join(TEMP_DIR);
    fs::create_dir_all(&temp).unwrap();
    File::create(temp.join("123.0.left-by-a-killed-mount")).unwrap();
    let owner = Store::open_exclusive(dir.path()).unwrap();
    assert_eq!(temp_files(&owner), Vec::<String>::new());

    // Large enough to be written to a temp file as it arrives, not held in memory.
    let mut content = vec![b'x'; 200 << 10];
    content.extend_from_slice(b" written\n");
    let entry = artifact(Era::Md5, &content, false);
    let mut pending = owner.begin(entry);
    pending.write_chunk(&content[..200 << 10]).unwrap();
    let reader = Store::open(dir.path()).expect("fsck and push may open an owned store");
    assert_eq!(temp_files(&reader).len(), 1, "a live writer's file is kept");
    let err = Store::open_exclusive(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");

    pending.write_chunk(&content[200 << 10..]).unwrap();
    assert_eq!(pending.commit().unwrap(), InstallOutcome::Stored);
    drop(owner);
    let next = Store::open_exclusive(dir.path()).expect("free again once the owner is gone");
    assert!(next.lookup(&entry).unwrap().is_some());
}

#[test]
fn open_refuses_a_missing_or_non_directory_root() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path().join("absent")).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
    fs::write(dir.path().join("file"), b"").unwrap();
    assert!(Store::open(dir.path().join("file")).is_err());
}

#[test]
fn trim_removes_unused_artifacts_oldest_first_then_orphaned_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let contents: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100]).collect();
    let entries: Vec<Entry> = contents
        .iter()
        .map(|c| {
            let e = artifact(Era::Md5, c, false);
            stored(&store, e, c);
            std::thread::sleep(Duration::from_millis(20));
            e
        })
        .collect();
    // The oldest one is in use (a build holds a hard link), so it must survive.
    let build = tempfile::tempdir_in(dir.path()).unwrap();
    fs::hard_link(store.path_of(&entries[0]), build.path().join("in-use")).unwrap();
    let needs_1 = meta_entry("11111111111111111111111111111111");
    let needs_3 = meta_entry("33333333333333333333333333333333");
    let needs_1_bytes = metadata_naming(&[entries[1]]);
    let needs_3_bytes = metadata_naming(&[entries[3]]);
    stored(&store, needs_1, &needs_1_bytes);
    stored(&store, needs_3, &needs_3_bytes);
    let meta_size = (needs_1_bytes.len() + needs_3_bytes.len()) as u64;

    let report = store.trim(200 + meta_size, TrimRules::Dune).unwrap();
    assert_eq!(report.size_before, 400 + meta_size);
    assert_eq!(report.removed_artifacts, 2, "{report:?}");
    assert_eq!(report.in_use_artifacts, 1);
    assert_eq!(report.removed_metadata, 1);
    assert_eq!(report.size_after, 200 + needs_3_bytes.len() as u64);
    let left: Vec<bool> = entries
        .iter()
        .map(|e| store.lookup(e).unwrap().is_some())
        .collect();
    assert_eq!(left, vec![true, false, false, true]);
    assert!(store.lookup(&needs_1).unwrap().is_none());
    assert!(store.lookup(&needs_3).unwrap().is_some());
    assert_eq!(store.total_size().unwrap(), report.size_after);
}

/// Sets the last read of `entry` to `seconds` after the epoch.
fn last_read_at(store: &Store, entry: &Entry, seconds: u64) {
    let file = File::open(store.path_of(entry)).unwrap();
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
    file.set_times(fs::FileTimes::new().set_accessed(time))
        .unwrap();
}

#[test]
fn a_box_trim_removes_any_entry_by_last_read_and_keeps_rules_whose_artifacts_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = artifact(Era::Md5, &[b'a'; 100], false);
    let b = artifact(Era::Md5, &[b'b'; 100], false);
    let elsewhere = artifact(Era::Md5, b"on another box", false);
    let needs_a = meta_entry("11111111111111111111111111111111");
    let needs_elsewhere = meta_entry("22222222222222222222222222222222");
    stored(&store, a, &[b'a'; 100]);
    stored(&store, b, &[b'b'; 100]);
    stored(&store, needs_a, &metadata_naming(&[a]));
    stored(&store, needs_elsewhere, &metadata_naming(&[elsewhere]));
    let size = |e: &Entry| store.lookup(e).unwrap().unwrap().size;
    let total = store.total_size().unwrap();

    // Without a bound: nothing goes, the rule naming an artifact this store lacks included.
    let report = store.trim(u64::MAX, TrimRules::CacheBox).unwrap();
    assert_eq!((report.removed_artifacts, report.removed_metadata), (0, 0));
    assert_eq!(store.total_size().unwrap(), total);

    // Read longest ago: that rule, then `a`, then `b`, then the rule naming `a`. Bounded to the
    // last two, the first two go, and the rule naming `a` stays though `a` is gone.
    for (seconds, entry) in [needs_elsewhere, a, b, needs_a].iter().enumerate() {
        last_read_at(&store, entry, 1_000_000 + seconds as u64);
    }
    let report = store
        .trim(size(&b) + size(&needs_a), TrimRules::CacheBox)
        .unwrap();
    assert_eq!((report.removed_artifacts, report.removed_metadata), (1, 1));
    let held = |e: &Entry| store.lookup(e).unwrap().is_some();
    assert_eq!(
        [a, b, needs_a, needs_elsewhere].map(|e| held(&e)),
        [false, true, true, false]
    );
    assert_eq!(report.size_after, store.total_size().unwrap());
}

#[test]
fn fsck_reports_each_bad_entry_by_path_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let good = artifact(Era::Blake3, b"good", false);
    let flipped = artifact(Era::Md5, b"flip me", false);
    let chmodded = artifact(Era::Md5, b"chmod me", false);
    let meta = meta_entry("7abbbc416088cc7e54649169214caf32");
    let bad_meta = meta_entry("8a1b1037a1d15bd7bee4cf300a4423c5");
    stored(&store, good, b"good");
    stored(&store, flipped, b"flip me");
    stored(&store, chmodded, b"chmod me");
    stored(&store, meta, META_V4);
    assert_eq!(store.fsck().unwrap().findings, vec![]);

    let flipped_path = store.path_of(&flipped);
    fs::set_permissions(&flipped_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&flipped_path, b"flip mE").unwrap();
    fs::set_permissions(&flipped_path, fs::Permissions::from_mode(0o444)).unwrap();
    let chmodded_path = store.path_of(&chmodded);
    fs::set_permissions(&chmodded_path, fs::Permissions::from_mode(0o555)).unwrap();
    let bad_meta_path = store.path_of(&bad_meta);
    fs::create_dir_all(bad_meta_path.parent().unwrap()).unwrap();
    fs::write(&bad_meta_path, b"((8:metadata").unwrap();
    let misfiled = store.root().join("files/v4/00").join(good.key.to_string());
    fs::create_dir_all(misfiled.parent().unwrap()).unwrap();
    fs::write(&misfiled, b"good").unwrap();

    let report = store.fsck().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.artifacts, 3);
    assert_eq!(report.metadata, 2);
    assert_eq!(
        report.dangling_metadata, 1,
        "META_V4 names an artifact we lack"
    );
    let mut found: Vec<(&Path, Option<Entry>, &Problem)> = report
        .findings
        .iter()
        .map(|f| (f.path.as_path(), f.entry, &f.problem))
        .collect();
    found.sort_by_key(|f| f.0);
    let mut want: Vec<(&Path, Option<Entry>, &Problem)> = vec![
        (&flipped_path, Some(flipped), &Problem::KeyMismatch),
        (
            &chmodded_path,
            Some(chmodded),
            &Problem::WrongMode {
                key_says_executable: false,
                mode: 0o100555,
            },
        ),
        (&misfiled, None, &Problem::NotAnEntry),
    ];
    want.sort_by_key(|f| f.0);
    assert_eq!(found.len(), 4, "{found:?}");
    let bad_meta_finding = found.iter().position(|f| f.0 == bad_meta_path).unwrap();
    let (_, entry, problem) = found.remove(bad_meta_finding);
    assert_eq!(entry, Some(bad_meta));
    assert!(matches!(problem, Problem::BadMetadata(_)), "{problem:?}");
    assert_eq!(found, want);
}

/// A verified entry, of `len` bytes (small ones are held in memory, large ones in a temp file).
fn verified(store: &Store, len: usize, tag: u8) -> (Entry, Vec<u8>, VerifiedEntry) {
    let mut bytes = vec![tag; len];
    bytes[0] = b'#';
    let (entry, verified) = verified_of(store, &bytes);
    (entry, bytes, verified)
}

/// `bytes` as a verified artifact entry.
fn verified_of(store: &Store, bytes: &[u8]) -> (Entry, VerifiedEntry) {
    let entry = artifact(Era::Blake3, bytes, false);
    let mut pending = store.begin(entry);
    pending.write_chunk(bytes).unwrap();
    (entry, pending.verify().unwrap())
}

/// After `finish`: nothing waits, every entry landed is in the store byte for byte, no temp file
/// is left and the store passes fsck.
fn assert_all_settled(landing: &landing::Landing, store: &Store, landed: &[(Entry, Vec<u8>)]) {
    assert_eq!(landing.waiting(), 0);
    for (entry, bytes) in landed {
        assert_eq!(&fs::read(store.path_of(entry)).unwrap(), bytes);
    }
    assert!(temp_files(store).is_empty());
    assert!(store.fsck().unwrap().is_clean());
}

#[test]
fn a_verified_entry_reads_before_and_after_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for len in [100, 300 << 10] {
        let (entry, bytes, verified) = verified(&store, len, b'v');
        assert_eq!(
            store.lookup(&entry).unwrap(),
            None,
            "no name before the commit"
        );
        let read_all = |file: File| {
            let mut out = vec![0; len + 1];
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut out, 0).unwrap();
            out.truncate(n);
            out
        };
        assert_eq!(read_all(verified.open().unwrap()), bytes);
        assert_eq!(verified.read().unwrap(), bytes);
        let stat = verified.stat();
        assert_eq!((stat.size, stat.mode & 0o777), (len as u64, 0o444));
        let open_before = verified.open().unwrap();
        assert_eq!(verified.commit().unwrap(), InstallOutcome::Stored);
        assert_eq!(
            fs::metadata(store.path_of(&entry)).unwrap().nlink(),
            1,
            "named, the entry has one name while its verified bytes are still held (a mount \
             reports the link count; it must not change under a reader)"
        );
        assert_eq!(read_all(verified.open().unwrap()), bytes);
        assert_eq!(verified.read().unwrap(), bytes);
        assert_eq!(fs::read(store.path_of(&entry)).unwrap(), bytes);
        drop(verified);
        assert!(temp_files(&store).is_empty());
        assert_eq!(
            read_all(open_before),
            bytes,
            "a file opened before the commit reads the same after it, and after the temp is gone"
        );
    }
}

/// `landing.read_at` reads `entry` as `bytes`: whole, a window inside, one past the end.
fn assert_reads_at(landing: &landing::Landing, entry: &Entry, bytes: &[u8]) {
    let len = bytes.len() as u32;
    assert_eq!(landing.read_at(entry, 0, len + 10).unwrap(), bytes);
    assert_eq!(landing.read_at(entry, 100, 50).unwrap(), &bytes[100..150]);
    assert_eq!(landing.read_at(entry, 10, len).unwrap(), &bytes[10..]);
    assert!(landing.read_at(entry, len as u64, 10).unwrap().is_empty());
}

#[test]
fn a_window_is_cut_at_the_end() {
    let bytes = b"0123456789";
    assert_eq!(landing::window(bytes, 0, 4), b"0123");
    assert_eq!(landing::window(bytes, 8, 4), b"89");
    assert_eq!(landing::window(bytes, 10, 4), b"");
    assert_eq!(landing::window(bytes, u64::MAX, 4), b"");
    assert_eq!(landing::window(bytes, 3, u32::MAX), b"3456789");
}

#[test]
fn a_read_at_is_short_only_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, vec![7u8; 300_000]).unwrap();
    let file = File::open(&path).unwrap();
    assert_eq!(
        landing::read_file_at(&file, 0, 200_000).unwrap().len(),
        200_000
    );
    assert_eq!(
        landing::read_file_at(&file, 200_000, 200_000)
            .unwrap()
            .len(),
        100_000
    );
    assert!(landing::read_file_at(&file, 400_000, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn landing_serves_entries_at_once_and_settles_them_all_by_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // No settler threads: every entry is still waiting when `finish` is called.
    let landing = landing::Landing::start_with(store.clone(), 0);
    let mut landed = Vec::new();
    for i in 0..50 {
        let len = if i % 10 == 0 { 200 << 10 } else { 1000 + i };
        let (entry, bytes, verified) = verified(&store, len, i as u8);
        landing.land(verified).unwrap();
        assert!(landing.holds(&entry));
        assert_eq!(landing.stat(&entry).unwrap().size, len as u64);
        let mut read = Vec::new();
        io::Read::read_to_end(&mut landing.open(&entry).unwrap(), &mut read).unwrap();
        assert_eq!(read, bytes, "entry {i} reads while landing or settled");
        assert_reads_at(&landing, &entry, &bytes);
        landed.push((entry, bytes));
    }
    assert_eq!(landing.waiting(), 50);
    assert!(
        temp_files(&store).len() == 5,
        "the five large entries' temp files"
    );
    assert_eq!(
        store.lookup(&landed[1].0).unwrap(),
        None,
        "named before finish"
    );
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let telling = told.clone();
    landing.on_artifacts_named(move |named, on| {
        assert_eq!(on, landing::ToldOn::Settler, "finish settles as a settler");
        telling.lock().unwrap().extend(named)
    });
    landing.finish();
    assert_all_settled(&landing, &store, &landed);
    for (entry, bytes) in &landed {
        assert_reads_at(&landing, entry, bytes);
    }
    let mut told = told.lock().unwrap().clone();
    told.sort();
    let mut artifacts: Vec<Entry> = landed.iter().map(|(entry, _)| *entry).collect();
    artifacts.sort();
    assert_eq!(told, artifacts, "each artifact named is told, once");

    // After finish, an entry is settled before `land` returns.
    let (entry, bytes, verified) = verified(&store, 10, b'z');
    landing.land(verified).unwrap();
    assert_eq!(fs::read(store.path_of(&entry)).unwrap(), bytes);
}

#[test]
fn landing_shows_artifacts_by_temp_names_that_outlive_their_settling() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let landing = landing::Landing::start_with(store.clone(), 0);
    landing.keep_temp_names();
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let telling = told.clone();
    landing.on_artifacts_named(move |named, on| telling.lock().unwrap().push((named, on)));
    let told_of = |n: usize| told.lock().unwrap()[n].clone();
    // A small artifact, which would wait in memory, is written to its temp file as it lands.
    let (small, small_bytes, verified_small) = verified(&store, 1000, b's');
    let (large, large_bytes, verified_large) = verified(&store, 200 << 10, b'l');
    landing.land(verified_small).unwrap();
    landing.land(verified_large).unwrap();
    let temp_of = |entry: &Entry| landing.temp_name(entry).expect("a temp name while landing");
    let (small_temp, large_temp) = (temp_of(&small), temp_of(&large));
    assert_eq!(fs::read(&small_temp).unwrap(), small_bytes);
    assert_eq!(fs::read(&large_temp).unwrap(), large_bytes);
    assert_eq!(
        fs::metadata(&small_temp).unwrap().permissions().mode() & 0o777,
        0o444,
        "as Dune writes an artifact"
    );
    assert_eq!(store.lookup(&small).unwrap(), None, "not named yet");

    // Settled: named in the store, told, and the temp name still there (a second name of the
    // same file), though no longer shown.
    landing.settle_now(&small);
    assert_eq!(fs::read(store.path_of(&small)).unwrap(), small_bytes);
    // Told as a reader's settling (`settle_now` answers READLINKs): it must not wait.
    assert_eq!(told_of(0), (vec![small], landing::ToldOn::Reader));
    assert_eq!(
        landing.temp_name(&small),
        None,
        "settled: shown by its name"
    );
    assert_eq!(
        fs::read(&small_temp).unwrap(),
        small_bytes,
        "the temp name lingers"
    );
    assert_eq!(fs::metadata(store.path_of(&small)).unwrap().nlink(), 2);

    // One LINGER on, the reader's side is told again and the name stays; one more, it goes.
    let later = std::time::Instant::now() + landing::LINGER;
    landing.let_temp_names_go(Some(later));
    assert_eq!(
        told_of(1),
        (vec![small], landing::ToldOn::Settler),
        "told again"
    );
    assert!(small_temp.exists(), "still there once told again");
    landing.let_temp_names_go(Some(later + landing::LINGER));
    assert!(!small_temp.exists(), "gone one LINGER after");
    assert_eq!(told.lock().unwrap().len(), 2, "not told a third time");
    assert_eq!(fs::read(store.path_of(&small)).unwrap(), small_bytes);

    // Finishing settles the rest, and every temp name goes.
    landing.finish();
    assert_eq!(fs::read(store.path_of(&large)).unwrap(), large_bytes);
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
    assert_eq!(fs::metadata(store.path_of(&large)).unwrap().nlink(), 1);
    // Without temp names (the default), a small artifact waits in memory: no temp file.
    let plain = landing::Landing::start_with(store.clone(), 0);
    let (entry, bytes, verified) = verified(&store, 1000, b'p');
    plain.land(verified).unwrap();
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
    assert_eq!(plain.temp_name(&entry), None);
    plain.finish();
    assert_eq!(fs::read(store.path_of(&entry)).unwrap(), bytes);
}

#[test]
fn landing_writes_small_entries_out_past_its_memory_budget_and_still_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let landing = landing::Landing::start_with(store.clone(), 0);
    // Entries of 100 KiB are held in memory (under SPILL_AT) until the budget is used up.
    let len = 100 << 10;
    let fit = (landing::MAX_WAITING_IN_MEMORY / len as u64) as usize;
    let landed: Vec<(Entry, Vec<u8>)> = (0..fit + 20)
        .map(|i| {
            let mut bytes = vec![b'#'; len];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let (entry, verified) = verified_of(&store, &bytes);
            landing.land(verified).unwrap();
            (entry, bytes)
        })
        .collect();
    assert_eq!(landing.waiting(), fit + 20, "none was settled: all wait");
    assert_eq!(
        temp_files(&store).len(),
        20,
        "the entries past the budget, in their temp files"
    );
    assert_eq!(store.lookup(&landed[fit + 10].0).unwrap(), None);
    for (entry, bytes) in [&landed[0], &landed[fit + 10]] {
        assert_reads_at(&landing, entry, bytes);
        assert_eq!(
            landing.stat(entry).unwrap().mode & 0o777,
            0o444,
            "as Dune writes an artifact"
        );
    }
    landing.finish();
    assert_all_settled(&landing, &store, &landed);
}

#[test]
fn landing_settles_once_entries_pause_or_wait_too_long_or_crowd() {
    use landing::{settles_now, CROWDED, DEFER_AT_MOST, QUIET};
    let start = std::time::Instant::now();
    let at = |d: std::time::Duration| start + d;
    let ms = std::time::Duration::from_millis;
    // Still landing: wait.
    assert!(!settles_now(
        at(ms(100)),
        start,
        Some(at(ms(90))),
        10,
        false
    ));
    assert!(!settles_now(at(QUIET), start, Some(at(ms(1))), 10, false));
    // A pause.
    assert!(settles_now(
        at(QUIET + ms(1)),
        start,
        Some(start),
        10,
        false
    ));
    assert!(settles_now(at(ms(5)), start, None, 10, false));
    // Landing without a pause, but the entry has waited long enough.
    assert!(settles_now(
        at(DEFER_AT_MOST),
        start,
        Some(at(DEFER_AT_MOST)),
        10,
        false
    ));
    // Crowded, or finishing.
    assert!(settles_now(
        at(ms(1)),
        start,
        Some(at(ms(1))),
        CROWDED,
        false
    ));
    assert!(!settles_now(
        at(ms(1)),
        start,
        Some(at(ms(1))),
        CROWDED - 1,
        false
    ));
    assert!(settles_now(at(ms(1)), start, Some(at(ms(1))), 1, true));
    // A clock read before the last landing (another thread's) counts as no time passed.
    assert!(!settles_now(start, start, Some(at(ms(5))), 1, false));
}

#[test]
fn landing_settler_threads_settle_everything_and_finish_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let landing = landing::Landing::start(store.clone());
    let landed: Vec<(Entry, Vec<u8>)> = (0..600)
        .map(|i| {
            let (entry, bytes, verified) = verified(&store, 500 + i, (i % 250) as u8);
            landing.land(verified).unwrap();
            (entry, bytes)
        })
        .collect();
    settlers_yield_the_cpu();
    landing.finish();
    assert_all_settled(&landing, &store, &landed);
}

/// Every settler thread of this process runs below the default priority, so settling
/// takes no CPU from readers; waits a little for threads just started to set it.
fn settlers_yield_the_cpu() {
    let settlers = || -> Vec<(String, i64)> {
        let mut found = Vec::new();
        for task in fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let (Ok(comm), Ok(stat)) = (
                fs::read_to_string(task.join("comm")),
                fs::read_to_string(task.join("stat")),
            ) else {
                continue; // ended meanwhile
            };
            if comm.starts_with("settle-") {
                // Field 19 of stat is the nice value; the fields after the ")" of the name
                // start at field 3.
                let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                let nice = after_name.split(' ').nth(16).unwrap().parse().unwrap();
                found.push((comm.trim().to_string(), nice));
            }
        }
        found
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = settlers();
        let all_low = found
            .iter()
            .all(|(_, nice)| *nice == i64::from(landing::settlers_nice()));
        if found.len() >= 2 && all_low {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "settler threads and their nice values: {found:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_landing_metadata_value_is_what_the_store_keeps_when_another_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let landing = landing::Landing::start_with(store.clone(), 0);
    let artifact = artifact(Era::Md5, b"out\n", false);
    let first = metadata_naming(&[artifact]);
    let other = metadata_naming(&[artifact, artifact]);
    let entry = meta_entry("0123456789abcdef0123456789abcdef");
    let mut pending = store.begin(entry);
    pending.write_chunk(&first).unwrap();
    landing.land(pending.verify().unwrap()).unwrap();

    // What the mount does before storing a value Dune wrote: the landing copy is named first.
    landing.settle_now(&entry);
    assert!(matches!(
        store.install_bytes(entry, &other).unwrap(),
        InstallOutcome::Collision { .. }
    ));
    assert_eq!(fs::read(store.path_of(&entry)).unwrap(), first);
    let mut read = Vec::new();
    io::Read::read_to_end(&mut landing.open(&entry).unwrap(), &mut read).unwrap();
    assert_eq!(read, first, "readers get the value the store keeps");
    assert_eq!(landing.waiting(), 0);
}

#[test]
fn artifacts_are_hashed_in_the_last_era_first_and_in_the_other_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.era_guess.get(), None, "a new store guesses nothing");
    // Small (held in memory) and large (spilled to a temp file) bytes, each era after the
    // other, so every guess after the first is wrong once and must fall back.
    let large = vec![0x5a; 300 * 1024];
    let cases: [(Era, &[u8], bool); 5] = [
        (Era::Md5, b"first", false),
        (Era::Md5, b"second", true),
        (Era::Blake3, b"third", false),
        (Era::Md5, &large, true),
        (Era::Blake3, &large, false),
    ];
    for (era, bytes, exe) in cases {
        let entry = artifact(era, bytes, exe);
        let mut pending = store.begin(entry);
        pending.write_chunk(bytes).unwrap();
        let verified = pending
            .verify()
            .unwrap_or_else(|e| panic!("{era} {exe}: {e}"));
        assert_eq!(verified.stat().mode & 0o111 != 0, exe, "{era} {exe}");
        assert_eq!(
            store.era_guess.get(),
            Some(era),
            "the guess follows the last match"
        );
    }
    // Bytes that match neither era are refused after both were tried.
    let entry = artifact(Era::Md5, b"claimed", false);
    let mut pending = store.begin(entry);
    pending.write_chunk(b"not that").unwrap();
    assert!(matches!(
        pending.verify(),
        Err(StoreError::KeyMismatch { .. })
    ));
    assert_eq!(
        store.era_guess.get(),
        Some(Era::Blake3),
        "a mismatch changes no guess"
    );
}

/// A held entry whose pages the kernel dropped is on the disk only, until it is read; an entry
/// not held is not. (Where the filesystem keeps every page in memory, a tmpfs, nothing is
/// dropped and only the second half can be checked.)
#[test]
fn an_entry_is_on_the_disk_only_once_its_pages_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let landing = landing::Landing::start_with(store.clone(), 0);
    let bytes = vec![7u8; 64 << 10];
    let entry = artifact(Era::Md5, &bytes, false);
    stored(&store, entry, &bytes);
    let file = File::open(store.path_of(&entry)).unwrap();
    file.sync_all().unwrap();
    // TMPFS_MAGIC, from linux/magic.h.
    let in_memory = rustix::fs::fstatfs(&file).unwrap().f_type as i64 == 0x0102_1994;
    if !in_memory {
        // The advice is best effort: a page the kernel still references at that moment (in a
        // per-CPU batch, say) stays. It is asked again until the pages go, seen in at most 50
        // tries; the entry must then be seen as on the disk only.
        let dropped = (0..50).any(|_| {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            landing.on_disk_only(&entry) || {
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        });
        assert!(dropped, "dropped");
        landing.will_need(&entry);
    }
    assert_eq!(fs::read(store.path_of(&entry)).unwrap(), bytes);
    assert!(!landing.on_disk_only(&entry), "read back");
    let absent = artifact(Era::Md5, b"not held", false);
    assert!(!landing.on_disk_only(&absent), "not held");
    landing.finish();
}
