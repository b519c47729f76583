//! Cache boxes behind a real Apache authenticating with Kerberos
//! (`scripts/apache-kerberos-proxy.conf`, mod_auth_gssapi) over TLS, with a real MIT KDC for a
//! throw-away realm on loopback: `push` and `get` of a real Dune cache present a ticket from the
//! credential cache; without a ticket, with an expired one, or as a principal that may only read,
//! a push is refused, said in plain words, and stores nothing; the box names the principal that
//! stored each entry, and records it with a collision (a principal a client claims is replaced by
//! the proxy's).
//!
//! No FUSE is needed (the mount through the proxy is in mount-tests/kerberos_mount.rs).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::kerberos::{KerberosCluster, READER, WRITER};
use common::{
    entries, get_args, metadata_entries, parallel_each, raw_get, run, shared_real_cache, Output,
    COMMAND_DEADLINE,
};
use dune_cachefs::dune::layout::EntryKind;

/// Two boxes, so that routing through the proxy is exercised.
const TWO_BOXES: [&[(&str, &str)]; 2] = [&[("0x00", "0x7f")], &[("0x80", "0xff")]];

/// `dune-cachefs ARGS` with the realm's config and the credential cache `cache`.
fn as_user(cluster: &KerberosCluster, cache: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let mut command = common::dune_cachefs_command();
    command.envs(cluster.kdc.client_env(cache)).args(args);
    run(&mut command, COMMAND_DEADLINE)
}

fn push(cluster: &KerberosCluster, cache: &Path, db: &Path) -> Output {
    as_user(
        cluster,
        cache,
        &[
            "push".as_ref(),
            "--config".as_ref(),
            cluster.config.as_os_str(),
            db.as_os_str(),
        ],
    )
}

/// Entries held by the boxes.
fn held(cluster: &KerberosCluster) -> usize {
    cluster.boxes.iter().map(|b| entries(b.root()).len()).sum()
}

/// A push that must be refused with `said`, storing nothing.
fn assert_refused_push(cluster: &KerberosCluster, cache: &Path, db: &Path, said: &str) {
    let out = push(cluster, cache, db);
    assert!(!out.status.success(), "push must fail: {}", out.describe());
    assert!(
        out.stderr.contains(said) || out.stdout.contains(said),
        "push should say {said:?}: {}",
        out.describe()
    );
    assert_eq!(held(cluster), 0, "a refused push stored something");
}

