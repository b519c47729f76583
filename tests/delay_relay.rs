//! The relay the benchmarks put between a mount and its boxes to add network latency
//! (`tests/common/relay.rs`, run by `examples/delay-relay.rs`): every request's round trip
//! through it is at least twice its one-way delay, and a large body passes intact both ways.
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
    // Bytes that are not one repeated block, so a piece out of order or twice would show.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let body: Vec<u8> = (0..20_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let key = key::file_key(Era::Md5, &body[..], false).unwrap();
    let entry = Entry {
        kind: EntryKind::File,
        key,
    };
    let path = format!("/{}", entry.relative_path().display());

    let stored = raw_put(relay.addr(), &path, "", &body);
    assert_eq!(
        stored.status,
        201,
        "the PUT through the relay: {}",
        stored.text()
    );
    let fetched = raw_get(relay.addr(), &path);
    assert_eq!(fetched.status, 200);
    assert!(
        fetched.body == body,
        "the body came back altered ({} bytes of {})",
        fetched.body.len(),
        body.len()
    );
}
