//! The read path: a pushed real Dune cache seen through a mount with an empty store.

use std::fs;

use crate::common::{self, BoxCluster};
use crate::harness::{fuse_available, Mount};

/// Every entry of a real cache pushed to three boxes is visible once through a mount with an empty
/// store, with the right size and mode before any read, and reads back byte for byte.
#[test]
fn pushed_cache_reads_back_through_an_empty_mount() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = BoxCluster::start(
        &[
            &[("0x00", "0x54")],
            &[("0x55", "0xa9")],
            &[("0xaa", "0xff")],
        ],
        "",
        &[],
    );
    let push = common::dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        cache.db.as_os_str(),
    ]);
    assert!(push.status.success(), "push: {}", push.describe());
    let store = cluster.dir().join("store");
    let mount = Mount::start(&store, Some(&cluster.config), &[]);
    for (entry, original) in common::entries(&cache.db) {
        let through = mount.path(entry.relative_path());
        let meta = fs::metadata(&through).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(
            meta.len(),
            fs::metadata(&original).unwrap().len(),
            "{entry} size"
        );
        assert_eq!(
            fs::read(&through).unwrap(),
            fs::read(&original).unwrap(),
            "{entry}"
        );
    }
    assert_eq!(mount.counter("verification_failures"), 0);
}
