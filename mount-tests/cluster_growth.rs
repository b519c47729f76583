//! Real Dune builds restore through a mount while the cluster under it grows from three boxes to
//! four and shrinks to two, as docs/cluster-config.md tells an operator to do it: every rule is a
//! cache hit while `rebalance --drop` moves (and drops) entries at the same time, the mount
//! never misses an entry, and at the end every entry is on exactly its owner and every box is
//! `fsck`-clean. (The killed and resumed rebalance, and `get`: `tests/box_rebalance.rs`.)

use std::time::Duration;

use crate::common::growth::{
    assert_exactly_on_owners, config_text, rebalance_counts, reconfigure, NodeSpec,
};
use crate::common::relay::Relay;
use crate::common::{self, BoxCluster, BoxProcess, Running, COMMAND_DEADLINE};
use crate::dune_e2e::{dune_and_fuse, Machine};
use crate::dune_generations::{Dune, DUNE_2_9};

const THIRDS: [&[(&str, &str)]; 3] = [
    &[("0x00", "0x54")],
    &[("0x55", "0xa9")],
    &[("0xaa", "0xff")],
];

/// Starts `rebalance --drop` under the cluster's config, one transfer at a time (the boxes'
/// relay makes each take a few milliseconds, so it runs alongside the build).
fn start_rebalance(cluster: &BoxCluster) -> Running {
    Running::spawn(common::dune_cachefs_command().args([
        "rebalance".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        "--jobs".as_ref(),
        "1".as_ref(),
        "--drop".as_ref(),
    ]))
}

/// Has `machine` (fresh, with an empty store) build the project: every one of the `rules` is
/// restored from the cache, nothing is compiled, and its mount met no miss.
fn assert_restores_everything(machine: &Machine, rules: usize) {
    let built = machine.build();
    assert_eq!(
        built.cache_hits().len(),
        rules,
        "not every rule was restored while entries moved: {}",
        built.describe()
    );
    assert!(built.compiles().is_empty(), "{}", built.describe());
    for counter in ["remote_missing", "fetch_failures", "box_unavailable"] {
        assert_eq!(
            machine.mount().counter(counter),
            0,
            "{counter}: {}",
            machine.mount().status()
        );
    }
}

/// A fresh machine mounts the cluster's config and restores every rule while `rebalance --drop`
/// runs. `dropping`: a previous owner stays in the cluster and drops what moved (boxes that
/// leave are stopped instead).
fn build_restores_everything(
    cluster: &BoxCluster,
    dune: &Dune,
    rules: usize,
    dropping: bool,
) -> Machine {
    let machine = Machine::new(cluster, dune);
    let rebalancing = start_rebalance(cluster);
    assert_restores_everything(&machine, rules);
    let moved = rebalancing.wait(COMMAND_DEADLINE);
    assert!(moved.status.success(), "rebalance: {}", moved.describe());
    eprintln!("{}", moved.stdout);
    assert_eq!(rebalance_counts(&moved)["failed"], 0, "{}", moved.stdout);
    assert_eq!(
        moved.stdout.contains("dropped: "),
        dropping,
        "what the rebalance dropped: {}",
        moved.stdout
    );
    machine
}

/// The `404` answers a box gave so far, to requests made for Dune or ahead of it, and all its
/// request counts (for a failure message).
fn misses(b: &BoxProcess) -> (u64, serde_json::Value) {
    let status: serde_json::Value =
        serde_json::from_slice(&common::raw_get(b.addr(), "/_status").body).expect("status");
    let requests = status["requests"].clone();
    let count = requests
        .as_object()
        .expect("request counts")
        .iter()
        .filter(|(outcome, _)| outcome.contains(" 404"))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    (count, requests)
}

#[test]
fn dune_2_9_restores_every_rule_while_the_cluster_grows_to_four_boxes_and_shrinks_to_two() {
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let mut cluster = BoxCluster::start(&THIRDS, "(timeout_ms 2000)", &[]);
    let urls: Vec<String> = cluster.boxes.iter().map(BoxProcess::url).collect();
    let three: Vec<NodeSpec> = (0..3).map(|i| (urls[i].clone(), THIRDS[i])).collect();

    // Machine A fills the cache through its mount.
    let a = Machine::new(&cluster, &dune);
    a.build();
    a.wait_uploads_drained();
    let rules = a.rule_keys().len();
    assert!(rules >= 100, "A stored only {rules} rules");

    // Grow: a fourth box, behind a relay that delays every byte a little, takes the top of the
    // third box's keys. Machine B mounts the new config and builds while they move.
    let port = common::free_port();
    let relay = Relay::delayed(([127, 0, 0, 1], port).into(), Duration::from_millis(5));
    let four: Vec<NodeSpec> = vec![
        (urls[0].clone(), THIRDS[0]),
        (urls[1].clone(), THIRDS[1]),
        (urls[2].clone(), &[("0xaa", "0xd4")]),
        (relay.url(), &[("0xd5", "0xff")]),
    ];
    let grown = config_text(&four, Some(&three), "(timeout_ms 2000)");
    std::fs::write(&cluster.config, &grown).expect("write the grown config");
    let fourth = BoxProcess::start(
        &cluster.dir().join("box3"),
        port,
        &[
            "--config".into(),
            cluster.config.display().to_string(),
            "--node".into(),
            relay.url(),
        ],
    )
    .expect("the fourth box starts");
    cluster.boxes.push(fourth);
    reconfigure(
        &cluster.config,
        &grown,
        &cluster.boxes[..3].iter().collect::<Vec<_>>(),
    );
    // Before anything moved, a machine restores every rule all the same: the fourth box misses
    // each of its keys, and their previous owner answers.
    assert_restores_everything(&Machine::new(&cluster, &dune), rules);
    let (missed, requests) = misses(&cluster.boxes[3]);
    assert!(missed > 0, "the fourth box was never asked: {requests}");
    let b = build_restores_everything(&cluster, &dune, rules, true);
    let boxes: Vec<&BoxProcess> = cluster.boxes.iter().collect();
    assert_exactly_on_owners(&cluster.config, &boxes, a.store());
    // What a machine stores through the mount goes to the new owners. (B's store holds every
    // entry now: A's, restored, and those of its edit.)
    b.edit_source();
    b.build();
    b.wait_uploads_drained();
    assert_exactly_on_owners(&cluster.config, &boxes, b.store());
    reconfigure(
        &cluster.config,
        &config_text(&four, None, "(timeout_ms 2000)"),
        &boxes,
    );

    // Shrink to two: the first and the fourth box take everything; machine C builds meanwhile.
    let two: Vec<NodeSpec> = vec![
        (urls[0].clone(), &[("0x00", "0x7f")]),
        (relay.url(), &[("0x80", "0xff")]),
    ];
    reconfigure(
        &cluster.config,
        &config_text(&two, Some(&four), "(timeout_ms 2000)"),
        &boxes,
    );
    build_restores_everything(&cluster, &dune, rules, false);
    assert_exactly_on_owners(&cluster.config, &boxes, b.store());
    for b in &cluster.boxes {
        let fsck = common::dune_cachefs(&["fsck".as_ref(), b.root().as_os_str()]);
        assert!(
            fsck.status.success(),
            "fsck {}: {}",
            b.url(),
            fsck.describe()
        );
    }
}
