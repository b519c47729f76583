//! The mount over an S3 bucket instead of boxes, against a real multi-node SeaweedFS on loopback
//! (`common::seaweed`): a pushed cache read and verified through a mount with an empty store,
//! its shards listed from the bucket; and the two-machine Dune 2.9 build of `dune_e2e`, every
//! rule stored by one machine's mount into the bucket and restored by the other's, with one of
//! the store's three volume servers killed while the second machine builds.

use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

use dune_cachefs::cluster::client::ClientOptions;
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::layout::EntryKind;
use dune_cachefs::fetch::fetch_into;
use dune_cachefs::store::Store;

use crate::common::{self, seaweed::SeaweedCluster};
use crate::dune_e2e::{assert_fsck, assert_restored_every_rule, dune_and_fuse, Machine};
use crate::dune_generations::DUNE_2_9;
use crate::harness::{fuse_available, Mount};

#[test]
fn a_mount_with_an_empty_store_reads_a_pushed_bucket() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "pushed", "");
    let push = common::push(&config, &cache.db);
    assert!(push.status.success(), "push: {}", push.describe());

    let mount = Mount::start(&store.dir().join("store"), Some(&config), &[]);
    let entries = common::entries(&cache.db);
    // The shards are listed from the bucket, nothing fetched.
    let listed: BTreeSet<String> = fs::read_dir(mount.path("files/v4"))
        .expect("list files/v4")
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let shards: BTreeSet<String> = entries
        .iter()
        .filter(|(e, _)| e.kind == EntryKind::File)
        .map(|(e, _)| e.key.shard().to_string())
        .collect();
    assert_eq!(listed, shards);
    assert_eq!(mount.counter("fetches"), 0, "listing fetched entries");
    // Every entry reads back byte for byte, with its executable bit.
    for (entry, path) in &entries {
        let through = mount.path(entry.relative_path());
        assert_eq!(
            fs::read(&through).unwrap_or_else(|e| panic!("{entry}: {e}\n{}", mount.log())),
            fs::read(path).unwrap(),
            "{entry}"
        );
        if entry.kind == EntryKind::File {
            assert_eq!(
                common::mode(&through) & 0o111,
                common::mode(path) & 0o111,
                "{entry}"
            );
        }
    }
    assert_eq!(mount.counter("verification_failures"), 0);
    assert_eq!(mount.counter("box_unavailable"), 0);
    mount.wait_settled();
    assert_fsck(&store.dir().join("store"));
}

#[test]
fn dune_2_9_two_machines_share_their_builds_through_a_bucket_with_a_node_killed() {
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let mut store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "team/builds", "(timeout_ms 2000)");

    // A builds: every entry its mount stores reaches the bucket, and reads back verified.
    let a = Machine::with_config(&config, &[], &dune, &[]);
    a.build();
    a.wait_uploads_drained();
    let stored = a.entries();
    let rules = a.rule_keys();
    assert!(rules.len() >= 100, "A stored only {} rules", rules.len());
    let cluster = Cluster::new(
        ClusterConfig::load(&config).unwrap(),
        &ClientOptions::default(),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let check = Store::open(scratch.path()).unwrap();
    for entry in &stored {
        let _installed = fetch_into(cluster.owner(&entry.key), &check, entry)
            .unwrap_or_else(|e| panic!("{entry}: {e}"))
            .unwrap_or_else(|| panic!("{entry} did not reach the bucket"));
        assert_eq!(
            fs::read(check.path_of(entry)).unwrap(),
            fs::read(a.store().join(entry.relative_path())).unwrap(),
            "{entry}"
        );
    }
    let objects: usize = [EntryKind::File, EntryKind::Meta(dune.generation.meta)]
        .into_iter()
        .map(|kind| {
            let node = &cluster.clients()[0];
            let shards = node.list_shards(kind).unwrap();
            shards
                .into_iter()
                .map(|s| node.list(kind, s).unwrap().len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(objects, stored.len(), "the bucket holds other entries");

    // B, empty store: a volume server is killed as soon as B's mount has fetched its first
    // entry, and B still restores every rule A stored, runs nothing, and gets the same files.
    let b = Machine::with_config(&config, &[], &dune, &[]);
    let fetched_at_kill = AtomicU64::new(u64::MAX);
    let restored = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            common::wait_until("B's mount fetches its first entry", || {
                b.mount().counter("fetches") > 0
            });
            store.kill_volume(2);
            fetched_at_kill.store(b.mount().counter("fetches"), Ordering::Relaxed);
        });
        let restored = b.build();
        killer.join().expect("the killer thread");
        restored
    });
    let fetched_at_kill = fetched_at_kill.load(Ordering::Relaxed);
    assert!(
        fetched_at_kill < b.mount().counter("fetches"),
        "the volume server died after B's last fetch ({fetched_at_kill} fetches then, {} in all)",
        b.mount().counter("fetches")
    );
    assert_restored_every_rule(&a, &b, &restored, &rules);
}
