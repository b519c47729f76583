//! The faults of an S3 bucket node that the real store of `s3_store.rs` cannot be made to
//! produce on demand, from a fake S3 server (a plain `std` TCP server that checks no signature):
//! `503 SlowDown`, an expired session token, a body cut short mid-transfer, and a store that
//! ignores `If-None-Match` (first writer wins by reading after writing instead). Each fails as a
//! box does: fast, the node marked down, a miss or a retried upload, never a lie installed, and
//! a refusal in plain words.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::stopping::{lock, Connections};
use dune_cachefs::cluster::client::{ClientError, ClientOptions, PutOutcome};
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::node::NodeClient;
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::key::Key;
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::fetch::{fetch_into, FetchError};
use dune_cachefs::store::Store;
use dune_cachefs::upload::{upload_entry, UploadError};

/// How the fake store answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// Every request: `503 SlowDown`.
    SlowDown,
    /// Every request: `400 ExpiredToken`, as AWS answers a session token past its time.
    ExpiredToken,
    /// Holds objects; a GET declares the whole length, sends half and closes.
    CutShort,
    /// Holds objects, and stores every PUT whatever its `If-None-Match`.
    IgnoresConditions,
}

struct Shared {
    behaviour: Behaviour,
    objects: Mutex<HashMap<String, Vec<u8>>>,
    requests: Mutex<Vec<String>>,
    connections: Connections,
}

/// A fake S3 store on a loopback port; dropping it closes every connection.
struct FakeS3 {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeS3 {
    fn start(behaviour: Behaviour) -> FakeS3 {
        let listener = TcpListener::bind(("127.0.0.1", common::free_port())).expect("port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behaviour,
            objects: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            connections: Connections::default(),
        });
        common::serve_each(listener, shared.clone(), |s| &s.connections, serve);
        FakeS3 { addr, shared }
    }

    /// A config of one bucket node over every key on this store, and the cluster it makes.
    fn cluster(&self, dir: &std::path::Path) -> (std::path::PathBuf, Cluster) {
        common::seaweed::use_test_credentials();
        let path = dir.join("cluster.sexp");
        fs::write(
            &path,
            format!(
                "(lang dune-distributed-cache 1.0)\n\
                 (node (s3 (endpoint http://{}) (bucket fake) (prefix p)) (range 0 f))\n",
                self.addr
            ),
        )
        .unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        (
            path,
            Cluster::new(config, &ClientOptions::default()).unwrap(),
        )
    }

    fn hold(&self, entry: &Entry, bytes: Vec<u8>) {
        let path = format!("/fake/p/{}", entry.relative_path().display());
        lock(&self.shared.objects).insert(path, bytes);
    }

    fn requests(&self) -> usize {
        lock(&self.shared.requests).len()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.shared.connections.stop(self.addr);
    }
}

/// Answers one request per connection.
fn serve(shared: &Shared, mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    lock(&shared.requests).push(format!("{method} {path}"));
    let error = |status: &str, code: &str, message: &str| {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message></Error>"
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )
        .into_bytes()
    };
    let held = lock(&shared.objects).get(&path).cloned();
    let answer = match (shared.behaviour, method) {
        (Behaviour::SlowDown, _) => error(
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        (Behaviour::ExpiredToken, _) => error(
            "400 Bad Request",
            "ExpiredToken",
            "The provided token has expired.",
        ),
        (_, "PUT") => {
            lock(&shared.objects).insert(path, body);
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        (_, "GET" | "HEAD") if target.contains("list-type=2") => {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
                       xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></ListBucketResult>";
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            )
            .into_bytes()
        }
        (_, "GET" | "HEAD") => match held {
            None => error("404 Not Found", "NoSuchKey", "The key does not exist."),
            Some(bytes) => {
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                )
                .into_bytes();
                if method == "GET" {
                    match shared.behaviour {
                        Behaviour::CutShort => answer.extend_from_slice(&bytes[..bytes.len() / 2]),
                        _ => answer.extend_from_slice(&bytes),
                    }
                }
                answer
            }
        },
        _ => error("405 Method Not Allowed", "MethodNotAllowed", "No."),
    };
    let _ = stream.write_all(&answer);
    let _ = stream.shutdown(Shutdown::Both);
}

fn artifact(bytes: &[u8]) -> Entry {
    Entry {
        kind: EntryKind::File,
        key: dune_cachefs::dune::key::ContentHasher::digest_reader(None, bytes)
            .unwrap()
            .key(dune_cachefs::dune::key::Era::Md5, false)
            .expect("an MD5-era key"),
    }
}

