//! A fake cache box for the tests: a plain `std` TCP server with canned HTTP answers, which
//! misbehaves in one chosen way. Test code, not product: it speaks just enough of the protocol
//! (`HEAD` and `GET` of entries, 404 for the rest) for a mount to use it as a box.
//!
//! Each fake box has one [`Behaviour`], so a suite can run one per way of failing, side by side
//! in one cluster, without one box's failures (and the client's back-off for it) touching
//! another's.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dune_cachefs::dune::layout::{Entry, EntryKind};

use crate::common;
use crate::common::stopping::{lock, Connections};

/// How a fake box answers a `GET` (and, for one, a `HEAD`) of an entry it holds.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Correctly.
    Honest,
    /// Declares the whole length, sends the first `keep` bytes, and closes the connection.
    Truncate { keep: usize },
    /// Declares `declared` bytes, fewer than the entry has, and sends the whole entry.
    DeclareShort { declared: usize },
    /// Declares a `Content-Length` that is not a number.
    GarbageLength,
    /// Answers with bytes that are not HTTP at all.
    NotHttp,
    /// Answers `HEAD` with 200 but no `Content-Length` (a `GET` is answered correctly).
    HeadWithoutLength,
    /// Sends the body in `pieces` pieces, `gap` apart: slow, but each gap within the client's
    /// timeout.
    Trickle { pieces: usize, gap: Duration },
    /// Reads the request and never answers, keeping the connection open.
    Stall,
    /// Answers every request correctly, `delay` late: slow, but alive.
    Late { delay: Duration },
}

struct Shared {
    behaviour: Behaviour,
    entries: Mutex<HashMap<String, Vec<u8>>>,
    /// `"<METHOD> <path>"` of every request received.
    requests: Mutex<Vec<String>>,
    connections: Connections,
}

/// A fake box on a loopback port. Dropping it closes every connection (a stalled one too).
pub struct FakeBox {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeBox {
    /// Starts a fake box that behaves as `behaviour` says.
    pub fn start(behaviour: Behaviour) -> FakeBox {
        let listener =
            TcpListener::bind(("127.0.0.1", common::free_port())).expect("fake box port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behaviour,
            entries: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            connections: Connections::default(),
        });
        common::serve_each(listener, shared.clone(), |s| &s.connections, serve);
        FakeBox { addr, shared }
    }

    /// Its URL, for the cluster config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes it hold `entry` with these bytes.
    pub fn hold(&self, entry: &Entry, bytes: Vec<u8>) {
        lock(&self.shared.entries).insert(path_of(entry), bytes);
    }

    /// How many `GET`s it received so far.
    pub fn gets(&self) -> usize {
        let requests = lock(&self.shared.requests);
        requests.iter().filter(|r| r.starts_with("GET ")).count()
    }
}

impl Drop for FakeBox {
    fn drop(&mut self) {
        self.shared.connections.stop(self.addr);
    }
}

fn path_of(entry: &Entry) -> String {
    format!("/{}", entry.relative_path().display())
}

/// Reads one request head; `None` if the client went away first.
fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut first = head.lines().next()?.split(' ');
    Some((first.next()?.to_string(), first.next()?.to_string()))
}

/// Answers requests on one connection until the client closes it or the behaviour ends it.
fn serve(shared: &Shared, mut stream: TcpStream) {
    while let Some((method, path)) = read_head(&mut stream) {
        lock(&shared.requests).push(format!("{method} {path}"));
        if let Behaviour::Late { delay } = shared.behaviour {
            std::thread::sleep(delay);
        }
        let held = lock(&shared.entries).get(&path).cloned();
        let Some(bytes) = held else {
            if write_head(&mut stream, "404 Not Found", "Content-Length: 0\r\n").is_err() {
                return;
            }
            continue;
        };
        let exe = if path.starts_with(&format!("/{}/", EntryKind::File.dir())) {
            "X-Executable: 0\r\n"
        } else {
            ""
        };
        let length = format!("Content-Length: {}\r\n{exe}", bytes.len());
        let keep_going = match (method.as_str(), shared.behaviour) {
            ("HEAD", Behaviour::HeadWithoutLength) => write_head(&mut stream, "200 OK", exe),
            ("HEAD", _) => write_head(&mut stream, "200 OK", &length),
            (_, Behaviour::Honest | Behaviour::HeadWithoutLength | Behaviour::Late { .. }) => {
                write_head(&mut stream, "200 OK", &length).and_then(|()| stream.write_all(&bytes))
            }
            (_, Behaviour::Truncate { keep }) => {
                let _ = write_head(&mut stream, "200 OK", &length)
                    .and_then(|()| stream.write_all(&bytes[..keep]));
                break;
            }
            (_, Behaviour::DeclareShort { declared }) => {
                let short = format!("Content-Length: {declared}\r\n{exe}");
                let _ = write_head(&mut stream, "200 OK", &short)
                    .and_then(|()| stream.write_all(&bytes));
                break;
            }
            (_, Behaviour::GarbageLength) => {
                let _ = write_head(&mut stream, "200 OK", "Content-Length: lots\r\n")
                    .and_then(|()| stream.write_all(&bytes));
                break;
            }
            (_, Behaviour::NotHttp) => {
                let _ = stream.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n");
                break;
            }
            (_, Behaviour::Trickle { pieces, gap }) => write_head(&mut stream, "200 OK", &length)
                .and_then(|()| {
                    for piece in bytes.chunks(bytes.len().div_ceil(pieces)) {
                        std::thread::sleep(gap);
                        stream.write_all(piece)?;
                    }
                    Ok(())
                }),
            (_, Behaviour::Stall) => {
                while !shared.connections.stopped() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        };
        if keep_going.is_err() {
            break;
        }
    }
    // Explicitly: the clone kept for `Drop` would otherwise keep the connection open.
    let _ = stream.shutdown(Shutdown::Both);
}

fn write_head(stream: &mut TcpStream, status: &str, headers: &str) -> std::io::Result<()> {
    stream.write_all(format!("HTTP/1.1 {status}\r\n{headers}\r\n").as_bytes())
}
