//! The cluster config parser on arbitrary text: it must never panic, and a config it accepts
//! must give every key exactly one owner — the range table's whole promise. The keys checked are
//! the edges of every range (its first and last key and their neighbours, where gaps and
//! overlaps show) and keys taken from the input's bytes.
//!
//! Input layout: the whole input is the config text (invalid UTF-8 replaced, as a lossy reader
//! would); its bytes, 16 at a time, are also keys to check.
#![no_main]

use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::dune::key::Key;
use libfuzzer_sys::fuzz_target;

fn key(value: u128) -> Key {
    Key::from_bytes(value.to_be_bytes())
}

fn value(key: &Key) -> u128 {
    u128::from_be_bytes(*key.as_bytes())
}

fn check_one_owner(config: &ClusterConfig, key: &Key) {
    let owners: Vec<usize> = (config.nodes().iter().enumerate())
        .filter(|(_, node)| node.owns(key))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(owners.len(), 1, "{key} is owned by nodes {owners:?}");
    assert_eq!(
        config.owner_index(key),
        owners[0],
        "{key}: the table disagrees"
    );
    assert_eq!(config.owner(key), &config.nodes()[owners[0]]);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = ClusterConfig::parse(&text) else {
        return;
    };
    assert!(!config.nodes().is_empty(), "accepted with no node");
    for k in [0, u128::MAX] {
        check_one_owner(&config, &key(k));
    }
    for node in config.nodes() {
        assert!(!node.ranges().is_empty(), "{} owns no range", node.url());
        for range in node.ranges() {
            let (first, last) = (value(&range.first()), value(&range.last()));
            assert!(first <= last, "empty range {range}");
            for k in [
                first.wrapping_sub(1),
                first,
                first.wrapping_add(1),
                last.wrapping_sub(1),
                last,
                last.wrapping_add(1),
            ] {
                check_one_owner(&config, &key(k));
            }
        }
    }
    for chunk in data.chunks_exact(16) {
        check_one_owner(&config, &Key::from_bytes(chunk.try_into().unwrap()));
    }
});
