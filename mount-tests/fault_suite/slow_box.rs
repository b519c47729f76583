//! A box that is slow but alive: it answers every request correctly, 5 s late, so it passes
//! every health check. With far more reads of its keys than the mount has workers for it, the
//! queue for it stays bounded and a read that waited past the deadline is answered (EIO) instead
//! of waiting without end; reads of the other box's keys go on meanwhile, and the mount's memory
//! stays flat.

use std::fs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dune_cachefs::dune::layout::Entry;

use super::fake_box::{Behaviour, FakeBox};
use super::{artifact_in, assert_sound, put_on_box, report};
use crate::common::{self, BoxProcess, WAIT_DEADLINE};
use crate::harness::{fuse_available, Mount};

/// How late the slow box answers.
const DELAY: Duration = Duration::from_secs(5);
/// Reads of the slow box's keys at once, against 2 workers for it.
const SLOW_READS: usize = 60;
/// Reads of the other box's keys while it is saturated.
const OTHER_READS: usize = 20;

/// The mount's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the mount's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_box_answering_everything_5_s_late_costs_only_its_own_keys() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = FakeBox::start(Behaviour::Late { delay: DELAY });
    let other = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let config = dir.path().join("cluster.sexp");
    common::write_config(
        &config,
        &[
            (&slow.url(), &[("0x00", "0x7f")]),
            (&other.url(), &[("0x80", "0xff")]),
        ],
        "(timeout_ms 10000)",
    );
    let on_slow: Vec<(Entry, Vec<u8>)> = (0..SLOW_READS)
        .map(|_| {
            let (entry, bytes) = artifact_in(0x00..=0x7f, 4096);
            slow.hold(&entry, bytes.clone());
            (entry, bytes)
        })
        .collect();
    let on_other: Vec<(Entry, Vec<u8>)> = (0..OTHER_READS)
        .map(|_| {
            let (entry, bytes) = artifact_in(0x80..=0xff, 4096);
            put_on_box(&other, &entry, &bytes);
            (entry, bytes)
        })
        .collect();
    let store = dir.path().join("store");
    let mount = Mount::start(&store, Some(&config), &["--fetch-workers", "2"]);
    let rss_before = rss_kib(mount.pid());

    let (done, finished) = mpsc::channel();
    for (entry, bytes) in &on_slow {
        let (path, bytes, done) = (
            mount.path(entry.relative_path()),
            bytes.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let read = fs::read(&path);
            let _ = done.send(read.map(|got| got == bytes));
        });
    }
    common::wait_until("the slow box is busy", || slow.gets() >= 2);
    for (entry, bytes) in &on_other {
        let got = fs::read(mount.path(entry.relative_path())).expect("reading the other box's key");
        assert!(got == *bytes, "{entry} read back wrong");
    }
    let mut results: Vec<_> = finished.try_iter().collect();
    let slow_done_by_then = results.len();
    assert!(
        slow_done_by_then < SLOW_READS,
        "the other box's reads waited for all of the slow box's"
    );
    let deadline = Instant::now() + WAIT_DEADLINE;
    for _ in slow_done_by_then..SLOW_READS {
        let left = deadline.saturating_duration_since(Instant::now());
        results.push(
            finished
                .recv_timeout(left)
                .expect("a read of the slow box hung"),
        );
    }
    let served = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let wrong = results.iter().filter(|r| matches!(r, Ok(false))).count();
    let errno = |errno: rustix::io::Errno| {
        results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.raw_os_error() == Some(errno.raw_os_error())))
            .count()
    };
    // Waiting too long makes a lookup a miss (ENOENT) and an open EIO.
    let (missed, eio) = (
        errno(rustix::io::Errno::NOENT),
        errno(rustix::io::Errno::IO),
    );
    assert_eq!(wrong, 0, "a slow read returned wrong bytes");
    assert!(
        missed + eio > 0,
        "no read was answered for waiting too long: {results:?}"
    );
    assert_eq!(served + missed + eio, SLOW_READS, "{results:?}");
    assert!(mount.counter("waited_too_long") > 0);
    let grown = rss_kib(mount.pid()).saturating_sub(rss_before);
    assert!(grown < 64 << 10, "the mount grew by {grown} KiB");
    assert_sound(Some(&mount), &[&store, other.root()]);
    report(
        "a box answering every request 5 s late",
        "reads of its keys answered (some EIO), the other box's go on, memory flat",
        &format!(
            "{SLOW_READS} reads on 2 workers: {served} served, {missed} misses and {eio} EIO after \
             waiting too long, none hung; the other box's {OTHER_READS} reads done while {} \
             were pending; memory +{grown} KiB",
            SLOW_READS - slow_done_by_then
        ),
    );
}
