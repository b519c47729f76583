//! A cluster of real boxes on loopback grows from three boxes to four and shrinks to two, the way
//! docs/cluster-config.md tells an operator to: while entries move, every entry of a real Dune
//! 2.9 cache stays readable (from its previous owner until it moved; by the library's readers and
//! by `get`), `push` writes to the new owners only, `rebalance` killed midway finishes on a
//! re-run, and at the end every entry is on exactly its owner and every box is `fsck`-clean. No test needs FUSE (the mount's side: `mount-tests/cluster_growth.rs`).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::growth::{
    assert_every_entry_readable, assert_exactly_on_owners, config_text, rebalance,
    rebalance_counts, reconfigure, NodeSpec,
};
use common::relay::Relay;
use common::{
    dune_cachefs, dune_cachefs_command, entries, free_port, raw_get, raw_put, shared_real_cache,
    wait_until, BoxCluster, BoxProcess, Running,
};
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::dune::layout::{EntryKind, MetaVersion};

const THIRDS: [&[(&str, &str)]; 3] = [
    &[("0x00", "0x54")],
    &[("0x55", "0xa9")],
    &[("0xaa", "0xff")],
];

/// `GET` answers of one outcome (`"GET 404"`) a box gave so far.
fn answered(b: &BoxProcess, outcome: &str) -> u64 {
    let status: serde_json::Value =
        serde_json::from_slice(&raw_get(b.addr(), "/_status").body).unwrap();
    status["requests"][outcome].as_u64().unwrap_or(0)
}

fn assert_fsck_clean(root: &Path) {
    let out = dune_cachefs(&["fsck".as_ref(), root.as_os_str()]);
    assert!(out.status.success(), "fsck {root:?}: {}", out.describe());
}

#[test]
fn three_boxes_grow_to_four_and_shrink_to_two_with_every_entry_readable_throughout() {
    let cache = shared_real_cache();
    let db = &cache.db;
    let mut cluster = BoxCluster::start(&THIRDS, "", &[]);
    let pushed = dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        db.as_os_str(),
    ]);
    assert!(pushed.status.success(), "push: {}", pushed.describe());
    let urls: Vec<String> = cluster.boxes.iter().map(BoxProcess::url).collect();
    let url = |i: usize| urls[i].clone();
    let three: Vec<NodeSpec> = (0..3).map(|i| (url(i), THIRDS[i])).collect();

    // Grow: a fourth box takes the top of the third one's keys. It sits behind a relay that
    // delays every byte, so that a rebalance sending one entry at a time takes long enough to
    // be killed in the middle, whatever the machine's speed.
    let port = free_port();
    let relay = Relay::delayed(([127, 0, 0, 1], port).into(), Duration::from_millis(5));
    let four: Vec<NodeSpec> = vec![
        (url(0), THIRDS[0]),
        (url(1), THIRDS[1]),
        (url(2), &[("0xaa", "0xd4")]),
        (relay.url(), &[("0xd5", "0xff")]),
    ];
    let grown = config_text(&four, Some(&three), "");
    fs::write(&cluster.config, &grown).unwrap();
    let config_arg = cluster.config.display().to_string();
    let fourth = BoxProcess::start(
        &cluster.dir().join("box3"),
        port,
        &["--config".into(), config_arg, "--node".into(), relay.url()],
    )
    .expect("the fourth box starts");
    cluster.boxes.push(fourth);
    let boxes: Vec<&BoxProcess> = cluster.boxes.iter().collect();
    reconfigure(&cluster.config, &grown, &boxes[..3]);

    // Before anything moved, every entry is readable: the new owner misses, the previous one
    // answers.
    let moving: Vec<_> = entries(db)
        .into_iter()
        .filter(|(e, _)| e.key.as_bytes()[0] >= 0xd5)
        .collect();
    assert!(
        moving.len() >= 20 && moving.iter().any(|(e, _)| e.kind != EntryKind::File),
        "only {} entries move to the fourth box",
        moving.len()
    );
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-1"));
    assert!(
        answered(&cluster.boxes[3], "GET 404") >= moving.len() as u64,
        "the fourth box was not asked first"
    );
    // `get`, too: a moved artifact and a moved rule.
    for (entry, path) in moving
        .iter()
        .filter(|(e, _)| e.kind == EntryKind::File)
        .take(1)
        .chain(
            moving
                .iter()
                .filter(|(e, _)| e.kind == EntryKind::Meta(MetaVersion::V4))
                .take(1),
        )
    {
        let key = entry.key.to_string();
        let mut args = vec!["get", "--config", cluster.config.to_str().unwrap(), &key];
        if entry.kind != EntryKind::File {
            args.push("--meta");
        }
        let out = dune_cachefs(&args);
        assert!(out.status.success(), "get {entry}: {}", out.describe());
        assert!(out.stdout_bytes == fs::read(path).unwrap(), "get {entry}");
    }

    // A rebalance killed in the middle...
    let journal = cluster.dir().join("journal");
    let mut first = Running::spawn(dune_cachefs_command().args([
        "rebalance",
        "--config",
        cluster.config.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--jobs",
        "1",
    ]));
    let settled = || fs::read_to_string(&journal).map_or(0, |t| t.lines().count().max(1) - 1);
    wait_until("the first rebalance settles 5 entries", || settled() >= 5);
    assert!(
        first.is_running(),
        "the rebalance finished before it could be killed"
    );
    first.kill();
    let settled_by_first = settled();
    assert!(
        settled_by_first < moving.len(),
        "all settled before the kill"
    );
    // ...while every entry stays readable...
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-2"));
    // ...finishes on a re-run, which drops nothing until every entry is settled.
    let second = rebalance(
        &cluster.config,
        &["--journal", journal.to_str().unwrap(), "--drop"],
    );
    assert!(second.status.success(), "rebalance: {}", second.describe());
    let counts = rebalance_counts(&second);
    assert_eq!(counts["failed"], 0, "{}", second.stdout);
    assert!(
        counts["settled before"] >= settled_by_first as u64 - 1,
        "the re-run did not resume: {}",
        second.stdout
    );
    assert_eq!(
        counts["moved"] + counts["already there"] + counts["settled before"] + counts["collisions"],
        moving.len() as u64,
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains(&format!("dropped: {}: ", url(2))),
        "{}",
        second.stdout
    );
    assert_exactly_on_owners(&cluster.config, &boxes, db);
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-3"));

    // The transition ends: the config forgets the previous table.
    reconfigure(&cluster.config, &config_text(&four, None, ""), &boxes);
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-4"));

    // Shrink to two: the first box and the fourth take everything, the middle two leave.
    let two: Vec<NodeSpec> = vec![
        (url(0), &[("0x00", "0x7f")]),
        (relay.url(), &[("0x80", "0xff")]),
    ];
    let shrunk = config_text(&two, Some(&four), "");
    reconfigure(&cluster.config, &shrunk, &boxes);
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-5"));
    // `push` meanwhile writes to the new owners only: exactly the entries whose owner changed
    // are sent, and the rebalance then finds them there.
    let loaded = ClusterConfig::load(&cluster.config).unwrap();
    let changed = entries(db)
        .iter()
        .filter(|(e, _)| loaded.owner(&e.key).url() != loaded.previous_owner(&e.key).unwrap().url())
        .count();
    let pushed = dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        db.as_os_str(),
    ]);
    assert!(pushed.status.success(), "push: {}", pushed.describe());
    assert!(
        pushed.stdout.contains(&format!(
            ": {changed} uploaded, {} already there, 0 collisions, 0 failed",
            entries(db).len() - changed
        )),
        "{}",
        pushed.stdout
    );
    let third = rebalance(&cluster.config, &["--drop"]);
    assert!(third.status.success(), "rebalance: {}", third.describe());
    let counts = rebalance_counts(&third);
    assert_eq!(counts["failed"] + counts["moved"], 0, "{}", third.stdout);
    assert_eq!(counts["already there"], changed as u64, "{}", third.stdout);
    assert_exactly_on_owners(&cluster.config, &boxes, db);
    // The leaving boxes are stopped; nothing is lost.
    cluster.boxes[1].kill();
    cluster.boxes[2].kill();
    reconfigure(
        &cluster.config,
        &config_text(&two, None, ""),
        &[&cluster.boxes[0], &cluster.boxes[3]],
    );
    assert_every_entry_readable(&cluster.config, db, &cluster.dir().join("read-6"));
    for b in &cluster.boxes {
        assert_fsck_clean(b.root());
    }
}

