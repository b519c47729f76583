//! `kill -9` of the mount with work in flight both ways: many fetches half done, and uploads
//! recorded but not yet on their box (one of them half sent). After a remount the store is
//! sound, the dead mount's half-written temp files are gone, and every upload completes.

use std::fs;
use std::sync::mpsc;
use std::time::Instant;

use dune_cachefs::dune::layout::Entry;
use dune_cachefs::upload::background::JOURNAL_DIR;

use super::{
    artifact_in, assert_sound, assert_uploaded, pseudo_random, put_on_box, read_within, report,
    store_through, temp_files, wait_for_temp_file,
};
use crate::common::relay::{Direction, Relay};
use crate::common::{self, BoxProcess, WAIT_DEADLINE};
use crate::harness::{fuse_available, Mount};

const FETCHES: usize = 12;
const UPLOADS: usize = 4;

#[test]
fn a_mount_killed_mid_fetches_and_uploads_remounts_sound_and_uploads_everything() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let relay = Relay::start(b.addr());
    let config = dir.path().join("cluster.sexp");
    common::write_config(&config, &[(&relay.url(), &[("0x00", "0xff")])], "");
    let on_box: Vec<(Entry, Vec<u8>)> = (0..FETCHES)
        .map(|_| {
            let (entry, bytes) = artifact_in(0x00..=0xff, 1 << 20);
            put_on_box(&b, &entry, &bytes);
            (entry, bytes)
        })
        .collect();
    let store = dir.path().join("store");
    let mount = Mount::start(&store, Some(&config), &[]);

    // Uploads crawl (one is half sent when the mount dies), fetches too.
    relay.throttle(Direction::Up, 64 << 10);
    relay.throttle(Direction::Down, 256 << 10);
    let stored: Vec<(Entry, Vec<u8>)> = (0..UPLOADS)
        .map(|i| {
            let bytes = pseudo_random(7000 + i as u64, 256 << 10);
            (store_through(&mount, &bytes).expect("storing"), bytes)
        })
        .collect();
    let (done, finished) = mpsc::channel();
    for (entry, _) in &on_box {
        let (path, done) = (mount.path(entry.relative_path()), done.clone());
        std::thread::spawn(move || {
            // Reads fail once the mount is dead; that is the point.
            let _ = done.send(fs::read(path).is_ok());
        });
    }
    common::wait_until("fetches are in flight", || {
        mount.counter("fetches_in_flight") >= FETCHES as u64 / 2
    });
    wait_for_temp_file(&store, 64 << 10, "a fetch is half done");
    wait_for_temp_file(b.root(), 16 << 10, "an upload is half sent");
    let in_flight = mount.counter("fetches_in_flight");
    let dead = mount.kill9();
    let deadline = Instant::now() + WAIT_DEADLINE;
    let completed = (0..FETCHES)
        .map(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            finished
                .recv_timeout(left)
                .expect("a read hung on the dead mount")
        })
        .filter(|ok| *ok)
        .count();

    // What the dead mount left: half-written temp files, which are no entries, and its journal.
    let left = temp_files(&store);
    assert!(
        !left.is_empty(),
        "no half-done fetch was left: the test proves nothing"
    );
    for path in &left {
        let relative = path.strip_prefix(&store).unwrap();
        assert_eq!(
            Entry::from_relative_path(relative),
            None,
            "{path:?} looks like an entry"
        );
    }
    let fsck = common::dune_cachefs(&["fsck".as_ref(), store.as_os_str()]);
    assert!(
        fsck.status.success(),
        "fsck of the dead mount's store: {}",
        fsck.describe()
    );
    let journal = fs::read_dir(store.join(JOURNAL_DIR)).unwrap().count();
    assert_eq!(
        journal, UPLOADS,
        "upload records in the dead mount's journal"
    );

    relay.unthrottle();
    let mount = dead.remount(&store, Some(&config), &["--recover"]);
    assert!(
        temp_files(&store).is_empty(),
        "the remount did not sweep {:?}",
        temp_files(&store)
    );
    let start = Instant::now();
    assert_uploaded(&mount, &stored, b.root());
    let upload_took = start.elapsed();
    for (entry, bytes) in &on_box {
        let (read, _) = read_within(&mount.path(entry.relative_path()), WAIT_DEADLINE);
        assert!(
            read.expect("reading after the remount") == *bytes,
            "{entry}"
        );
    }
    assert_sound(Some(&mount), &[&store, b.root()]);
    report_outcome(in_flight, completed, left.len(), upload_took);
}

fn report_outcome(in_flight: u64, completed: usize, left: usize, upload_took: std::time::Duration) {
    report(
        "mount kill -9 with fetches in flight",
        "store passes fsck; leftovers swept at remount; reads work",
        &format!(
            "{in_flight} fetches in flight ({completed} of {FETCHES} reads completed first), \
             {left} half-written temp files, none an entry; fsck clean before and after; \
             swept at remount; all reads work"
        ),
    );
    report(
        "mount kill -9 with uploads pending",
        "every upload completes after remount",
        &format!(
            "{UPLOADS} records survived (one upload half sent); all on the box \
             {upload_took:.1?} after the remount"
        ),
    );
}
