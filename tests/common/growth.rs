//! Growing and shrinking a cluster of real boxes, as docs/cluster-config.md tells an operator
//! to: write a config naming the table it replaces, have every box read it again (`SIGHUP`), run
//! `rebalance`, and check where every entry ended up.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use dune_cachefs::boxd::Ownership;
use dune_cachefs::cluster::client::ClientOptions;
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::layout::Entry;
use dune_cachefs::fetch::fetch_into;
use dune_cachefs::store::Store;
use rustix::process::Signal;

use super::{dune_cachefs, entries, raw_get, signal, wait_until, BoxProcess, Output};

/// One node of a config: its URL and its ranges (`(LO, HI)` bounds).
pub type NodeSpec<'a> = (String, &'a [(&'a str, &'a str)]);

/// The `(node ...)` forms of `nodes`.
fn node_forms(nodes: &[NodeSpec]) -> String {
    let mut text = String::new();
    for (url, ranges) in nodes {
        text.push_str(&format!("(node (hostname {url})"));
        for (lo, hi) in *ranges {
            text.push_str(&format!(" (range {lo} {hi})"));
        }
        text.push_str(")\n");
    }
    text
}

/// A config of `nodes` with optional fields `extra`, naming `previous` as the table it
/// replaces if given.
pub fn config_text(nodes: &[NodeSpec], previous: Option<&[NodeSpec]>, extra: &str) -> String {
    let mut text = format!(
        "(lang dune-distributed-cache 1.0)\n{extra}\n{}",
        node_forms(nodes)
    );
    if let Some(previous) = previous {
        text.push_str(&format!("(previous\n{})\n", node_forms(previous)));
    }
    text
}

/// Writes `text` to `config` (the file every box of `boxes` was started with) and has each box
/// read it again, waiting until its `/_status` shows the ranges it has under it.
pub fn reconfigure(config: &Path, text: &str, boxes: &[&BoxProcess]) {
    fs::write(config, text).unwrap_or_else(|e| panic!("write {config:?}: {e}"));
    let loaded = ClusterConfig::load(config).expect("the test's config loads");
    for b in boxes {
        let url = b.url().parse().expect("a node URL");
        let ownership = Ownership::of(&loaded, &url)
            .unwrap_or_else(|| panic!("the config names no box {}", b.url()));
        let want = |ranges: &[dune_cachefs::cluster::config::KeyRange]| {
            serde_json::Value::from(ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        };
        let (owned, previous) = (want(&ownership.owned), want(&ownership.previous));
        signal(b.pid(), Signal::HUP);
        wait_until(&format!("{} reads its config again", b.url()), || {
            let status: serde_json::Value =
                serde_json::from_slice(&raw_get(b.addr(), "/_status").body).unwrap_or_default();
            status["ranges"] == owned && status["previous_ranges"] == previous
        });
    }
}

/// Runs `dune-cachefs rebalance --config CONFIG` with `extra` arguments.
pub fn rebalance(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "rebalance",
        "--config",
        config.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    dune_cachefs(&args)
}

/// The counts of rebalance's summary line, by label (`moved`, `already there`, `settled
/// before`, `vanished`, `collisions`, `failed`).
pub fn rebalance_counts(out: &Output) -> BTreeMap<String, u64> {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rebalanced in "))
        .unwrap_or_else(|| panic!("rebalance printed no summary: {}", out.describe()));
    let counts = line.split_once(": ").map_or("", |(_, c)| c);
    counts
        .split(", ")
        .filter_map(|part| {
            let (n, label) = part.split_once(' ')?;
            // "3 moved (123 bytes)": the label is the words before any parenthesis.
            let label = label.split(" (").next()?;
            Some((label.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// Asserts that every box of `boxes` holds exactly the entries of `db` it owns under `config`,
/// byte for byte; boxes the config does not name (they left) are not looked at.
pub fn assert_exactly_on_owners(config: &Path, boxes: &[&BoxProcess], db: &Path) {
    let loaded = ClusterConfig::load(config).expect("the test's config loads");
    let all = entries(db);
    for b in boxes {
        let url = b.url().parse().expect("a node URL");
        let Some(node) = loaded.node_by_url(&url) else {
            continue;
        };
        let mut expected: Vec<Entry> = Vec::new();
        for (entry, path) in &all {
            if !node.owns(&entry.key) {
                continue;
            }
            expected.push(*entry);
            let held = fs::read(b.root().join(entry.relative_path())).unwrap_or_else(|e| {
                panic!("{entry} is not on its owner {}: {e}", b.url());
            });
            assert!(
                held == fs::read(path).expect("the original entry"),
                "{entry} on {} differs from the original",
                b.url()
            );
        }
        let held: Vec<Entry> = entries(b.root()).into_iter().map(|(e, _)| e).collect();
        let strays: Vec<&Entry> = held.iter().filter(|e| !node.owns(&e.key)).collect();
        assert!(
            strays.is_empty(),
            "{} holds {} entries it does not own, e.g. {}",
            b.url(),
            strays.len(),
            strays[0]
        );
        assert_eq!(held.len(), expected.len(), "entries on {}", b.url());
    }
}

/// Reads every entry of `db` through the library's readers under `config` into a fresh store
/// under `scratch`, and checks the bytes: what a mount or `get` would be given.
pub fn assert_every_entry_readable(config: &Path, db: &Path, scratch: &Path) {
    let cluster = Cluster::new(
        ClusterConfig::load(config).unwrap(),
        &ClientOptions::default(),
    )
    .unwrap();
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).unwrap();
    let store = Store::open(scratch).unwrap();
    for (entry, path) in entries(db) {
        let got = cluster.read(&entry.key, |client| fetch_into(client, &store, &entry));
        assert!(
            matches!(got, Ok(Some(_))),
            "{entry} cannot be read under {config:?}: {got:?}"
        );
        assert!(
            fs::read(store.path_of(&entry)).unwrap() == fs::read(&path).unwrap(),
            "{entry} read back other bytes"
        );
    }
}
