//! A cluster of real cache boxes on loopback, fed a real Dune 2.9 cache by the real `push`, read
//! back by the real `get`: entries land on exactly their owning box, boxes stay `fsck`-clean, a
//! dead or frozen box costs its own keys and nothing else, and everything recovers when it comes
//! back.
//!
//! Every box is a `dune-cachefs box` process (see `common::BoxProcess`), killed when its test
//! ends; no test needs FUSE.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    dune_cachefs, entries, mode, parallel_each, raw_get, raw_put, raw_request, shared_real_cache,
    wait_until, BoxCluster, BoxProcess, Output, Running, COMMAND_DEADLINE,
};
use dune_cachefs::cluster::client::{ClientError, ClientOptions};
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::health::{HealthState, FIRST_BACKOFF};
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::dune::metadata::Metadata;
use dune_cachefs::fetch::{fetch_into, FetchError};
use dune_cachefs::store::{InstallOutcome, Store};

/// Three boxes, the first with two ranges, as in docs/cluster-config.md.
const THREE_BOXES: [&[(&str, &str)]; 3] = [
    &[("0x00", "0x3f"), ("0x80", "0xbf")],
    &[("0x40", "0x7f")],
    &[("0xc0", "0xff")],
];

/// The counts of push's summary line
/// (`pushed DB in T: N uploaded, N already there, N collisions, N failed`).
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    uploaded: usize,
    already_there: usize,
    collisions: usize,
    failed: usize,
}

