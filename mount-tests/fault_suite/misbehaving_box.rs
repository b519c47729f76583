//! Boxes that answer, but wrongly: truncated bodies, lengths that lie or are not numbers,
//! answers that are not HTTP, garbage metadata, slow bodies, and a box that never answers. One
//! fake box per misbehaviour, side by side in one cluster with a real box: each misbehaviour
//! costs its own keys (EIO or a miss, never a wrong file), and a stalled box does not slow the
//! reads of the others' keys.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dune_cachefs::dune::key::Key;
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use rustix::io::Errno;

use super::fake_box::{Behaviour, FakeBox};
use super::{artifact_in, assert_sound, errno_name, put_on_box, read_within, report, temp_files};
use crate::common::{self, BoxProcess, WAIT_DEADLINE};
use crate::harness::{errno_of, fuse_available, Mount};

/// The client's deadline for each request in this cluster (`timeout_ms`).
const TIMEOUT: Duration = Duration::from_secs(4);
/// How long the reads of other boxes' keys may take while one box stalls: well under
/// [`TIMEOUT`], so a read that waited for the stalled box cannot pass.
const UNSTALLED_BOUND: Duration = Duration::from_millis(1500);
/// The size of the small artifacts.
const SIZE: usize = 256 << 10;
/// Reads of the stalled box's keys at once: more than the mount's fetch workers (16 by default),
/// as a parallel build easily makes.
const STALLED_READS: usize = 24;

/// The fake boxes, in config order: box `i` owns the keys whose first byte is `0xi0..=0xif`.
const BEHAVIOURS: [(&str, Behaviour); 8] = [
    ("honest fake box", Behaviour::Honest),
    ("truncated body", Behaviour::Truncate { keep: SIZE / 2 }),
    (
        "Content-Length shorter than the body",
        Behaviour::DeclareShort {
            declared: SIZE - 1000,
        },
    ),
    ("Content-Length not a number", Behaviour::GarbageLength),
    ("an answer that is not HTTP", Behaviour::NotHttp),
    ("HEAD without Content-Length", Behaviour::HeadWithoutLength),
    (
        "slow body (8 pieces, 300 ms apart)",
        Behaviour::Trickle {
            pieces: 8,
            gap: Duration::from_millis(300),
        },
    ),
    ("never answers a GET", Behaviour::Stall),
];
const HONEST: usize = 0;
const STALL: usize = 7;
const TRICKLE: usize = 6;
const HEAD_WITHOUT_LENGTH: usize = 5;

/// A read of one misbehaving box's key, and what it must give: an errno, or `bytes`.
struct Read {
    what: &'static str,
    path: PathBuf,
    want: Option<Errno>,
    bytes: Vec<u8>,
}

/// The first-byte range of fake box `i`.
fn range_of(i: usize) -> std::ops::RangeInclusive<u8> {
    let low = (i as u8) << 4;
    low..=low | 0x0f
}

