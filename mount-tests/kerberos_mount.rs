//! A mount whose boxes are behind Apache authenticating with Kerberos
//! (`scripts/apache-kerberos-proxy.conf`), with a real MIT KDC (tests/common/kerberos.rs): a
//! mount started without a ticket says "run kinit" in its log and status and serves nothing from
//! the boxes; once the user runs kinit, the same mount reads every entry, verified, without a
//! remount, and says the ticket expired when it does; what Dune stores through a writer's mount
//! is uploaded by the background uploader with the writer's ticket, and the box names the writer,
//! while a reader's is refused, said, and kept pending; and real Dune 2.9 builds: a writer's
//! build fills the cache through the proxy, a reader's build with an empty store restores every
//! rule of it.

use std::collections::BTreeSet;
use std::fs;

use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

use crate::common::kerberos::{KerberosCluster, READER, WRITER};
use crate::common::{self, run, wait_until, COMMAND_DEADLINE};
use crate::dune_e2e::{dune_and_fuse, Machine};
use crate::dune_generations::DUNE_2_9;
use crate::fault_suite::store_through;
use crate::harness::{fuse_available, Mount};

/// The state and cause of the mount's only box, from its status file.
fn box_health(mount: &Mount) -> (String, String) {
    let status = mount.status();
    let health = &status["boxes"][0]["health"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (text(&health["state"]), text(&health["cause"]))
}

#[test]
fn a_mount_without_a_ticket_says_run_kinit_then_reads_everything_once_there_is_one() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = KerberosCluster::start(&[&[("0x00", "0xff")]]);
    let writer = cluster.kdc.kinit(WRITER, "writer-cache", "1h");
    let mut push = common::dune_cachefs_command();
    push.envs(cluster.kdc.client_env(&writer))
        .arg("push")
        .arg("--config")
        .arg(&cluster.config)
        .arg(&cache.db);
    let push = run(&mut push, COMMAND_DEADLINE);
    assert!(push.status.success(), "push: {}", push.describe());

    // The reader's credential cache does not exist yet: no ticket.
    let reader = cluster.kdc.cache("reader-cache");
    let mount = Mount::start_with_env(
        &cluster.dir().join("store"),
        Some(&cluster.config),
        &cluster.kdc.client_env(&reader),
    );
    let original = common::entries(&cache.db);
    let (first, _) = &original[0];
    // The box is unavailable, not empty: the lookup fails as for a down box (a miss Dune
    // rebuilds, never a hang), and the status and the log say why.
    assert!(fs::metadata(mount.path(first.relative_path())).is_err());
    let said = "wants Kerberos: no Kerberos ticket for HTTP@localhost: run kinit";
    let (state, cause) = box_health(&mount);
    assert_eq!(state, "down", "{}", mount.status());
    assert!(cause.contains(said), "status: {}", mount.status());
    assert!(mount.log().contains(said), "log:\n{}", mount.log());

    // kinit: the same mount (no remount) reads every entry, verified.
    cluster.kdc.kinit(READER, "reader-cache", "1h");
    let (second, _) = &original[1];
    wait_until("the mount reads through the proxy after kinit", || {
        fs::metadata(mount.path(second.relative_path())).is_ok()
    });
    let listed: BTreeSet<_> = common::entries(&mount.point)
        .into_iter()
        .map(|(entry, _)| entry)
        .collect();
    let want: BTreeSet<_> = original.iter().map(|(entry, _)| *entry).collect();
    assert_eq!(listed, want, "entries listed through the mount");
    for (entry, path) in &original {
        let through = fs::read(mount.path(entry.relative_path()))
            .unwrap_or_else(|e| panic!("{entry}: {e}\n{}", mount.log()));
        assert!(
            through == fs::read(path).unwrap(),
            "{entry} read through the mount"
        );
    }
    assert_eq!(mount.counter("verification_failures"), 0);
    assert_eq!(box_health(&mount).0, "up", "{}", mount.status());
    let access = cluster.proxy.access_log();
    assert!(
        access.contains(&format!(" {READER} \"GET ")),
        "the reader's requests are authenticated:\n{access}"
    );

    // The ticket is replaced by one that expires (2 s, then past the realm's 1 s clock-skew
    // tolerance): the next lookup that asks the box says so, and the box is down again.
    cluster.kdc.kinit(READER, "reader-cache", "2s");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let absent = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"never stored\n"[..], false).unwrap(),
    };
    assert!(fs::metadata(mount.path(absent.relative_path())).is_err());
    let said = "the Kerberos ticket for HTTP@localhost has expired: run kinit";
    let (state, cause) = box_health(&mount);
    assert_eq!(state, "down", "{}", mount.status());
    assert!(cause.contains(said), "status: {}", mount.status());
    assert!(mount.log().contains(said), "log:\n{}", mount.log());
}

