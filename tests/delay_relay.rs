//! The relay the benchmarks put between a mount and its boxes to add network latency
//! (`tests/common/relay.rs`, run by `examples/delay-relay.rs`): every request's round trip
//! through it is at least twice its one-way delay, a large body passes intact both ways, and
//! so do bodies fetched at once on connections of their own.
//! Lower bounds only: a loaded machine may be slower, never faster.

mod common;

use std::time::{Duration, Instant};

use common::relay::{self, Relay};
use common::{raw_get, raw_put, BoxProcess};
use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

const ONE_WAY: Duration = Duration::from_millis(5);

#[test]
fn every_round_trip_through_a_delaying_relay_takes_twice_its_delay() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let relay = Relay::delayed(b.addr(), ONE_WAY);
    let trips = relay::round_trips(b.addr(), relay.addr(), 5).expect("GET /_status works");
    assert_eq!(trips.relayed.len(), 5);
    for trip in &trips.relayed {
        assert!(
            *trip >= 2 * ONE_WAY,
            "a request through a relay of {ONE_WAY:?} each way took {trip:?}"
        );
    }
    // A delay changed applies from then on, to the connections already open too.
    relay.set_delay(2 * ONE_WAY);
    let trips = relay::round_trips(b.addr(), relay.addr(), 3).expect("GET /_status works");
    for trip in &trips.relayed {
        assert!(*trip >= 4 * ONE_WAY, "after doubling the delay: {trip:?}");
    }
    // A fresh connection per request too (the box's answers then end with the connection).
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(raw_get(relay.addr(), "/_status").status, 200);
        assert!(started.elapsed() >= 4 * ONE_WAY);
    }
}

#[test]
fn a_20_mb_body_passes_a_delaying_relay_intact_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let relay = Relay::delayed(b.addr(), ONE_WAY);
    let body = scrambled(20_000_000, 0);
    let path = put_through(&relay, &body);
    let fetched = raw_get(relay.addr(), &path);
    assert_eq!(fetched.status, 200);
    assert!(
        fetched.body == body,
        "the body came back altered ({} bytes of {})",
        fetched.body.len(),
        body.len()
    );
}

/// The relay serves every connection from one thread: bodies fetched at once, each on its own
/// connection, must each come back whole and unmixed.
#[test]
fn bodies_fetched_at_once_pass_a_delaying_relay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let relay = Relay::delayed(b.addr(), ONE_WAY);
    let bodies: Vec<Vec<u8>> = (1..=8).map(|seed| scrambled(3_000_000, seed)).collect();
    let paths: Vec<String> = bodies
        .iter()
        .map(|body| put_through(&relay, body))
        .collect();
    let fetched: Vec<_> = std::thread::scope(|s| {
        let fetches: Vec<_> = paths
            .iter()
            .map(|path| s.spawn(|| raw_get(relay.addr(), path)))
            .collect();
        fetches.into_iter().map(|f| f.join().unwrap()).collect()
    });
    for ((got, body), path) in fetched.iter().zip(&bodies).zip(&paths) {
        assert_eq!(got.status, 200, "GET {path}");
        assert!(
            got.body == *body,
            "GET {path}: the body came back altered ({} bytes of {})",
            got.body.len(),
            body.len()
        );
    }
}

/// `len` bytes that are not one repeated block (a piece out of order or twice would show), and
/// different for each `seed`.
fn scrambled(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Stores `body` as an artifact through the relay; returns its path on the box.
fn put_through(relay: &Relay, body: &[u8]) -> String {
    let key = key::file_key(Era::Md5, body, false).unwrap();
    let entry = Entry {
        kind: EntryKind::File,
        key,
    };
    let path = format!("/{}", entry.relative_path().display());
    let stored = raw_put(relay.addr(), &path, "", body);
    assert_eq!(
        stored.status,
        201,
        "the PUT through the relay: {}",
        stored.text()
    );
    path
}