#[test]
fn push_and_get_present_a_ticket_and_only_writers_store() {
    let cache = shared_real_cache();
    let cluster = KerberosCluster::start(&TWO_BOXES);
    let kdc = &cluster.kdc;
    let all = entries(&cache.db);
    let no_ticket = cluster.dir().join("no-such-cache");

    // No ticket at all.
    assert_refused_push(
        &cluster,
        &no_ticket,
        &cache.db,
        "wants Kerberos: no Kerberos ticket for HTTP@localhost: run kinit",
    );

    // A ticket that has expired: valid 2 s, then past the realm's 1 s clock-skew tolerance.
    let expired = kdc.kinit(WRITER, "expired-cache", "2s");
    std::thread::sleep(Duration::from_secs(4));
    assert_refused_push(
        &cluster,
        &expired,
        &cache.db,
        "the Kerberos ticket for HTTP@localhost has expired: run kinit",
    );

    // A principal of the realm that may read but not write.
    let reader = kdc.kinit(READER, "reader-cache", "1h");
    assert_refused_push(
        &cluster,
        &reader,
        &cache.db,
        "refused to store: your Kerberos principal is not one the proxy lets write",
    );
    let access = cluster.proxy.access_log();
    assert!(
        access.contains(&format!("{READER} \"PUT ")) && access.contains("\" 403 "),
        "the proxy authenticated the reader and refused its PUTs:\n{access}"
    );

    // The writer stores everything, and the boxes name it.
    let writer = kdc.kinit(WRITER, "writer-cache", "1h");
    let out = push(&cluster, &writer, &cache.db);
    assert!(
        out.status.success(),
        "push as the writer: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!(
            ": {} uploaded, 0 already there, 0 collisions, 0 failed",
            all.len()
        )),
        "{}",
        out.describe()
    );
    assert_eq!(held(&cluster), all.len(), "entries on the boxes");
    for b in &cluster.boxes {
        let stored = entries(b.root());
        let log = b.log();
        assert!(!stored.is_empty(), "every box got some entries");
        for (entry, _) in stored {
            assert!(
                log.contains(&format!("{entry} stored by {WRITER}")),
                "the box's log names the writer of {entry}:\n{log}"
            );
        }
    }

    // Every entry comes back to the reader, verified, with its mode.
    let got = cluster.dir().join("got");
    fs::create_dir(&got).unwrap();
    parallel_each(&all, 4, |i, (entry, path)| {
        let out_file = got.join(format!("out-{i}"));
        let args = get_args(&cluster.config, entry, &out_file);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = as_user(&cluster, &reader, &args);
        assert!(out.status.success(), "get {entry}: {}", out.describe());
        assert!(
            fs::read(&out_file).unwrap() == fs::read(path).unwrap(),
            "get {entry}: other bytes"
        );
        if entry.kind == EntryKind::File {
            assert_eq!(
                common::mode(&out_file),
                common::mode(path),
                "mode of {entry}"
            );
        }
    });

    // Without a ticket, or with the expired one, a get fails saying so and writes nothing; a
    // ticket got again in the same cache (kinit after expiry) works at once.
    let (entry, path) = &all[0];
    let out_file = got.join("refused");
    for (cache, said) in [
        (
            &no_ticket,
            "no Kerberos ticket for HTTP@localhost: run kinit",
        ),
        (&expired, "has expired: run kinit"),
    ] {
        let args = get_args(&cluster.config, entry, &out_file);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = as_user(&cluster, cache, &args);
        assert_eq!(out.status.code(), Some(2), "get: {}", out.describe());
        assert!(
            out.stderr.contains(said),
            "get should say {said:?}: {}",
            out.describe()
        );
        assert!(!out_file.exists(), "a refused get wrote {out_file:?}");
    }
    let renewed = kdc.kinit(WRITER, "expired-cache", "1h");
    let args = get_args(&cluster.config, entry, &out_file);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = as_user(&cluster, &renewed, &args);
    assert!(out.status.success(), "get after kinit: {}", out.describe());
    assert!(fs::read(&out_file).unwrap() == fs::read(path).unwrap());
}

#[test]
fn a_collision_records_the_authenticated_principal_not_a_claimed_one() {
    let cache = shared_real_cache();
    let cluster = KerberosCluster::start(&[&[("0x00", "0xff")]]);
    let writer = cluster.kdc.kinit(WRITER, "writer-cache", "1h");
    let out = push(&cluster, &writer, &cache.db);
    assert!(out.status.success(), "push: {}", out.describe());

    // Another value for a rule the box holds: the bytes of another rule's metadata (valid
    // metadata, so the box takes it for a competing value), sent as curl would, claiming to be
    // someone else in the header the proxy sets.
    let metas = metadata_entries(&cache.db);
    let (rule, _) = &metas[0];
    let (_, other) = metas
        .iter()
        .find(|(e, p)| {
            e.kind == rule.kind && fs::read(p).unwrap() != fs::read(&metas[0].1).unwrap()
        })
        .expect("two metadata entries of one version");
    let url = format!(
        "{}/{}",
        cluster.boxes[0].url(),
        rule.relative_path().display()
    );
    let curl = run(
        Command::new("curl")
            .envs(cluster.kdc.client_env(&writer))
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--negotiate",
                "-u",
                ":",
            ])
            .arg("--cacert")
            .arg(cluster.dir().join("certs/ca.pem"))
            .args(["-H", "X-Dune-Cachefs-User: mallory@ELSEWHERE", "-T"])
            .arg(other)
            .arg(&url),
        COMMAND_DEADLINE,
    );
    assert_eq!(curl.stdout, "409", "a competing value: {}", curl.describe());

    let answer = raw_get(cluster.boxes[0].addr(), "/_collisions");
    let records: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let records = records.as_array().expect("a JSON array");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["entry"], rule.to_string());
    assert_eq!(records[0]["user"], WRITER, "{records:?}");
    assert!(
        cluster.boxes[0]
            .log()
            .contains(&format!("collision on {rule} from")),
        "{}",
        cluster.boxes[0].log()
    );
}
