//! Boxes that die or lie: a dead box costs its own uncached keys, fast, and nothing else, and
//! comes back on its own; a box serving wrong bytes gets EIO and leaves nothing in the store.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::store::TEMP_DIR;

use crate::common::{self, BoxCluster};
use crate::harness::{errno_of, fuse_available, mount_empty_store, pushed_cluster, Mount};

/// How fast a read of a dead box's key must fail: far below anything a build would call a hang,
/// and the bound the requirement sets.
const DEAD_BOX_BOUND: Duration = Duration::from_secs(2);

/// `cat PATH`, timed.
fn timed_cat(path: &Path) -> (common::Output, Duration) {
    let start = Instant::now();
    let out = common::run(Command::new("cat").arg(path), common::COMMAND_DEADLINE);
    (out, start.elapsed())
}

/// The health state the status file shows for the box at `url`.
fn box_state(mount: &Mount, url: &str) -> serde_json::Value {
    let status = mount.status();
    status["boxes"]
        .as_array()
        .and_then(|boxes| boxes.iter().find(|b| b["url"] == url))
        .unwrap_or_else(|| panic!("no box {url} in the status: {status}"))["health"]
        .clone()
}

/// A killed box: reading one of its uncached keys fails within 2 s and at once the second time;
/// other boxes' keys and cached keys still read; once the box is back and the back-off has
/// passed, its keys read again.
#[test]
fn a_dead_box_fails_fast_costs_only_its_keys_and_comes_back() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let mut cluster = pushed_cluster(&cache.db);
    let mount = mount_empty_store(&cluster, &[]);
    let artifacts: Vec<(Entry, std::path::PathBuf)> = common::entries(&cache.db)
        .into_iter()
        .filter(|(e, _)| e.kind == EntryKind::File)
        .collect();
    let of_box = |i: usize| -> Vec<&(Entry, std::path::PathBuf)> {
        artifacts
            .iter()
            .filter(|(e, _)| cluster.owner_of(&e.key) == i)
            .collect()
    };
    let (dead_keys, live_keys, other_keys) = (of_box(0), of_box(1), of_box(2));
    assert!(
        !live_keys.is_empty() && !other_keys.is_empty(),
        "too few keys"
    );
    let read_back = |(entry, original): &(Entry, std::path::PathBuf)| {
        let bytes = fs::read(mount.path(entry.relative_path()))
            .unwrap_or_else(|e| panic!("reading {entry}: {e}"));
        assert!(
            bytes == fs::read(original).unwrap(),
            "{entry} read back wrong"
        );
    };
    // Three keys of the doomed box: one cached, one whose shard was listed (so the mount knows
    // it and fails in the open, fetching), one it never heard of (it fails in the lookup).
    let cached = dead_keys[0];
    let listed = dead_keys[1];
    let unknown = *dead_keys[2..]
        .iter()
        .find(|(e, _)| e.key.shard() != listed.0.key.shard() && e.key != cached.0.key)
        .expect("keys of the dead box in two shards");
    read_back(cached);
    let shard_dir = mount.path(listed.0.relative_path().parent().unwrap());
    assert!(fs::read_dir(shard_dir).unwrap().count() > 0);

    cluster.boxes[0].kill();
    for (what, (entry, _)) in [("listed", listed), ("unknown", unknown)] {
        let path = mount.path(entry.relative_path());
        let (first, first_took) = timed_cat(&path);
        assert!(
            !first.status.success(),
            "read a dead box's {what} key: {}",
            first.describe()
        );
        assert!(
            first_took < DEAD_BOX_BOUND,
            "the first read of a dead box's {what} key took {first_took:?}"
        );
        let (second, second_took) = timed_cat(&path);
        assert!(!second.status.success(), "{}", second.describe());
        assert!(
            second_took < DEAD_BOX_BOUND
                && (second_took < first_took || second_took < DEAD_BOX_BOUND / 4),
            "the second read of the {what} key should fail at once: {second_took:?} \
             (first: {first_took:?})"
        );
    }
    read_back(cached);
    read_back(live_keys[0]);
    read_back(other_keys[0]);

    cluster.boxes[0].restart();
    // The client probes again once the back-off is over; the status file says how long is left.
    let health = box_state(&mount, &cluster.boxes[0].url());
    let left = health["retry_in_ms"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(left + 300));
    read_back(listed);
    read_back(unknown);
    assert_eq!(box_state(&mount, &cluster.boxes[0].url())["state"], "up");
}

