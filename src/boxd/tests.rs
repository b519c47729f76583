//! The counts of what a box holds (`held` in `/_status`): right before, during and after the
//! startup count, across stores, refusals, trims and restarts. Requests go to a box in process
//! over an in-memory connection, so the test decides when the startup count runs.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BoxOptions, BoxService};
use crate::dune::key::{file_key, Era, Key};
use crate::dune::layout::{Entry, EntryKind, MetaVersion};
use crate::store::Store;

/// An artifact of `len` bytes, made different by `n`, and its entry.
fn artifact(n: usize, len: usize) -> (Entry, Vec<u8>) {
    let mut bytes = format!("artifact {n}\n").into_bytes();
    bytes.resize(len, b'.');
    let key = file_key(Era::Blake3, &bytes[..], false).unwrap();
    let entry = Entry {
        kind: EntryKind::File,
        key,
    };
    (entry, bytes)
}

/// Dune 2.9 metadata for rule `rule` naming `target`'s artifact `key`.
fn metadata(rule: u8, target: &str, key: &Key) -> (Entry, Vec<u8>) {
    let bytes = format!("((8:metadata)(5:files({}:{target}32:{key})))", target.len());
    let entry = Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key: Key::from_bytes([rule; 16]),
    };
    (entry, bytes.into_bytes())
}

fn options(root: &Path, max_size: Option<u64>) -> BoxOptions {
    let mut options = BoxOptions::new(root.to_path_buf(), "127.0.0.1:1".parse().unwrap());
    options.max_size = max_size;
    options
}

/// Sends one request (`<METHOD> <path>`, with `body`) and returns the status and body.
async fn request(service: &BoxService, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let serving = tokio::spawn(service.clone().serve_connection(server, peer));
    let mut bytes = format!(
        "{head} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    client.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    serving.await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.expect("a status line"), body.as_bytes().to_vec())
}

async fn put(service: &BoxService, (entry, bytes): &(Entry, Vec<u8>)) -> u16 {
    let path = format!("PUT /{}", entry.relative_path().display());
    request(service, &path, bytes).await.0
}

/// The `/_status` document's `held` and `held_counted`.
fn held(service: &BoxService) -> (serde_json::Value, bool) {
    let status = service.state.status();
    let counted = status["held_counted"].as_bool().expect("held_counted");
    (status["held"].clone(), counted)
}

/// `held` for these entries and bytes of each kind, in the order of [`EntryKind::ALL`].
fn counts(each: [[u64; 2]; 3]) -> serde_json::Value {
    let mut held = serde_json::Map::new();
    for (kind, [count, bytes]) in EntryKind::ALL.iter().zip(each) {
        let counts = serde_json::json!({ "count": count, "bytes": bytes });
        held.insert(kind.dir().to_string(), counts);
    }
    serde_json::Value::Object(held)
}

/// What the root really holds, as `held`: counted by walking it.
fn walked(root: &Path) -> serde_json::Value {
    let store = Store::open(root).unwrap();
    let mut each = [[0; 2]; 3];
    for entry in store.entries().unwrap() {
        let kind = EntryKind::ALL
            .iter()
            .position(|k| *k == entry.kind)
            .unwrap();
        each[kind][0] += 1;
        each[kind][1] += store.lookup(&entry).unwrap().unwrap().size;
    }
    counts(each)
}

/// `held` once the startup count is done.
async fn held_once_counted(service: &BoxService) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (held, counted) = held(service);
        if counted {
            return held;
        }
        assert!(Instant::now() < deadline, "the startup count never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn held_counts_follow_stores_and_trims_and_a_restart_counts_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = artifact(0, 1000);
    let b = artifact(1, 1100);
    let rule_a = metadata(1, "_build/default/a", &a.0.key);
    {
        let store = Store::open(root).unwrap();
        for (entry, bytes) in [&a, &b, &rule_a] {
            let _ = store.install_bytes(*entry, bytes).unwrap();
        }
    }
    // About 4,750 bytes will be held, 4,600 of them in four artifacts of 1,000 to 1,300 bytes:
    // trimming to 3,000 drops the entries read longest ago, two artifacts whichever they are
    // (one is not enough and two are), and maybe rules read before them.
    let service = BoxService::open_uncounted(options(root, Some(3000))).unwrap();

    // Before the startup count: the box answers, and says its counts are not done.
    let (status, body) = request(&service, "GET /_status", b"").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["held_counted"], false, "{status}");
    assert_eq!(status["held"], counts([[0, 0]; 3]), "{status}");
    // Stored before its shard is counted: counted by the startup count, not twice.
    let c = artifact(2, 1200);
    assert_eq!(put(&service, &c).await, 201);
    assert!(!held(&service).1);

    service.state.held.count(&service.state.store);
    assert_eq!(held(&service), (walked(root), true));
    assert_eq!(held(&service).0["files/v4"]["count"], 3);
    assert_eq!(held(&service).0["files/v4"]["bytes"], 3300);

    let d = artifact(3, 1300);
    let rule_d = metadata(2, "_build/default/d", &d.0.key);
    let other_rule_d = metadata(2, "_build/default/other", &d.0.key);
    for (what, offer, status) in [
        ("a new artifact", &d, 201),
        ("an artifact held", &d, 200),
        ("new metadata", &rule_d, 201),
        ("the same metadata", &rule_d, 200),
        ("a colliding value", &other_rule_d, 409),
        (
            "bytes that do not match their key",
            &(d.0, b"wrong".to_vec()),
            422,
        ),
    ] {
        assert_eq!(put(&service, offer).await, status, "{what}");
        assert_eq!(held(&service), (walked(root), true), "after {what}");
    }
    let rules = rule_a.1.len() + rule_d.1.len();
    assert_eq!(held(&service).0["meta/v4"]["bytes"], rules);

    let (status, report) = request(&service, "POST /_trim", b"").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["removed_artifacts"], 2, "{report}");
    let after_trim = walked(root);
    assert_eq!(after_trim["files/v4"]["count"], 2);
    assert_eq!(held(&service), (after_trim.clone(), true));

    // A restart counts again, in the background, and finds what was there.
    drop(service);
    let service = BoxService::open(options(root, None)).unwrap();
    assert_eq!(held_once_counted(&service).await, after_trim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_during_the_startup_count_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Many entries, written as files: the count lists and stats, it does not verify.
    for i in 0..3000u32 {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&i.to_le_bytes());
        let entry = Entry {
            kind: EntryKind::File,
            key: Key::from_bytes(key),
        };
        let path = root.join(entry.relative_path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![b'x'; i as usize % 7]).unwrap();
    }
    let service = BoxService::open_uncounted(options(root, None)).unwrap();
    let state = service.state.clone();
    let counting = std::thread::spawn(move || state.held.count(&state.store));
    for n in 0..100 {
        assert_eq!(put(&service, &artifact(n, 10 + n)).await, 201);
    }
    counting.join().unwrap();
    assert_eq!(held(&service), (walked(root), true));
    assert_eq!(held(&service).0["files/v4"]["count"], 3100);
}