#[test]
fn slow_down_is_a_node_in_trouble_and_uploads_are_retried() {
    let store = FakeS3::start(Behaviour::SlowDown);
    let dir = tempfile::tempdir().unwrap();
    let (_, cluster) = store.cluster(dir.path());
    let local = Store::open(dir.path()).unwrap();
    let entry = artifact(b"some bytes");
    let e = fetch_into(cluster.owner(&entry.key), &local, &entry).unwrap_err();
    assert!(e.is_box_unavailable(), "{e}");
    assert!(e.to_string().contains("SlowDown"), "{e}");
    // Marked down: the next request fails at once, without reaching the store.
    let sent = store.requests();
    let e = fetch_into(cluster.owner(&entry.key), &local, &entry).unwrap_err();
    assert!(
        matches!(e, FetchError::Box(ClientError::BoxDown { .. })),
        "{e}"
    );
    assert_eq!(
        store.requests(),
        sent,
        "a request reached a node marked down"
    );
    // An upload is not refused for good: the uploader retries it with back-off.
    fs::create_dir_all(local.path_of(&entry).parent().unwrap()).unwrap();
    fs::write(local.path_of(&entry), b"some bytes").unwrap();
    let e = upload_entry(&cluster, &local, &entry).unwrap_err();
    assert!(matches!(e, UploadError::Box { .. }), "{e}");
}

#[test]
fn an_expired_token_is_refused_in_plain_words() {
    let store = FakeS3::start(Behaviour::ExpiredToken);
    let dir = tempfile::tempdir().unwrap();
    let (config, cluster) = store.cluster(dir.path());
    let local = Store::open(dir.path()).unwrap();
    let entry = artifact(b"some bytes");
    let e = fetch_into(cluster.owner(&entry.key), &local, &entry).unwrap_err();
    assert!(
        matches!(&e, FetchError::Box(ClientError::Refused { reason, .. })
            if reason.contains("ExpiredToken") && reason.contains("have expired: renew them")),
        "{e}"
    );
    assert!(e.is_box_unavailable(), "a refused node's keys are misses");
    let get = common::run(
        common::dune_cachefs_command()
            .env("AWS_ACCESS_KEY_ID", "temporary")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_SESSION_TOKEN", "old-token")
            .args(["get", "--config"])
            .arg(&config)
            .arg(entry.key.to_string()),
        common::COMMAND_DEADLINE,
    );
    assert!(!get.status.success());
    assert!(
        get.stderr
            .contains("credentials from the environment (AWS_ACCESS_KEY_ID) have expired"),
        "{}",
        get.describe()
    );
}

#[test]
fn a_transfer_cut_short_installs_nothing() {
    let store = FakeS3::start(Behaviour::CutShort);
    let dir = tempfile::tempdir().unwrap();
    let (_, cluster) = store.cluster(dir.path());
    let local = Store::open(dir.path()).unwrap();
    let bytes = vec![7u8; 300_000];
    let entry = artifact(&bytes);
    store.hold(&entry, bytes);
    let NodeClient::S3(_) = cluster.owner(&entry.key) else {
        panic!("not an S3 node");
    };
    let head = cluster.owner(&entry.key).head(&entry).unwrap().unwrap();
    assert_eq!(head.size, 300_000);
    let e = fetch_into(cluster.owner(&entry.key), &local, &entry).unwrap_err();
    assert!(
        matches!(e, FetchError::Box(ClientError::Transport { .. })),
        "{e}"
    );
    assert!(
        !local.path_of(&entry).exists(),
        "a partial entry was installed"
    );
}

#[test]
fn a_store_ignoring_conditions_gets_read_after_write_detection() {
    let store = FakeS3::start(Behaviour::IgnoresConditions);
    let dir = tempfile::tempdir().unwrap();
    let (_, cluster) = store.cluster(dir.path());
    let NodeClient::S3(bucket) = &cluster.clients()[0] else {
        panic!("not an S3 node");
    };
    assert!(
        !bucket.conditional_writes().unwrap(),
        "the probe was fooled"
    );
    let rule = Entry {
        kind: EntryKind::Meta(MetaVersion::V5),
        key: Key::from_bytes([0x42; 16]),
    };
    let value = |text: &str| {
        let path = dir.path().join(text);
        fs::write(&path, text).unwrap();
        fs::File::open(path).unwrap()
    };
    let node = cluster.owner(&rule.key);
    assert_eq!(
        node.put(&rule, &value("first"), false).unwrap(),
        PutOutcome::Stored
    );
    assert!(matches!(
        node.put(&rule, &value("second"), false).unwrap(),
        PutOutcome::Collision { .. }
    ));
    assert_eq!(
        node.put(&rule, &value("first"), false).unwrap(),
        PutOutcome::AlreadyPresent
    );
    let held = lock(&store.shared.objects)
        .get(&format!("/fake/p/{}", rule.relative_path().display()))
        .cloned();
    assert_eq!(
        held.as_deref(),
        Some(&b"first"[..]),
        "the first value was overwritten"
    );
}
