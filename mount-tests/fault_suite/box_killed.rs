//! A box killed (SIGKILL) in the middle of a transfer, both ways. A throttling relay between the
//! mount and the box keeps the transfer running while the test watches it start and kills the
//! box: no timing luck involved.

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::{
    assert_sound, assert_uploaded, pseudo_random, put_on_box, random_artifact, read_within, report,
    store_through, temp_files, wait_for_temp_file,
};
use crate::common::relay::{Direction, Relay};
use crate::common::{self, BoxProcess, WAIT_DEADLINE};
use crate::harness::{errno_of, fuse_available, Mount};

/// The speed of a throttled transfer: a 64 MiB one takes 16 s, far longer than the test needs
/// to see it start and act.
const SLOW: u64 = 4 << 20;

/// A box behind a relay, and a one-node config naming the relay.
fn relayed_box(dir: &Path) -> (BoxProcess, Relay, std::path::PathBuf) {
    let b = BoxProcess::start_anywhere(&dir.join("box"), &[]);
    let relay = Relay::start(b.addr());
    let config = dir.join("cluster.sexp");
    common::write_config(&config, &[(&relay.url(), &[("0x00", "0xff")])], "");
    (b, relay, config)
}

/// Reads `path` until it succeeds, each failure being EIO (the client fails fast while it
/// holds the box down, then probes it again): the box is back for the mount.
fn read_once_back(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        match read_within(path, WAIT_DEADLINE).0 {
            Ok(bytes) => return bytes,
            Err(e) => {
                assert_eq!(
                    errno_of("reading", Err::<(), _>(e)),
                    Errno::IO,
                    "while the box comes back"
                );
                assert!(Instant::now() < deadline, "the box never came back");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// GET: the box dies while a 64 MiB entry streams into the mount. The open fails with EIO and
/// nothing is installed; once the box is back, the read works.
#[test]
fn a_box_killed_mid_get_is_eio_with_nothing_installed_and_reads_once_restarted() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut b, relay, config) = relayed_box(dir.path());
    let (entry, bytes) = random_artifact(64 << 20);
    put_on_box(&b, &entry, &bytes);
    let store = dir.path().join("store");
    let mount = Mount::start(&store, Some(&config), &[]);
    let path = mount.path(entry.relative_path());

    relay.throttle(Direction::Down, SLOW);
    let (done, result) = mpsc::channel();
    let reading = path.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        let _ = done.send((fs::read(&reading), start.elapsed()));
    });
    wait_for_temp_file(
        &store,
        1 << 20,
        "the mount has the first MiB of the transfer",
    );
    b.kill();
    let (read, took) = result
        .recv_timeout(WAIT_DEADLINE)
        .expect("the read ends once the box is dead");
    assert_eq!(
        errno_of("reading from a box killed mid-transfer", read),
        Errno::IO
    );
    assert!(!store.join(entry.relative_path()).exists(), "installed");
    assert_eq!(temp_files(&store), Vec::<std::path::PathBuf>::new());

    relay.unthrottle();
    b.restart();
    assert!(
        read_once_back(&path) == bytes,
        "wrong bytes after the restart"
    );
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        "box killed mid-GET (64 MiB)",
        "EIO, nothing installed; read works after restart",
        &format!("EIO after {took:.1?}, nothing installed, read back byte for byte after restart"),
    );
}

/// PUT: the box dies while the mount's uploader sends it a 32 MiB entry Dune stored. The box
/// keeps no partial entry (its temp file is swept when it starts again), and the upload
/// completes once it is back.
#[test]
fn a_box_killed_mid_upload_keeps_no_partial_entry_and_gets_it_once_restarted() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut b, relay, config) = relayed_box(dir.path());
    let store = dir.path().join("store");
    let mount = Mount::start(&store, Some(&config), &[]);

    relay.throttle(Direction::Up, SLOW);
    let bytes = pseudo_random(0x5eed, 32 << 20);
    let entry = store_through(&mount, &bytes).expect("storing through the mount");
    let partial = wait_for_temp_file(b.root(), 1 << 20, "the box has the first MiB of the upload");
    b.kill();
    assert!(
        partial.exists(),
        "the killed box's temp file is there until it restarts"
    );
    assert!(
        common::entries(b.root()).is_empty(),
        "the killed box shows a partial entry"
    );
    let pending = mount.status()["uploads"]["pending"].as_u64();
    assert_eq!(pending, Some(1), "the upload is still pending");

    relay.unthrottle();
    b.restart();
    assert!(
        !partial.exists(),
        "the restarted box did not sweep {partial:?}"
    );
    let start = Instant::now();
    assert_uploaded(&mount, &[(entry, bytes)], b.root());
    let took = start.elapsed();
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        "box killed mid-PUT (32 MiB upload)",
        "no partial entry on the box; upload completes after restart",
        &format!(
            "partial temp file swept at restart, upload done {took:.1?} after it ({} retries)",
            mount.status()["uploads"]["retries"]
        ),
    );
}
