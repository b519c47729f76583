//! An S3 bucket as the cluster, against a real multi-node SeaweedFS on loopback
//! (`common::seaweed`): `push` and `get` through the command line, the bucket's objects named
//! like the entries, everything fetched verified (a lying object is refused, its executable bit
//! too), first writer wins for metadata, listings page by page, one storage node killed, and the
//! refusals the real store gives (wrong credentials, a key that may only read) in plain words;
//! and a bucket handing keys to a box through a previous table (read fallback, `rebalance`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::growth::{
    assert_every_entry_readable, assert_exactly_on_owners, rebalance, rebalance_counts,
};
use common::seaweed::{SeaweedCluster, BUCKET, READ_KEY, READ_SECRET};
use dune_cachefs::cluster::client::{ClientOptions, PutOutcome};
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::key::{Key, Shard};
use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::fetch::{fetch_into, FetchError};
use dune_cachefs::store::Store;
use rusty_s3::S3Action;

/// The cluster a config names, as the library builds it.
fn connect(config: &Path) -> Cluster {
    let config = ClusterConfig::load(config).expect("the test's config loads");
    Cluster::new(config, &ClientOptions::default()).expect("clients")
}

/// Writes `body` straight into the bucket as `object`, with `headers` (signed), the way another
/// client of the store (or a broken one) could: nothing of ours checks it.
fn put_object(store: &SeaweedCluster, object: &str, body: &[u8], headers: &[(&str, &str)]) {
    let bucket = rusty_s3::Bucket::new(
        store.endpoint().parse().unwrap(),
        rusty_s3::UrlStyle::Path,
        BUCKET,
        "us-east-1",
    )
    .unwrap();
    let credentials =
        rusty_s3::Credentials::new(common::seaweed::ACCESS_KEY, common::seaweed::SECRET_KEY);
    let mut put = bucket.put_object(Some(&credentials), object);
    for (name, value) in headers {
        put.headers_mut().insert(*name, *value);
    }
    let url = put.sign(Duration::from_secs(60));
    let mut request = ureq::put(url.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send(body).expect("a direct PUT into the bucket");
}

#[test]
fn push_then_get_every_entry_from_a_real_seaweedfs_cluster() {
    let cache = common::shared_real_cache();
    let store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "team/a", "");
    let entries = common::entries(&cache.db);

    // push: every entry sent, then (again) every entry already there.
    let push = common::push(&config, &cache.db);
    assert!(push.status.success(), "push: {}", push.describe());
    assert!(
        push.stdout.contains(&format!(
            "{} uploaded, 0 already there, 0 collisions, 0 failed",
            entries.len()
        )),
        "{}",
        push.describe()
    );
    let again = common::push(&config, &cache.db);
    assert!(
        again.stdout.contains(&format!(
            "0 uploaded, {} already there, 0 collisions, 0 failed",
            entries.len()
        )),
        "{}",
        again.describe()
    );

    // The objects are named like the entries, under the prefix: the listings of every shard the
    // cache uses hold exactly its entries, and HEAD tells each artifact's executable bit.
    let cluster = connect(&config);
    let node = &cluster.clients()[0];
    assert_eq!(node.url(), format!("{}/{BUCKET}/team/a", store.endpoint()));
    for kind in [
        EntryKind::File,
        EntryKind::Meta(dune_cachefs::dune::layout::MetaVersion::V4),
    ] {
        let local: BTreeSet<Entry> = entries
            .iter()
            .map(|(e, _)| *e)
            .filter(|e| e.kind == kind)
            .collect();
        let shards: BTreeSet<Shard> = local.iter().map(|e| e.key.shard()).collect();
        let listed_shards: BTreeSet<Shard> = node
            .list_shards(kind)
            .expect("shards")
            .into_iter()
            .collect();
        assert_eq!(listed_shards, shards, "the {kind} shards listed");
        let mut listed = BTreeSet::new();
        for shard in shards {
            for item in node.list(kind, shard).expect("listing") {
                listed.insert(Entry {
                    kind,
                    key: item.key,
                });
            }
        }
        assert_eq!(listed, local, "the {kind} entries listed");
    }
    let mut executables = 0;
    for (entry, path) in entries.iter().filter(|(e, _)| e.kind == EntryKind::File) {
        let head = node.head(entry).expect("HEAD").expect("held");
        let executable = common::mode(path) & 0o111 != 0;
        assert_eq!(head.executable, Some(executable), "{entry}");
        assert_eq!(head.size, fs::metadata(path).unwrap().len(), "{entry}");
        executables += usize::from(executable);
    }
    assert!(executables > 0, "the real cache has executables");

    // Every entry comes back verified into an empty store, byte for byte and mode for mode,
    // and `get` on the command line fetches one the same way.
    let scratch = tempfile::tempdir().unwrap();
    let fetched = Store::open(scratch.path()).unwrap();
    for (entry, path) in &entries {
        let _installed = fetch_into(cluster.owner(&entry.key), &fetched, entry)
            .unwrap_or_else(|e| panic!("{entry}: {e}"))
            .unwrap_or_else(|| panic!("{entry} is not in the bucket"));
        let got = fetched.path_of(entry);
        assert_eq!(fs::read(&got).unwrap(), fs::read(path).unwrap(), "{entry}");
        if entry.kind == EntryKind::File {
            assert_eq!(
                common::mode(&got) & 0o111,
                common::mode(path) & 0o111,
                "{entry}"
            );
        }
    }
    let (artifact, path) = entries
        .iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .unwrap();
    let out = scratch.path().join("got");
    let get = common::dune_cachefs(&[
        "get".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        artifact.key.to_string().as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(get.status.success(), "get: {}", get.describe());
    assert_eq!(fs::read(&out).unwrap(), fs::read(path).unwrap());

    // A volume server of three dies: every entry still comes back, verified (each volume has a
    // copy on another server).
    let mut store = store;
    store.kill_volume(1);
    let cluster = connect(&config);
    let again = tempfile::tempdir().unwrap();
    let fetched = Store::open(again.path()).unwrap();
    for (entry, _) in &entries {
        let _installed = fetch_into(cluster.owner(&entry.key), &fetched, entry)
            .unwrap_or_else(|e| panic!("{entry} with a volume server dead: {e}"))
            .unwrap_or_else(|| panic!("{entry} is gone with a volume server dead"));
    }
}

#[test]
fn a_lying_bucket_is_caught_and_first_writer_wins() {
    let cache = common::shared_real_cache();
    let store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "lies", "");
    let cluster = connect(&config);
    let entries = common::entries(&cache.db);
    let (artifact, path) = entries
        .iter()
        .find(|(e, p)| e.kind == EntryKind::File && common::mode(p) & 0o111 == 0)
        .expect("a plain artifact");
    let bytes = fs::read(path).unwrap();
    let object = format!("lies/{}", artifact.relative_path().display());
    let scratch = tempfile::tempdir().unwrap();
    let local = Store::open(scratch.path()).unwrap();

    // Other bytes under the key: refused, nothing installed.
    let mut wrong = bytes.clone();
    wrong.push(b'!');
    put_object(&store, &object, &wrong, &[]);
    let e = fetch_into(cluster.owner(&artifact.key), &local, artifact).unwrap_err();
    assert!(matches!(e, FetchError::BadCopy { .. }), "{e}");
    assert!(
        !local.path_of(artifact).exists(),
        "a bad copy was installed"
    );

    // The right bytes, claimed executable when the key says not: refused too.
    put_object(&store, &object, &bytes, &[("x-amz-meta-executable", "1")]);
    let e = fetch_into(cluster.owner(&artifact.key), &local, artifact).unwrap_err();
    assert!(
        matches!(&e, FetchError::BadCopy { cause, .. } if cause.contains("executable")),
        "{e}"
    );
    assert!(!local.path_of(artifact).exists());
    // And honest: installed.
    put_object(&store, &object, &bytes, &[("x-amz-meta-executable", "0")]);
    let _installed = fetch_into(cluster.owner(&artifact.key), &local, artifact)
        .unwrap()
        .unwrap();

    // First writer wins: of two values for one rule, the second is a collision and the bucket
    // keeps the first; the first again is already there.
    let (meta, meta_path) = entries
        .iter()
        .find(|(e, _)| matches!(e.kind, EntryKind::Meta(_)))
        .unwrap();
    let node = cluster.owner(&meta.key);
    let first = fs::File::open(meta_path).unwrap();
    assert_eq!(node.put(meta, &first, false).unwrap(), PutOutcome::Stored);
    let other_path = scratch.path().join("other-value");
    fs::write(&other_path, b"(another value)").unwrap();
    let other = fs::File::open(&other_path).unwrap();
    assert!(matches!(
        node.put(meta, &other, false).unwrap(),
        PutOutcome::Collision { .. }
    ));
    let first = fs::File::open(meta_path).unwrap();
    assert_eq!(
        node.put(meta, &first, false).unwrap(),
        PutOutcome::AlreadyPresent
    );
    let mut held = Vec::new();
    node.fetch(meta, false, |chunk: &[u8]| {
        held.extend_from_slice(chunk);
        Ok::<_, ()>(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        held,
        fs::read(meta_path).unwrap(),
        "the bucket kept the first value"
    );

    // Many writers at once, each with its own value: exactly one wins.
    let racing = Key::from_bytes([0x5a; 16]);
    let rule = Entry {
        kind: meta.kind,
        key: racing,
    };
    let outcomes: Vec<PutOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = scratch.path().join(format!("value{i}"));
                fs::write(&path, format!("(value {i})")).unwrap();
                let cluster = &cluster;
                scope.spawn(move || {
                    let file = fs::File::open(&path).unwrap();
                    cluster.owner(&racing).put(&rule, &file, false).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = outcomes
        .iter()
        .filter(|o| **o == PutOutcome::Stored)
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
}

#[test]
fn listings_page_through_a_large_shard() {
    let store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "paged", "");
    let cluster = connect(&config);
    let node = &cluster.clients()[0];
    // More objects in one shard than one page of a listing holds (1 000).
    let scratch = tempfile::tempdir().unwrap();
    let body = scratch.path().join("body");
    fs::write(&body, b"x").unwrap();
    let keys: BTreeSet<Key> = (0..1100u32)
        .map(|i| {
            let mut bytes = [0u8; 16];
            bytes[0] = 0xab;
            bytes[12..].copy_from_slice(&i.to_be_bytes());
            Key::from_bytes(bytes)
        })
        .collect();
    let keys_vec: Vec<Key> = keys.iter().copied().collect();
    common::parallel_each(&keys_vec, 8, |_, key| {
        let entry = Entry {
            kind: EntryKind::File,
            key: *key,
        };
        let file = fs::File::open(&body).unwrap();
        node.put(&entry, &file, false).expect("PUT");
    });
    let listed: BTreeSet<Key> = node
        .list(EntryKind::File, Shard(0xab))
        .expect("listing")
        .into_iter()
        .map(|item| item.key)
        .collect();
    assert_eq!(listed.len(), keys.len());
    assert_eq!(listed, keys);
}

#[test]
fn refused_credentials_are_said_in_plain_words() {
    let cache = common::shared_real_cache();
    let store = SeaweedCluster::start();
    let config = store.write_config("cluster.sexp", "refusals", "");
    let entries = common::entries(&cache.db);
    let push = common::push(&config, &cache.db);
    assert!(push.status.success(), "push: {}", push.describe());
    let (artifact, _) = entries
        .iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .unwrap();
    let get = |key_id: &str, secret: &str| {
        common::run(
            common::dune_cachefs_command()
                .env("AWS_ACCESS_KEY_ID", key_id)
                .env("AWS_SECRET_ACCESS_KEY", secret)
                .args(["get", "--config"])
                .arg(&config)
                .arg(artifact.key.to_string()),
            common::COMMAND_DEADLINE,
        )
    };

    // A wrong secret, an unknown key: refused at start-up, saying where the credentials came
    // from and what is wrong with them.
    let wrong = get(common::seaweed::ACCESS_KEY, "not-the-secret");
    assert!(!wrong.status.success());
    assert!(
        wrong.stderr.contains("SignatureDoesNotMatch")
            && wrong
                .stderr
                .contains("credentials from the environment (AWS_ACCESS_KEY_ID) are wrong"),
        "{}",
        wrong.describe()
    );
    let unknown = get("no-such-key", "whatever");
    assert!(!unknown.status.success());
    assert!(
        unknown.stderr.contains("InvalidAccessKeyId") && unknown.stderr.contains("are wrong"),
        "{}",
        unknown.describe()
    );

    // No credentials at all: said before any request.
    let none = common::run(
        common::dune_cachefs_command()
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", store.dir().join("absent"))
            .args(["get", "--config"])
            .arg(&config)
            .arg(artifact.key.to_string()),
        common::COMMAND_DEADLINE,
    );
    assert!(!none.status.success());
    assert!(
        none.stderr.contains("no credentials")
            && none
                .stderr
                .contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
        "{}",
        none.describe()
    );

    // A profile of a credentials file (AWS_PROFILE) that may only read: `get` works, a push is
    // refused entry by entry with the store's reason, and nothing else fails.
    let file = store.dir().join("credentials");
    fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n\
             [reader]\naws_access_key_id = {READ_KEY}\naws_secret_access_key = {READ_SECRET}\n"
        ),
    )
    .unwrap();
    let as_reader = |command: &mut std::process::Command| {
        command
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", &file)
            .env("AWS_PROFILE", "reader");
    };
    let mut command = common::dune_cachefs_command();
    as_reader(&mut command);
    let out = store.dir().join("read-by-reader");
    command
        .args(["get", "--config"])
        .arg(&config)
        .arg(artifact.key.to_string())
        .arg("-o")
        .arg(&out);
    let read = common::run(&mut command, common::COMMAND_DEADLINE);
    assert!(read.status.success(), "{}", read.describe());
    let mut command = common::dune_cachefs_command();
    as_reader(&mut command);
    command
        .arg("push")
        .arg("--config")
        .arg(&config)
        .arg(&cache.db);
    let pushed = common::run(&mut command, common::COMMAND_DEADLINE);
    assert!(!pushed.status.success(), "{}", pushed.describe());
    assert!(
        pushed.stdout.contains("AccessDenied")
            && pushed
                .stdout
                .contains("credentials from profile \"reader\""),
        "{}",
        pushed.describe()
    );
}

/// A bucket gives the top half of its keys to a box, as docs/cluster-config.md tells an operator
/// to: while the config names the bucket in its previous table, every entry is read (from the
/// bucket until it moved); `rebalance` moves exactly the top half to the box, and `--drop` says
/// the bucket was not asked to drop; without the previous table every entry is still read.
#[test]
fn a_bucket_hands_keys_to_a_box_through_a_previous_table() {
    let cache = common::shared_real_cache();
    let store = SeaweedCluster::start();
    let bucket_config = store.write_config("bucket.sexp", "team/a", "");
    let push = common::push(&bucket_config, &cache.db);
    assert!(push.status.success(), "push: {}", push.describe());
    let moving = common::entries(&cache.db)
        .iter()
        .filter(|(e, _)| e.key.as_bytes()[0] >= 0x80)
        .count();
    assert!(
        moving > 0,
        "no entry of the cache has a key in the top half"
    );

    let bucket = format!(
        "(s3 (endpoint {}) (bucket {BUCKET}) (prefix team/a))",
        store.endpoint()
    );
    let port = common::free_port();
    let box_url = format!("http://127.0.0.1:{port}");
    let halves = format!(
        "(lang dune-distributed-cache 1.0)
         (node {bucket} (range 0x00 0x7f))
         (node (hostname {box_url}) (range 0x80 0xff))"
    );
    let config = store.dir().join("moving.sexp");
    fs::write(
        &config,
        format!("{halves}\n(previous (node {bucket} (range 0 f)))"),
    )
    .unwrap();
    let the_box = common::BoxProcess::start(
        &store.dir().join("box"),
        port,
        &[
            "--config".into(),
            config.display().to_string(),
            "--node".into(),
            box_url,
        ],
    )
    .expect("the box starts");
    assert!(common::entries(the_box.root()).is_empty());

    // Nothing moved yet: the box misses, the bucket answers.
    let scratch = store.dir().join("scratch");
    assert_every_entry_readable(&config, &cache.db, &scratch);

    let out = rebalance(&config, &["--drop"]);
    assert!(out.status.success(), "rebalance: {}", out.describe());
    let counts = rebalance_counts(&out);
    assert_eq!(counts["moved"], moving as u64, "{}", out.describe());
    assert_eq!(counts["failed"], 0, "{}", out.describe());
    assert!(
        out.stdout.contains(&format!(
            "not dropped: {}/{BUCKET}/team/a is an S3 bucket",
            store.endpoint()
        )),
        "{}",
        out.describe()
    );
    assert_exactly_on_owners(&config, &[&the_box], &cache.db);

    // The transition ended: each half is read from its owner alone.
    fs::write(&config, halves).unwrap();
    assert_every_entry_readable(&config, &cache.db, &scratch);
}