fn summary(out: &Output) -> Summary {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("pushed "))
        .unwrap_or_else(|| panic!("push printed no summary: {}", out.describe()));
    let counts = line.rsplit_once(": ").map(|(_, c)| c).unwrap_or("");
    let count = |label: &str| -> usize {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(label)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` count in push's summary {line:?}"))
    };
    Summary {
        uploaded: count(" uploaded"),
        already_there: count(" already there"),
        collisions: count(" collisions"),
        failed: count(" failed"),
    }
}

fn push(cluster: &BoxCluster, db: &Path) -> Output {
    dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        db.as_os_str(),
    ])
}

/// The entries push names on its `failed: <entry>: <why>` lines, with the reasons.
fn failed_entries(out: &Output) -> Vec<(Entry, String)> {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("failed: "))
        .map(|rest| {
            let (entry, why) = rest.split_once(": ").unwrap_or((rest, ""));
            let entry = parse_entry(entry)
                .unwrap_or_else(|| panic!("push's failure line names no entry: {rest:?}"));
            (entry, why.to_string())
        })
        .collect()
}

/// Reads an entry as `Entry`'s `Display` writes it: `<kind dir>/<key>`.
fn parse_entry(text: &str) -> Option<Entry> {
    let (dir, key) = text.rsplit_once('/')?;
    Some(Entry {
        kind: EntryKind::from_dir(dir)?,
        key: key.parse().ok()?,
    })
}

/// Checks that each entry of `db` is on its owning box with the same bytes and mode and on no
/// other box, except those in `missing`, which are on no box at all. And that the boxes hold
/// nothing else.
fn assert_entries_on_their_owners(cluster: &BoxCluster, db: &Path, missing: &BTreeSet<Entry>) {
    let all = entries(db);
    let mut expected_per_box = vec![0usize; cluster.boxes.len()];
    for (entry, path) in &all {
        let owner = cluster.owner_of(&entry.key);
        for (i, b) in cluster.boxes.iter().enumerate() {
            let on_box = b.root().join(entry.relative_path());
            if i == owner && !missing.contains(entry) {
                let held = fs::read(&on_box).unwrap_or_else(|e| {
                    panic!("{entry} is not on its owner {} ({on_box:?}): {e}", b.url())
                });
                assert!(
                    held == fs::read(path).unwrap(),
                    "{entry} on {} differs from the original",
                    b.url()
                );
                if entry.kind == EntryKind::File {
                    assert_eq!(mode(&on_box), mode(path), "mode of {entry} on {}", b.url());
                }
                expected_per_box[i] += 1;
            } else {
                assert!(
                    !on_box.exists(),
                    "{entry} is on {} ({}), which must not hold it",
                    b.url(),
                    if i == owner {
                        "its owner, but push said it failed"
                    } else {
                        "not its owner"
                    }
                );
            }
        }
    }
    for (b, expected) in cluster.boxes.iter().zip(expected_per_box) {
        assert_eq!(
            entries(b.root()).len(),
            expected,
            "{} holds entries that are not in the pushed cache",
            b.url()
        );
    }
}

fn assert_fsck_clean(root: &Path) {
    let out = dune_cachefs(&["fsck".as_ref(), root.as_os_str()]);
    assert!(
        out.status.success(),
        "fsck of box root {root:?}: {}",
        out.describe()
    );
}

/// Fetches every entry of `db` with `get` under `config` and checks bytes (and, for artifacts
/// written with `-o`, the mode).
fn assert_get_returns_every_entry(config: &Path, db: &Path, scratch: &Path) {
    fs::create_dir_all(scratch).unwrap();
    parallel_each(&entries(db), 4, |i, (entry, path)| {
        let original = fs::read(path).unwrap();
        let key = entry.key.to_string();
        let mut args = vec!["get", "--config", config.to_str().unwrap(), &key];
        match entry.kind {
            EntryKind::File => {}
            EntryKind::Meta(v) => args.extend([
                "--meta",
                "--meta-version",
                if v == MetaVersion::V4 { "4" } else { "5" },
            ]),
        }
        // Artifacts and metadata, alternately to a file (-o) and to stdout.
        let out_file = scratch.join(format!("out-{i}"));
        let to_file = i % 2 == 0;
        if to_file {
            args.extend(["-o", out_file.to_str().unwrap()]);
        }
        let out = dune_cachefs(&args);
        assert!(out.status.success(), "get {entry}: {}", out.describe());
        let got = if to_file {
            fs::read(&out_file).unwrap()
        } else {
            out.stdout_bytes.clone()
        };
        assert!(
            got == original,
            "get {entry} returned other bytes than Dune stored"
        );
        if to_file && entry.kind == EntryKind::File {
            assert_eq!(mode(&out_file), mode(path), "mode of get -o {entry}");
        }
    });
    let leftovers: Vec<_> = fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with("out-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "get left scratch files: {leftovers:?}"
    );
}

#[test]
fn push_puts_every_entry_of_a_real_cache_on_exactly_its_owning_box() {
    let cache = shared_real_cache();
    let cluster = BoxCluster::start(&THREE_BOXES, "", &[]);
    let total = entries(&cache.db).len();

    let out = push(&cluster, &cache.db);
    assert!(out.status.success(), "push: {}", out.describe());
    assert_eq!(
        summary(&out),
        Summary {
            uploaded: total,
            already_there: 0,
            collisions: 0,
            failed: 0
        },
        "{}",
        out.describe()
    );
    assert_entries_on_their_owners(&cluster, &cache.db, &BTreeSet::new());
    for b in &cluster.boxes {
        assert!(
            !entries(b.root()).is_empty(),
            "{} got nothing: the config does not split this cache",
            b.url()
        );
        assert_fsck_clean(b.root());
    }

    assert_get_returns_every_entry(&cluster.config, &cache.db, &cluster.dir().join("got"));

    let again = push(&cluster, &cache.db);
    assert!(again.status.success(), "second push: {}", again.describe());
    assert_eq!(
        summary(&again),
        Summary {
            uploaded: 0,
            already_there: total,
            collisions: 0,
            failed: 0
        },
        "a second push must upload nothing: {}",
        again.describe()
    );
}

/// What must hold after a push during which box `victim` was dead: push exits 1 and names every
/// entry the victim owns; every other artifact is on its box; every other metadata entry is on its
/// box unless push held it back because an artifact it names is on the victim. Returns the
/// entries push reported.
fn assert_push_lost_only_the_victims_keys(
    cluster: &BoxCluster,
    db: &Path,
    victim: usize,
    out: &Output,
) -> BTreeSet<Entry> {
    assert_eq!(
        out.status.code(),
        Some(1),
        "push with a dead box must exit 1: {}",
        out.describe()
    );
    let failed = failed_entries(out);
    let failed_set: BTreeSet<Entry> = failed.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        failed.len(),
        failed_set.len(),
        "an entry reported twice: {}",
        out.describe()
    );
    assert_eq!(summary(out).failed, failed.len(), "{}", out.describe());
    let mut victims = 0;
    for (entry, _) in entries(db) {
        if cluster.owner_of(&entry.key) == victim {
            victims += 1;
            assert!(
                failed_set.contains(&entry),
                "{entry} belongs to the dead box but push does not report it: {}",
                out.describe()
            );
        }
    }
    assert!(victims > 0, "the dead box owns nothing of this cache");
    for (entry, why) in &failed {
        if cluster.owner_of(&entry.key) != victim {
            assert!(
                matches!(entry.kind, EntryKind::Meta(_)) && why.contains("did not reach its box"),
                "{entry} belongs to a live box but failed: {why}"
            );
        }
    }
    assert_entries_on_their_owners(cluster, db, &failed_set);
    failed_set
}

#[test]
fn push_with_a_dead_box_reports_its_keys_lands_the_rest_and_finishes_after_a_restart() {
    let cache = shared_real_cache();
    let mut cluster = BoxCluster::start(&THREE_BOXES, "", &[]);
    let victim = 1;
    cluster.boxes[victim].kill();

    let out = push(&cluster, &cache.db);
    assert_push_lost_only_the_victims_keys(&cluster, &cache.db, victim, &out);

    cluster.boxes[victim].restart();
    let again = push(&cluster, &cache.db);
    assert!(
        again.status.success(),
        "push after the restart: {}",
        again.describe()
    );
    assert_eq!(summary(&again).failed, 0, "{}", again.describe());
    assert_entries_on_their_owners(&cluster, &cache.db, &BTreeSet::new());
    assert_fsck_clean(cluster.boxes[victim].root());
}

#[test]
fn push_survives_a_box_killed_while_it_is_talking_to_it() {
    let cache = shared_real_cache();
    let mut cluster = BoxCluster::start(&THREE_BOXES, "", &[]);
    let victim = 2;
    // Freeze the victim first, so push is certainly mid-conversation with it when it dies: its
    // connections wait in the frozen box's accept queue until the SIGKILL resets them.
    cluster.boxes[victim].stop();
    let running = Running::spawn(
        common::dune_cachefs_command()
            .arg("push")
            .arg("--config")
            .arg(&cluster.config)
            .arg(&cache.db),
    );
    wait_until("push has connections queued on the frozen box", || {
        cluster.boxes[victim].accept_queue() > 0
    });
    cluster.boxes[victim].kill();
    let out = running.wait(COMMAND_DEADLINE);
    assert_push_lost_only_the_victims_keys(&cluster, &cache.db, victim, &out);

    cluster.boxes[victim].restart();
    let again = push(&cluster, &cache.db);
    assert!(
        again.status.success(),
        "push after the restart: {}",
        again.describe()
    );
    assert_entries_on_their_owners(&cluster, &cache.db, &BTreeSet::new());
    for b in &cluster.boxes {
        assert_fsck_clean(b.root());
    }
}

/// Stores one small artifact on `b`, returning it and its bytes.
fn put_one_artifact(b: &BoxProcess) -> (Entry, Vec<u8>) {
    let bytes = b"a frozen box must cost one timeout\n".to_vec();
    let key = key::file_key(Era::Md5, &bytes[..], false).unwrap();
    let entry = Entry {
        kind: EntryKind::File,
        key,
    };
    let answer = raw_put(
        b.addr(),
        &format!("/{}", entry.relative_path().display()),
        "",
        &bytes,
    );
    assert_eq!(answer.status, 201, "storing {entry}: {}", answer.text());
    (entry, bytes)
}

#[test]
fn get_from_a_frozen_box_fails_instead_of_hanging() {
    let cluster = BoxCluster::start(&[&[("0", "f")]], "(timeout_ms 1000)", &[]);
    let b = &cluster.boxes[0];
    let (entry, bytes) = put_one_artifact(b);
    let key = entry.key.to_string();
    let get = || dune_cachefs(&["get", "--config", cluster.config.to_str().unwrap(), &key]);

    let out = get();
    assert!(
        out.status.success(),
        "get from a live box: {}",
        out.describe()
    );
    assert_eq!(out.stdout_bytes, bytes);

    b.stop();
    let out = get();
    assert!(
        !out.status.success(),
        "get from a frozen box succeeded: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&b.url()),
        "get's error does not name the box: {}",
        out.describe()
    );
    b.resume();
    let out = get();
    assert!(
        out.status.success(),
        "get after SIGCONT: {}",
        out.describe()
    );
}

#[test]
fn a_frozen_box_costs_one_timeout_then_requests_fail_fast_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let (entry, _) = put_one_artifact(&b);
    let local_root = dir.path().join("local");
    fs::create_dir(&local_root).unwrap();
    let store = Store::open(&local_root).unwrap();

    let timeout = Duration::from_secs(1);
    let options = ClientOptions {
        connect_timeout: timeout,
        io_timeout: timeout,
        ..ClientOptions::default()
    };
    let cluster = Cluster::new(ClusterConfig::single(b.url().parse().unwrap()), &options).unwrap();
    let client = cluster.owner(&entry.key);
    let fetched = fetch_into(client, &store, &entry).expect("fetch from a live box");
    assert_eq!(fetched, Some(InstallOutcome::Stored));

    b.stop();
    let started = Instant::now();
    let first = fetch_into(client, &store, &entry);
    let first_took = started.elapsed();
    match &first {
        Err(e @ FetchError::Box(ClientError::Transport { .. })) => assert!(e.is_box_unavailable()),
        other => panic!("the first request to a frozen box: {other:?}, want a transport error"),
    }
    // A timeout cannot fire early; it may fire late on a loaded machine, so no upper bound.
    assert!(
        first_took >= timeout / 2,
        "the first request failed after {first_took:?}, before the {timeout:?} timeout"
    );
    assert!(matches!(client.health(), HealthState::Down { .. }));

    let started = Instant::now();
    let second = fetch_into(client, &store, &entry);
    let second_took = started.elapsed();
    assert!(
        matches!(second, Err(FetchError::Box(ClientError::BoxDown { .. }))),
        "the second request to a box marked down: {second:?}, want BoxDown"
    );
    assert!(
        second_took < timeout / 2,
        "the second request took {second_took:?}: it should fail at once, not wait for the \
         {timeout:?} timeout"
    );

    b.resume();
    // Past the back-off, one probe goes through; retry (bounded) in case a loaded machine makes
    // the probe itself time out and doubles the back-off.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    std::thread::sleep(FIRST_BACKOFF);
    loop {
        match fetch_into(client, &store, &entry) {
            Ok(Some(_)) => break,
            Err(FetchError::Box(ClientError::BoxDown { retry_in, .. }))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(retry_in + Duration::from_millis(50))
            }
            Err(e) if e.is_box_unavailable() && Instant::now() < deadline => {}
            other => panic!("the box is back, but a request gets {other:?}"),
        }
    }
    assert_eq!(client.health(), HealthState::Up);
}

/// `POST /_trim` on `b`, answered 200, as JSON.
fn trim(b: &BoxProcess) -> serde_json::Value {
    let answer = raw_request(
        b.addr(),
        "POST /_trim HTTP/1.1\r\nHost: test\r\nContent-Length: 0",
        b"",
    );
    assert_eq!(answer.status, 200, "POST /_trim: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("the trim report is JSON")
}

/// The rules held by `b` that name an artifact `b` does not hold.
fn rules_naming_artifacts_elsewhere(b: &BoxProcess) -> BTreeSet<Entry> {
    entries(b.root())
        .into_iter()
        .filter(|(entry, path)| {
            entry.kind != EntryKind::File
                && Metadata::parse(&fs::read(path).unwrap())
                    .expect("pushed metadata parses")
                    .artifact_keys()
                    .any(|key| {
                        let artifact = Entry {
                            kind: EntryKind::File,
                            key,
                        };
                        !b.root().join(artifact.relative_path()).exists()
                    })
        })
        .map(|(entry, _)| entry)
        .collect()
}

/// A box holds the rules of its keys, but their artifacts mostly live on the boxes owning *their*
/// keys. With a real cache pushed to two boxes: `POST /_trim` without a bound removes nothing.
/// Then, with every entry last read two hours ago except every other one, read now through its box,
/// a trim bounded to the bytes of those read removes entries not read, artifacts and rules, in
/// the order of their (shared) last read and key, and stops as soon as the box is under its bound;
/// every rule read stays, though its artifacts are on the other box.
#[test]
fn a_box_trims_by_last_read_only_never_because_artifacts_live_on_another_box() {
    let cache = shared_real_cache();
    let mut cluster = BoxCluster::start(&[&[("0x00", "0x7f")], &[("0x80", "0xff")]], "", &[]);
    let out = push(&cluster, &cache.db);
    assert!(out.status.success(), "push: {}", out.describe());

    for b in &cluster.boxes {
        assert!(
            !rules_naming_artifacts_elsewhere(b).is_empty(),
            "{} holds no rule naming an artifact of the other box: nothing is tested",
            b.url()
        );
        let report = trim(b);
        assert_eq!(report["removed_artifacts"], 0, "{}: {report}", b.url());
        assert_eq!(report["removed_metadata"], 0, "{}: {report}", b.url());
        assert_eq!(report["size_after"], report["size_before"], "{report}");
    }
    assert_entries_on_their_owners(&cluster, &cache.db, &BTreeSet::new());

    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for i in 0..cluster.boxes.len() {
        let (root, port, url) = {
            let b = &cluster.boxes[i];
            (b.root().to_path_buf(), b.port(), b.url())
        };
        let held: Vec<(Entry, PathBuf, u64)> = entries(&root)
            .into_iter()
            .map(|(entry, path)| {
                let size = fs::metadata(&path).unwrap().len();
                (entry, path, size)
            })
            .collect();
        let read: BTreeSet<Entry> = held.iter().step_by(2).map(|(e, _, _)| *e).collect();
        // Room for those read and for the last by key of those not read.
        let last_not_read = held
            .iter()
            .filter(|(e, _, _)| !read.contains(e))
            .max_by_key(|(e, _, _)| e.key)
            .unwrap();
        let bound: u64 = held
            .iter()
            .filter(|(e, _, _)| read.contains(e))
            .map(|(_, _, size)| size)
            .sum::<u64>()
            + last_not_read.2;
        let rules_read_elsewhere: BTreeSet<Entry> =
            rules_naming_artifacts_elsewhere(&cluster.boxes[i])
                .intersection(&read)
                .copied()
                .collect();
        assert!(!rules_read_elsewhere.is_empty(), "{url}: nothing is tested");

        // The same box again, bounded (its periodic trim not due during the test).
        cluster.boxes[i].kill();
        let args: Vec<String> = [
            "--config",
            cluster.config.to_str().unwrap(),
            "--node",
            &url,
            "--max-size",
            &bound.to_string(),
            "--trim-interval",
            "3600",
        ]
        .map(String::from)
        .into();
        cluster.boxes[i] = BoxProcess::start(&root, port, &args).expect("the box restarts");
        let b = &cluster.boxes[i];
        for (_, path, _) in &held {
            let file = fs::File::open(path).unwrap();
            file.set_times(fs::FileTimes::new().set_accessed(two_hours_ago))
                .unwrap();
        }
        for (entry, path, _) in held.iter().filter(|(e, _, _)| read.contains(e)) {
            let answer = raw_get(b.addr(), &format!("/{}", entry.relative_path().display()));
            assert_eq!(answer.status, 200, "GET {entry}: {}", answer.text());
            assert!(answer.body == fs::read(path).unwrap(), "GET {entry}");
        }

        let report = trim(b);
        let kept: BTreeSet<Entry> = entries(&root).into_iter().map(|(e, _)| e).collect();
        let removed: Vec<&(Entry, PathBuf, u64)> =
            held.iter().filter(|(e, _, _)| !kept.contains(e)).collect();
        let size_after: u64 = held
            .iter()
            .filter(|(e, _, _)| kept.contains(e))
            .map(|(_, _, size)| size)
            .sum();
        assert_eq!(report["size_after"], size_after, "{url}: {report}");
        assert!(size_after <= bound, "{url}: {report}");
        let removed_of = |artifacts: bool| {
            removed
                .iter()
                .filter(|(e, _, _)| (e.kind == EntryKind::File) == artifacts)
                .count()
        };
        assert_eq!(report["removed_artifacts"], removed_of(true), "{report}");
        assert_eq!(report["removed_metadata"], removed_of(false), "{report}");
        assert!(
            removed_of(true) > 0 && removed_of(false) > 0,
            "{url}: a trim of every other entry removes artifacts and rules: {report}"
        );
        for entry in &read {
            assert!(kept.contains(entry), "{url} trimmed {entry}, read just now");
        }
        assert!(
            rules_naming_artifacts_elsewhere(b).is_superset(&rules_read_elsewhere),
            "{url} trimmed a rule read just now because its artifacts are elsewhere"
        );
        // Those not read share one last read, so they go by key, and only until the bound is met.
        let last_removed = removed.iter().map(|(e, _, _)| e.key).max().unwrap();
        assert!(kept.contains(&last_not_read.0), "{url}: {report}");
        for (entry, _, _) in held
            .iter()
            .filter(|(e, _, _)| kept.contains(e) && !read.contains(e))
        {
            assert!(
                entry.key > last_removed,
                "{url} kept {entry} but trimmed {last_removed}"
            );
        }
        let last_size = removed.iter().max_by_key(|(e, _, _)| e.key).unwrap().2;
        assert!(
            size_after + last_size > bound,
            "{url} trimmed more than its bound needs: {report}"
        );
    }
}