/// Whichever of artifacts `0..` has a key in the lower or upper half, as asked.
fn artifact_in_half(upper: bool) -> (Entry, Vec<u8>) {
    (0..)
        .map(|n| artifact(n, 100))
        .find(|(entry, _)| (entry.key.as_bytes()[0] >= 0x80) == upper)
        .unwrap()
}

#[tokio::test]
async fn a_box_serves_what_it_owned_stores_only_what_it_owns_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = crate::cluster::config::ClusterConfig::parse(
        "(lang dune-distributed-cache 1.0)
         (node (hostname http://a) (range 0x00 0x7f))
         (node (hostname http://b) (range 0x80 0xff))
         (previous (node (hostname http://a) (range 0x00 0xff)))",
    )
    .unwrap();
    let (mine, moved) = (artifact_in_half(false), artifact_in_half(true));
    let _ = Store::open(root)
        .unwrap()
        .install_bytes(moved.0, &moved.1)
        .unwrap();
    let mut options = options(root, None);
    options.node = super::Ownership::of(&config, &"http://a".parse().unwrap());
    let service = BoxService::open(options).unwrap();
    let get = |entry: &Entry| format!("GET /{}", entry.relative_path().display());

    // The moved key is served (it may not have moved yet), never stored; its own key is both.
    assert_eq!(request(&service, &get(&moved.0), b"").await.0, 200);
    assert_eq!(put(&service, &moved).await, 421);
    assert_eq!(put(&service, &mine).await, 201);
    let status = service.state.status();
    assert_eq!(
        status["previous_ranges"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let listing = format!("GET /files/v4/{}/", moved.0.key.shard());
    let (_, listed) = request(&service, &listing, b"").await;
    assert!(String::from_utf8_lossy(&listed).contains(&moved.0.key.to_string()));

    // Dropping removes what it does not own, and only that.
    let (status, body) = request(&service, "POST /_drop", b"").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["removed_entries"], 1, "{report}");
    assert_eq!(request(&service, &get(&moved.0), b"").await.0, 404);
    assert_eq!(request(&service, &get(&mine.0), b"").await.0, 200);
    assert_eq!(held_once_counted(&service).await, walked(root));

    // Read again without the previous table: the moved key is refused outright.
    service.state.set_ownership(
        super::Ownership::of(
            &crate::cluster::config::ClusterConfig::parse(
                "(lang dune-distributed-cache 1.0)
                 (node (hostname http://a) (range 0x00 0x7f))
                 (node (hostname http://b) (range 0x80 0xff))",
            )
            .unwrap(),
            &"http://a".parse().unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(request(&service, &get(&moved.0), b"").await.0, 421);
}
