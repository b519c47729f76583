//! Batches (`POST /_batch`) fetched from a real box through the library, as the mount fetches
//! ahead of Dune: every item verified on its own, a lie costing only its own item, the byte
//! budget refusing only the items it refuses, and a box killed midway answering what came
//! before and leaving the rest unanswered (the mount then fetches those one by one).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{raw_put, BoxCluster};
use dune_cachefs::cluster::client::{make_agent, BoxClient, ClientOptions};
use dune_cachefs::dune::key::{self, Era, Key};
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::fetch::{fetch_batch_verified, FetchError, Fetched};
use dune_cachefs::store::Store;

fn one_box() -> BoxCluster {
    BoxCluster::start(&[&[("0x00", "0xff")]], "", &[])
}

/// An artifact of `bytes`, stored on `b`.
fn stored_artifact(cluster: &BoxCluster, bytes: &[u8]) -> Entry {
    let entry = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, bytes, false).unwrap(),
    };
    put(cluster, &entry, bytes);
    entry
}

fn put(cluster: &BoxCluster, entry: &Entry, bytes: &[u8]) {
    let path = format!("/{}", entry.relative_path().display());
    let answer = raw_put(cluster.boxes[0].addr(), &path, "", bytes);
    assert!(matches!(answer.status, 201 | 204), "PUT {path}: {answer:?}");
}

fn client(cluster: &BoxCluster) -> BoxClient {
    BoxClient::new(
        &cluster.boxes[0].url(),
        make_agent(&ClientOptions::default()).unwrap(),
    )
}

/// What `fetch_batch_verified` gave for each item: `Ok(Some(bytes, hint))`, `Ok(None)` for a
/// miss, or the error.
type Outcome = Result<Option<(Vec<u8>, Vec<Entry>)>, FetchError>;

fn outcome(fetched: Result<Option<Fetched>, FetchError>) -> Outcome {
    fetched.map(|f| f.map(|f| (f.verified.read().unwrap(), f.next)))
}

#[test]
fn each_item_is_verified_alone_and_a_lie_or_the_budget_costs_only_its_own() {
    let cluster = one_box();
    let first = stored_artifact(&cluster, b"first artifact\n");
    let second = stored_artifact(&cluster, b"second artifact\n");
    let lied = stored_artifact(&cluster, b"an artifact the box will lie about\n");
    let missing = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"never stored\n"[..], false).unwrap(),
    };
    let rule = Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key: first.key,
    };
    let value = format!("((8:metadata)(5:files(9:default/x32:{})))", first.key);
    put(&cluster, &rule, value.as_bytes());
    let hint = Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key: second.key,
    };
    let hint_path = format!("/_hints/{}", rule.relative_path().display());
    let answer = raw_put(
        cluster.boxes[0].addr(),
        &hint_path,
        "",
        format!("{hint}\n").as_bytes(),
    );
    assert_eq!(answer.status, 204, "{answer:?}");
    // The box's copy goes bad on its disk: same length, other bytes.
    let on_disk = cluster.boxes[0].root().join(lied.relative_path());
    fs::set_permissions(&on_disk, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&on_disk, b"AN ARTIFACT THE BOX WILL LIE ABOUT\n").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = client(&cluster);
    let asked = [first, rule, lied, missing, second];
    let mut got: Vec<(usize, Outcome)> = Vec::new();
    let answered = fetch_batch_verified(
        &client,
        &store,
        &asked,
        true,
        |_, _| true,
        |i, fetched| got.push((i, outcome(fetched))),
    );
    assert!(matches!(answered, Ok(true)), "{answered:?}");
    assert_eq!(got.len(), asked.len(), "every item answered: {got:?}");
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(matches!(&got[0].1, Ok(Some((b, _))) if b == b"first artifact\n"));
    assert!(
        matches!(&got[1].1, Ok(Some((b, next))) if *b == value.as_bytes() && *next == [hint]),
        "metadata with its hint: {:?}",
        got[1]
    );
    assert!(
        matches!(&got[2].1, Err(FetchError::BadCopy { .. })),
        "the lie: {:?}",
        got[2]
    );
    assert!(matches!(&got[3].1, Ok(None)), "the miss: {:?}", got[3]);
    assert!(matches!(&got[4].1, Ok(Some((b, _))) if b == b"second artifact\n"));

    // A budget that refuses one entry's bytes refuses that item only.
    let mut got: Vec<(usize, Outcome)> = Vec::new();
    let answered = fetch_batch_verified(
        &client,
        &store,
        &[first, second],
        true,
        |entry, _| *entry != first,
        |i, fetched| got.push((i, outcome(fetched))),
    );
    assert!(matches!(answered, Ok(true)), "{answered:?}");
    assert!(
        matches!(&got[0], (0, Err(FetchError::OverBudget))),
        "{got:?}"
    );
    assert!(matches!(&got[1], (1, Ok(Some((b, _)))) if b == b"second artifact\n"));
}

#[test]
fn a_box_killed_midway_answers_what_came_before_and_leaves_the_rest() {
    let mut cluster = one_box();
    let before = stored_artifact(&cluster, b"sent before the kill\n");
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let large = stored_artifact(&cluster, &big);
    let after = stored_artifact(&cluster, b"never sent\n");
    let big_key: Key = large.key;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = client(&cluster);
    let mut got: Vec<(usize, Outcome)> = Vec::new();
    let mut killed = false;
    let answered = fetch_batch_verified(
        &client,
        &store,
        &[before, large, after],
        true,
        |entry, _| {
            if entry.key == big_key && !killed {
                cluster.boxes[0].kill();
                killed = true;
            }
            true
        },
        |i, fetched| got.push((i, outcome(fetched))),
    );
    assert!(answered.is_err(), "the batch went on: {answered:?}");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(&got[0], (0, Ok(Some((b, _)))) if b == b"sent before the kill\n"));
    let left: Vec<_> = walk(dir.path());
    assert!(left.is_empty(), "left in the store: {left:?}");
}

/// The files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