/// The status file reports each box's health: a killed box whose key was just asked for is
/// `down`, with the cause; the others stay `up`.
#[test]
fn the_status_file_shows_a_dead_box_down() {
    if !fuse_available() {
        return;
    }
    let mut cluster = BoxCluster::start(&[&[("0x00", "0x7f")], &[("0x80", "0xff")]], "", &[]);
    let mount = mount_empty_store(&cluster, &[]);
    let (live, dead) = (cluster.boxes[0].url(), cluster.boxes[1].url());
    assert_eq!(box_state(&mount, &dead)["state"], "up");
    cluster.boxes[1].kill();
    let key_of_dead = "files/v4/ff/ff0123456789abcdef0123456789abcd";
    // `touch` looks the key up (a miss: its box is dead), then cannot create it: entries are
    // only made by renaming or linking a verified file into place.
    let touch = common::run(
        Command::new("touch").arg(mount.path(key_of_dead)),
        common::COMMAND_DEADLINE,
    );
    assert!(!touch.status.success(), "touch created an entry");
    let health = box_state(&mount, &dead);
    assert_eq!(health["state"], "down", "{health}");
    assert!(
        health["cause"].as_str().is_some_and(|c| !c.is_empty()),
        "a down box says why: {health}"
    );
    assert_eq!(box_state(&mount, &live)["state"], "up");
}

/// Overwrites the file at `path` (a box's copy of an entry) with `bytes`, keeping its mode.
fn overwrite(path: &Path, bytes: &[u8]) {
    let mode = common::mode(path);
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o200)).unwrap();
    fs::write(path, bytes).unwrap_or_else(|e| panic!("overwrite {path:?}: {e}"));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Asserts that the store holds neither `entry` nor any temp file.
fn assert_nothing_installed(store: &Path, entry: &Entry) {
    assert!(
        !store.join(entry.relative_path()).exists(),
        "{entry} was installed"
    );
    let temp = store.join(TEMP_DIR);
    let left: Vec<_> = fs::read_dir(&temp)
        .map(|items| items.map(|i| i.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
}

/// A box serving wrong bytes of the right length for an artifact, or garbage for a rule's
/// metadata: the open fails with EIO, nothing reaches the store, the failure is counted, and the
/// log names the entry and the box.
#[test]
fn a_lying_box_gets_eio_and_nothing_is_installed() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let entries = common::entries(&cache.db);
    let artifact = entries
        .iter()
        .map(|(e, _)| *e)
        .find(|e| e.kind == EntryKind::File)
        .expect("an artifact");
    let metadata = entries
        .iter()
        .map(|(e, _)| *e)
        .find(|e| e.kind != EntryKind::File)
        .expect("a metadata entry");
    let liar = &cluster.boxes[cluster.owner_of(&artifact.key)];
    let on_box = liar.root().join(artifact.relative_path());
    let mut wrong = fs::read(&on_box).unwrap();
    for byte in &mut wrong {
        *byte ^= 0x5a;
    }
    overwrite(&on_box, &wrong);
    let meta_box = &cluster.boxes[cluster.owner_of(&metadata.key)];
    overwrite(
        &meta_box.root().join(metadata.relative_path()),
        b"((8:metadata)(5:files(3:abc",
    );

    let store = cluster.dir().join("store");
    let mount = Mount::start(&store, Some(&cluster.config), &[]);
    let err = errno_of(
        "reading a lied-about artifact",
        fs::read(mount.path(artifact.relative_path())),
    );
    assert_eq!(err, Errno::IO, "a bad copy is EIO");
    assert_nothing_installed(&store, &artifact);
    // One read can be two fetches: the kernel's read-ahead fails, then it asks for the page
    // the reader needs itself.
    let failures = mount.counter("verification_failures");
    assert!(
        (1..=2).contains(&failures),
        "{failures} verification failures"
    );
    let log = mount.log();
    let names_both = log
        .lines()
        .any(|l| l.contains(&artifact.key.to_string()) && l.contains(&liar.url()));
    assert!(
        names_both,
        "no log line names {artifact} and {}:\n{log}",
        liar.url()
    );

    let err = errno_of(
        "reading garbage metadata",
        fs::read(mount.path(metadata.relative_path())),
    );
    assert_eq!(err, Errno::IO, "garbage metadata is EIO");
    assert_nothing_installed(&store, &metadata);
    // The metadata's lookup fetches it, so its read asks nothing more.
    assert_eq!(mount.counter("verification_failures"), failures + 1);
}