#[test]
fn misbehaving_boxes_cost_only_their_keys_and_a_stalled_one_stalls_nobody_else() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fakes: Vec<FakeBox> = BEHAVIOURS
        .iter()
        .map(|(_, behaviour)| FakeBox::start(*behaviour))
        .collect();
    let real = BoxProcess::start_anywhere(&dir.path().join("real"), &[]);
    let urls: Vec<String> = fakes.iter().map(FakeBox::url).collect();
    let fake_ranges: Vec<[(String, String); 1]> = (0..fakes.len())
        .map(|i| {
            let r = range_of(i);
            [(format!("0x{:02x}", r.start()), format!("0x{:02x}", r.end()))]
        })
        .collect();
    let fake_ranges: Vec<[(&str, &str); 1]> = fake_ranges
        .iter()
        .map(|[(lo, hi)]| [(lo.as_str(), hi.as_str())])
        .collect();
    let real_url = real.url();
    let mut nodes: Vec<(&str, &[(&str, &str)])> = urls
        .iter()
        .zip(&fake_ranges)
        .map(|(url, ranges)| (url.as_str(), &ranges[..]))
        .collect();
    nodes.push((&real_url, &[("0x80", "0xff")]));
    let config = dir.path().join("cluster.sexp");
    common::write_config(
        &config,
        &nodes,
        &format!("(timeout_ms {})", TIMEOUT.as_millis()),
    );

    // One artifact per fake box, and garbage under a rule key of the honest one.
    let artifacts: Vec<(Entry, Vec<u8>)> = (0..fakes.len())
        .map(|i| {
            let (entry, bytes) = artifact_in(range_of(i), SIZE);
            fakes[i].hold(&entry, bytes.clone());
            (entry, bytes)
        })
        .collect();
    let garbage_meta = Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key: Key::from_bytes([0x0a; 16]),
    };
    fakes[HONEST].hold(&garbage_meta, b"(8:metadata\x00\xff not csexp".to_vec());
    // The real box's keys, read while the stalled box stalls.
    let others: Vec<(Entry, Vec<u8>)> = (0..16)
        .map(|_| {
            let (entry, bytes) = artifact_in(0x80..=0xff, 64 << 10);
            put_on_box(&real, &entry, &bytes);
            (entry, bytes)
        })
        .collect();

    let store = dir.path().join("store");
    let mount = Mount::start(&store, Some(&config), &[]);

    // The stalled box first: more reads of its keys than the mount has workers hang in their
    // GETs ...
    let stalled_keys: Vec<Entry> = (0..STALLED_READS)
        .map(|i| match i {
            0 => artifacts[STALL].0,
            _ => {
                let (entry, bytes) = artifact_in(range_of(STALL), 1000);
                fakes[STALL].hold(&entry, bytes);
                entry
            }
        })
        .collect();
    let (stalled_done, stalled_results) = mpsc::channel();
    let stalled_start = Instant::now();
    for entry in &stalled_keys {
        let (path, done) = (mount.path(entry.relative_path()), stalled_done.clone());
        std::thread::spawn(move || {
            let _ = done.send(read_within(&path, WAIT_DEADLINE));
        });
    }
    common::wait_until("the stalled box holds 16 GETs", || {
        fakes[STALL].gets() >= 16
    });
    // ... while the real box's keys are read, all at once, cold.
    let start = Instant::now();
    let readers: Vec<_> = others
        .iter()
        .map(|(entry, bytes)| {
            let (path, bytes) = (mount.path(entry.relative_path()), bytes.clone());
            std::thread::spawn(move || {
                let (read, took) = read_within(&path, WAIT_DEADLINE);
                assert!(read.expect("reading a healthy box's key") == bytes);
                took
            })
        })
        .collect();
    let slowest = readers
        .into_iter()
        .map(|r| r.join().expect("a reader"))
        .max()
        .unwrap();
    let all_took = start.elapsed();
    assert!(
        all_took < UNSTALLED_BOUND,
        "16 reads of a healthy box took {all_took:?} while another box stalled \
         (timeout {TIMEOUT:?})"
    );
    let held = fakes[STALL].gets();
    assert!(
        stalled_start.elapsed() < TIMEOUT,
        "the stalled reads ended before the healthy reads did: the measure is void"
    );
    // An open waiting on its GET fails with EIO at the deadline; a lookup queued behind them
    // finds the box down by then, and is a miss.
    let (mut slowest_stalled, mut eio, mut enoent) = (Duration::ZERO, 0, 0);
    for _ in &stalled_keys {
        let (stalled, took) = stalled_results
            .recv_timeout(WAIT_DEADLINE)
            .expect("every stalled read ends");
        match errno_of("reading from a stalled box", stalled) {
            Errno::IO => eio += 1,
            Errno::NOENT => enoent += 1,
            other => panic!("reading from a stalled box: {}", errno_name(other)),
        }
        slowest_stalled = slowest_stalled.max(took);
    }
    assert!(eio >= 16, "only {eio} reads waited on a GET");
    assert!(
        slowest_stalled >= TIMEOUT && slowest_stalled < TIMEOUT + Duration::from_secs(3),
        "the stalled reads should fail at the client's deadline ({TIMEOUT:?}), the last after \
         {slowest_stalled:?}"
    );
    report(
        "box stalls (never answers GET)",
        "its keys EIO (or a miss) by the client deadline; other boxes' reads unaffected",
        &format!(
            "{STALLED_READS} reads of its keys ({held} GETs hanging): {eio} EIO, {enoent} ENOENT \
             (lookup found it down), all within {slowest_stalled:.1?} (timeout {TIMEOUT:?}); \
             16 cold reads of another box \
             meanwhile: all in {all_took:.0?}, slowest {slowest:.0?}"
        ),
    );

    // The other misbehaviours, all at once: each read ends as expected, within a bound.
    let expected = |i: usize| match i {
        HONEST | TRICKLE => None,
        HEAD_WITHOUT_LENGTH => Some(Errno::NOENT),
        _ => Some(Errno::IO),
    };
    let mut reads: Vec<Read> = artifacts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != STALL)
        .map(|(i, (entry, bytes))| Read {
            what: BEHAVIOURS[i].0,
            path: mount.path(entry.relative_path()),
            want: expected(i),
            bytes: bytes.clone(),
        })
        .collect();
    reads.push(Read {
        what: "garbage metadata",
        path: mount.path(garbage_meta.relative_path()),
        want: Some(Errno::IO),
        bytes: Vec::new(),
    });
    let handles: Vec<_> = reads
        .into_iter()
        .map(
            |Read {
                 what,
                 path,
                 want,
                 bytes,
             }| {
                std::thread::spawn(move || {
                    let (read, took) = read_within(&path, WAIT_DEADLINE);
                    let result = match (want, read) {
                        (None, Ok(got)) => {
                            assert!(got == bytes, "{what}: wrong bytes");
                            "read byte for byte".to_string()
                        }
                        (Some(errno), read) => {
                            let got = errno_of(what, read);
                            assert_eq!(got, errno, "{what}");
                            format!("{}, nothing installed", errno_name(got))
                        }
                        (None, Err(e)) => panic!("{what}: {e}"),
                    };
                    (what, want, result, took)
                })
            },
        )
        .collect();
    for handle in handles {
        let (what, want, result, took) = handle.join().expect("a misbehaviour's reader");
        let expect = match want {
            None => "read works".to_string(),
            Some(Errno::NOENT) => "a miss (ENOENT)".to_string(),
            Some(errno) => format!("{}, nothing installed", errno_name(errno)),
        };
        report(
            &format!("fake box: {what}"),
            &expect,
            &format!("{result} ({took:.1?})"),
        );
    }
    mount.wait_settled();
    for (i, (entry, _)) in artifacts.iter().enumerate() {
        let installed = store.join(entry.relative_path()).exists();
        assert_eq!(
            installed,
            expected(i).is_none(),
            "{}: installed",
            BEHAVIOURS[i].0
        );
    }
    assert!(!store.join(garbage_meta.relative_path()).exists());
    assert!(temp_files(&store).is_empty());
    assert_sound(Some(&mount), &[&store, real.root()]);
}
