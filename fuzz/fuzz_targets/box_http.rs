//! Arbitrary bytes as a connection to a real box, in process: the request parser (hyper) and
//! the box's handling of whatever parses (routes, headers, bodies, stores). The box must never
//! panic or hang on a connection, must answer in HTTP/1.x if it answers at all, and must never
//! leave anything in its root but entries, its collision log and an empty temp directory.
//!
//! Input layout: the whole input is what the client sends, then it closes its side. One box
//! (on a temp root, owning every key, 1 MiB body limit, 2 s deadlines) serves every input, so
//! what one input stores, the next can read or collide with.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dune_cachefs::boxd::{BoxOptions, BoxService};
use dune_cachefs::dune::layout::Entry;
use dune_cachefs::store::TEMP_DIR;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The one box every input is sent to, its runtime and its temp root.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: BoxService,
    root: tempfile::TempDir,
}

fn the_box() -> &'static Fixture {
    static BOX: OnceLock<Fixture> = OnceLock::new();
    BOX.get_or_init(|| {
        let root = tempfile::tempdir().expect("a temp root");
        let mut options =
            BoxOptions::new(root.path().to_path_buf(), "127.0.0.1:1".parse().unwrap());
        options.max_body = 1 << 20;
        options.io_timeout = Duration::from_secs(2);
        let service = BoxService::open(options).expect("the box opens its root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Fixture {
            runtime,
            service,
            root,
        }
    })
}

/// What may be in a box's root: the collision log, the temp directory (checked empty), and
/// under `files/` and `meta/` the directories of the layout and entries.
fn check_root(root: &Path) {
    fn walk(root: &Path, dir: &Path) {
        for item in std::fs::read_dir(dir).expect("listing the root") {
            let path = item.expect("a directory entry").path();
            let relative = path.strip_prefix(root).unwrap();
            if path.is_dir() {
                assert!(
                    relative.components().count() <= 3,
                    "unexpected directory {relative:?}"
                );
                walk(root, &path);
            } else {
                assert!(
                    Entry::from_relative_path(relative).is_some(),
                    "unexpected file {relative:?}"
                );
            }
        }
    }
    for item in std::fs::read_dir(root).expect("listing the root") {
        let path = item.expect("a directory entry").path();
        let name = path.file_name().unwrap().to_str().unwrap();
        match name {
            "files" | "meta" => walk(root, &path),
            "dune-cachefs-collisions.jsonl" => {}
            TEMP_DIR => {
                // A writer cut short by the connection's end finishes on the blocking pool.
                let deadline = Instant::now() + Duration::from_secs(2);
                while std::fs::read_dir(&path).unwrap().next().is_some() {
                    assert!(
                        Instant::now() < deadline,
                        "a temp file outlived its connection"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            other => panic!("unexpected {other:?} in the root"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let the_box = the_box();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let answer = the_box.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(the_box.service.clone().serve_connection(server, peer));
        let exchange = async {
            let (mut from_box, mut to_box) = tokio::io::split(&mut client);
            let send = async {
                // The box may answer and hang up before taking it all.
                let _ = to_box.write_all(data).await;
                let _ = to_box.shutdown().await;
            };
            let mut answer = Vec::new();
            let receive = from_box.read_to_end(&mut answer);
            let (_, received) = tokio::join!(send, receive);
            received.map(|_| answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the box hung on a connection")
            .unwrap_or_default();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the connection never ended")
            .expect("the box panicked");
        answer
    });
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    check_root(the_box.root.path());
});
