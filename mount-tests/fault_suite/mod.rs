//! The fault-injection suite: boxes killed in the middle of a transfer, boxes that lie about
//! lengths or stall, a full disk under the store, a mount killed with work in flight, hostile
//! clients hammering a box, and the write path's own hazards (a metadata value replaced under
//! the mount, an upload that cannot be recorded, a box refusing an upload for good). Run it alone with `cargo test --test mount fault` (which also runs
//! `faults.rs`, the dead and lying boxes).
//!
//! Every scenario asserts its expected outcome, then the same aftermath: `dune-cachefs fsck` of
//! every store and box passes, no temp file is left in any of them (a killed process's are
//! swept when it starts again, and checked to be), every upload reached its box, and nothing
//! waited without a bound. Each scenario prints one `FAULT-SUITE | scenario | expected | result`
//! line (see it with `--nocapture`): the table of the suite's outcomes.

mod box_killed;
mod disk_full;
mod fake_box;
mod hostile_requests;
mod misbehaving_box;
mod mount_killed;
mod slow_box;
mod write_path;

use std::fs;
use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::upload::background::JOURNAL_DIR;
use rustix::io::Errno;

use crate::common::{self, temp_files, BoxProcess, WAIT_DEADLINE};
use crate::harness::Mount;

/// The symbolic name of the errnos the suite expects, for its table.
fn errno_name(errno: Errno) -> String {
    match errno {
        Errno::IO => "EIO".into(),
        Errno::NOENT => "ENOENT".into(),
        Errno::NOSPC => "ENOSPC".into(),
        other => format!("errno {}", other.raw_os_error()),
    }
}

/// Prints one row of the suite's table.
fn report(scenario: &str, expected: &str, result: &str) {
    eprintln!("FAULT-SUITE | {scenario} | {expected} | {result}");
}

/// `size` reproducible pseudo-random bytes (xorshift from `seed`): cheap, and different for
/// every seed, so each gives a new artifact key.
fn pseudo_random(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// An artifact entry for `bytes` (MD5 era, not executable).
fn artifact_of(bytes: &[u8]) -> Entry {
    Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, bytes, false).expect("hashing bytes in memory"),
    }
}

/// A new artifact of `size` bytes whose key starts with a byte in `first`: one owned by the box
/// holding that range. Seeds are taken from a counter, so no two calls make the same one.
fn artifact_in(first: RangeInclusive<u8>, size: usize) -> (Entry, Vec<u8>) {
    static SEEDS: AtomicU64 = AtomicU64::new(1);
    loop {
        let seed = SEEDS.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 32;
        let bytes = pseudo_random(seed, size);
        let entry = artifact_of(&bytes);
        if first.contains(&entry.key.as_bytes()[0]) {
            return (entry, bytes);
        }
    }
}

/// Puts an artifact on a real box, as a `push` would.
fn put_on_box(b: &BoxProcess, entry: &Entry, bytes: &[u8]) {
    let path = format!("/{}", entry.relative_path().display());
    let answer = common::raw_put(b.addr(), &path, "", bytes);
    assert_eq!(answer.status, 201, "storing {entry}: {}", answer.text());
}

/// Stores `bytes` through the mount the way Dune does: a scratch file in the cache's `temp/`,
/// renamed into `files/v4/<hh>/<key>`. On failure the scratch file is removed (Dune does too),
/// and the error is the first one met, with the step that met it.
pub(crate) fn store_through(
    mount: &Mount,
    bytes: &[u8],
) -> Result<Entry, (&'static str, io::Error)> {
    let entry = artifact_of(bytes);
    store_entry_through(mount, &entry, bytes).map(|()| entry)
}

/// Stores `bytes` as `entry` (an artifact or a rule's metadata) through the mount, as
/// [`store_through`] does.
fn store_entry_through(
    mount: &Mount,
    entry: &Entry,
    bytes: &[u8],
) -> Result<(), (&'static str, io::Error)> {
    static NAMES: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(mount.path("temp")).map_err(|e| ("mkdir", e))?;
    let scratch = mount.path(format!(
        "temp/scratch-{}",
        NAMES.fetch_add(1, Ordering::Relaxed)
    ));
    let stored = fs::write(&scratch, bytes)
        .map_err(|e| ("write", e))
        .and_then(|()| {
            fs::rename(&scratch, mount.path(entry.relative_path())).map_err(|e| ("rename", e))
        });
    if stored.is_err() {
        let _ = fs::remove_file(&scratch);
    }
    stored
}

/// Reads `path` on another thread, so that a hung read fails the test after `limit` instead of
/// hanging it. The result, and how long it took.
fn read_within(path: &Path, limit: Duration) -> (io::Result<Vec<u8>>, Duration) {
    let (done, result) = mpsc::channel();
    let reading = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(fs::read(&reading));
    });
    let read = result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("reading {path:?} hung for more than {limit:?}"));
    (read, start.elapsed())
}

/// The aftermath every scenario must leave: each root (store or box) passes `fsck` and holds
/// no temp file, once `mount` (if the store is a live mount's) has settled what it fetched
/// (fetched entries wait in their temp files until fetching pauses).
fn assert_sound(mount: Option<&Mount>, roots: &[&Path]) {
    if let Some(mount) = mount {
        mount.wait_settled();
    }
    for root in roots {
        let fsck = common::dune_cachefs(&["fsck".as_ref(), root.as_os_str()]);
        assert!(fsck.status.success(), "fsck {root:?}: {}", fsck.describe());
        let left = temp_files(root);
        assert!(left.is_empty(), "temp files left in {root:?}: {left:?}");
    }
}

/// No upload lost: waits (bounded) until the mount has nothing pending, then checks that its
/// journal is empty and that the box at `box_root` holds every one of `stored`, byte for byte.
fn assert_uploaded(mount: &Mount, stored: &[(Entry, Vec<u8>)], box_root: &Path) {
    common::wait_until("the mount has no pending upload", || {
        mount.status()["uploads"]["pending"].as_u64() == Some(0)
    });
    let journal: Vec<_> = fs::read_dir(mount.store.join(JOURNAL_DIR))
        .map(|items| items.map(|i| i.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(journal.is_empty(), "upload records left: {journal:?}");
    for (entry, bytes) in stored {
        let on_box = fs::read(box_root.join(entry.relative_path()))
            .unwrap_or_else(|e| panic!("{entry} is not on its box: {e}"));
        assert!(on_box == *bytes, "{entry} differs on its box");
    }
}

/// `size` bytes from `/dev/urandom`, and their entry: for entries too big to search a key for.
fn random_artifact(size: usize) -> (Entry, Vec<u8>) {
    let mut bytes = vec![0u8; size];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("random bytes");
    (artifact_of(&bytes), bytes)
}

/// Waits until `path` exists and holds at least `size` bytes, polling every few milliseconds
/// (a transfer is being watched), or panics naming `what` after [`WAIT_DEADLINE`].
fn wait_for_temp_file(root: &Path, size: u64, what: &str) -> PathBuf {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let grown = temp_files(root)
            .into_iter()
            .find(|p| fs::metadata(p).is_ok_and(|m| m.len() >= size));
        if let Some(path) = grown {
            return path;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