/// A rule whose new owner already holds another value for it (another machine uploaded it there
/// first) is a collision: the rebalance reports it, the box records it, and its value stays.
#[test]
fn a_rebalance_never_overwrites_metadata_and_reports_the_collision() {
    let cache = shared_real_cache();
    let db = &cache.db;
    let halves: [&[(&str, &str)]; 2] = [&[("0x00", "0x7f")], &[("0x80", "0xff")]];
    let cluster = BoxCluster::start(&halves, "", &[]);
    let (a, b) = (cluster.boxes[0].url(), cluster.boxes[1].url());
    // Everything starts on the first box alone.
    let one = config_text(&[(a.clone(), &[("0x00", "0xff")])], None, "");
    reconfigure(&cluster.config, &one, &[&cluster.boxes[0]]);
    let pushed = dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        db.as_os_str(),
    ]);
    assert!(pushed.status.success(), "push: {}", pushed.describe());
    let split = config_text(
        &[(a.clone(), halves[0]), (b, halves[1])],
        Some(&[(a, &[("0x00", "0xff")])]),
        "",
    );
    let boxes: Vec<&BoxProcess> = cluster.boxes.iter().collect();
    reconfigure(&cluster.config, &split, &boxes);

    // Another value for a rule that moves reaches its new owner first.
    let (rule, _) = entries(db)
        .into_iter()
        .find(|(e, _)| e.kind != EntryKind::File && e.key.as_bytes()[0] >= 0x80)
        .expect("a rule that moves");
    let artifact = entries(db)
        .into_iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .expect("an artifact")
        .0;
    let other = format!("((8:metadata)(5:files(5:other32:{})))", artifact.key);
    let path = format!("/{}", rule.relative_path().display());
    let put = raw_put(cluster.boxes[1].addr(), &path, "", other.as_bytes());
    assert_eq!(put.status, 201, "{}", put.text());

    let out = rebalance(&cluster.config, &[]);
    assert!(out.status.success(), "rebalance: {}", out.describe());
    assert_eq!(rebalance_counts(&out)["collisions"], 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "collision: {rule}: the new owner keeps its own value"
        )),
        "{}",
        out.stdout
    );
    let held = fs::read(cluster.boxes[1].root().join(rule.relative_path())).unwrap();
    assert_eq!(
        held,
        other.as_bytes(),
        "the new owner's value was overwritten"
    );
    let collisions = raw_get(cluster.boxes[1].addr(), "/_collisions").text();
    assert!(collisions.contains(&rule.to_string()), "{collisions}");
}