#[test]
fn what_dune_stores_through_a_writers_mount_is_uploaded_in_its_name() {
    if !fuse_available() {
        return;
    }
    let cluster = KerberosCluster::start(&[&[("0x00", "0xff")]]);
    let writer = cluster.kdc.kinit(WRITER, "writer-cache", "1h");
    let mount = Mount::start_with_env(
        &cluster.dir().join("store"),
        Some(&cluster.config),
        &cluster.kdc.client_env(&writer),
    );
    let entry = store_through(&mount, b"built under a Kerberos ticket\n")
        .unwrap_or_else(|(step, e)| panic!("{step}: {e}"));
    let on_box = cluster.boxes[0].root().join(entry.relative_path());
    wait_until("the uploader stored the entry on its box", || {
        on_box.exists()
    });
    assert_eq!(
        fs::read(&on_box).unwrap(),
        b"built under a Kerberos ticket\n"
    );
    let log = cluster.boxes[0].log();
    assert!(
        log.contains(&format!("{entry} stored by {WRITER}")),
        "the box names the writer:\n{log}"
    );

    // A reader's mount: what its Dune stores stays local and pending (retried, as for any
    // refused write), the log says why, and the box gets nothing.
    let reader = cluster.kdc.kinit(READER, "reader-cache", "1h");
    let reading = Mount::start_with_env(
        &cluster.dir().join("reader-store"),
        Some(&cluster.config),
        &cluster.kdc.client_env(&reader),
    );
    let refused = store_through(&reading, b"built by a reader\n")
        .unwrap_or_else(|(step, e)| panic!("{step}: {e}"));
    let said = "refused to store: your Kerberos principal is not one the proxy lets write";
    wait_until("the reader's upload is refused", || {
        reading.log().contains(said)
    });
    assert!(!cluster.boxes[0]
        .root()
        .join(refused.relative_path())
        .exists());
    assert_eq!(
        reading.status()["uploads"]["pending"],
        1,
        "{}",
        reading.status()
    );
    assert_eq!(
        box_health(&reading).0,
        "up",
        "reads go on: {}",
        reading.status()
    );
}

#[test]
fn dune_2_9_restores_every_rule_a_writer_built_through_the_kerberos_proxy() {
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let cluster = KerberosCluster::start(&[&[("0x00", "0x7f")], &[("0x80", "0xff")]]);
    let writer = cluster.kdc.kinit(WRITER, "writer-cache", "1h");
    let reader = cluster.kdc.kinit(READER, "reader-cache", "1h");

    // The writer builds: everything its Dune stores reaches the boxes, in the writer's name.
    let a = Machine::with_config(
        &cluster.config,
        &cluster.kdc.client_env(&writer),
        &dune,
        &[],
    );
    let built = a.build();
    assert!(built.cache_hits().is_empty(), "{}", built.describe());
    a.wait_uploads_drained();
    let stored = a.entries();
    let rules = a.rule_keys();
    assert!(!rules.is_empty(), "the writer's build stored no rule");
    let on_boxes: usize = cluster
        .boxes
        .iter()
        .map(|b| common::entries(b.root()).len())
        .sum();
    assert_eq!(on_boxes, stored.len(), "entries on the boxes");
    let logs: String = cluster.boxes.iter().map(|b| b.log()).collect();
    for entry in &stored {
        assert!(
            logs.contains(&format!("{entry} stored by {WRITER}")),
            "the boxes name the writer of {entry}"
        );
    }

    // The reader, with an empty store: every rule is a cache hit, nothing is compiled.
    let b = Machine::with_config(
        &cluster.config,
        &cluster.kdc.client_env(&reader),
        &dune,
        &[],
    );
    let restored = b.build();
    assert_eq!(*restored.cache_hits(), rules, "{}", restored.describe());
    assert_eq!(
        restored.rule_commands(),
        Vec::<&str>::new(),
        "the reader ran commands: {}",
        restored.describe()
    );
    assert_eq!(b.mount().counter("verification_failures"), 0);
}
