//! A TCP relay in front of a server, for the tests and the benchmarks: every byte between a
//! client and the server passes through it, delayed and throttled as the caller says.
//!
//! - **Delay** (changed at any time, for the bytes read from then on): every byte, in both
//!   directions, reaches the other side one one-way delay after the relay read it, as over a link
//!   with that latency. Each direction is a
//!   queue of timestamped pieces between a reading thread and a writing thread, so a connection
//!   has as many bytes in flight as arrive during the delay: the delay costs latency, never
//!   throughput (no waiting for one piece before reading the next). The benchmarks use it for the
//!   network latency the loopback does not have (`examples/delay-relay.rs`; this kernel has no
//!   `tc netem`).
//! - **Throttle** (changed at any time, each direction on its own): at most so many bytes per
//!   second. The fault suite slows transfers down with it, so that "kill the box *while* a
//!   64 MiB transfer runs" is deterministic whatever the machine's speed.
//!
//! Every connection gets its own connection to the server, and its own four threads.
//!
//! The relay does not hide a death: when either side closes or fails, it delivers what it already
//! read from that side and then closes both, so the client sees exactly what a killed server does
//! to a connection (the bytes the server's kernel had already sent, then the end).
//!
//! Only `std` and `ureq` (the crate's own HTTP client, for [`round_trips`]):
//! `examples/delay-relay.rs` includes this file and `stopping.rs` by path.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stopping::Connections;

/// The largest piece read at once.
const PIECE: usize = 64 * 1024;

/// The most pieces in flight in one direction of one connection (at most 64 MiB): enough for
/// any throughput the loopback reaches over the benchmarks' delays, while a client that stops
/// reading still holds the server back (the reading thread waits, and so does TCP).
const IN_FLIGHT: usize = 1024;

/// Which way bytes flow.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Server to client: fetched bodies.
    Down,
    /// Client to server: uploaded bodies.
    Up,
}

struct Shared {
    target: SocketAddr,
    /// Nanoseconds added to each byte's trip, each way.
    delay: AtomicU64,
    /// Bytes per second each way; 0 is unlimited.
    down_rate: AtomicU64,
    up_rate: AtomicU64,
    connections: Connections,
}

/// A relay on its own loopback port forwarding to `target`. Dropping it closes every connection.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `target`, without delay or limit.
    pub fn start(target: SocketAddr) -> Relay {
        Relay::delayed(target, Duration::ZERO)
    }

    /// Starts relaying from a free loopback port to `target`, every byte `one_way` late in each
    /// direction (a round trip through it is `2 * one_way` longer), without limit.
    pub fn delayed(target: SocketAddr, one_way: Duration) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a loopback port for the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared {
            target,
            delay: AtomicU64::new(nanos(one_way)),
            down_rate: AtomicU64::new(0),
            up_rate: AtomicU64::new(0),
            connections: Connections::default(),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.connections.stopped() {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || relay_connection(&shared, client));
            }
        });
        Relay { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to name in a cluster config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Delays every byte read from now on by `one_way`, each way.
    pub fn set_delay(&self, one_way: Duration) {
        self.shared.delay.store(nanos(one_way), Ordering::Relaxed);
    }

    /// Limits one direction to `bytes_per_second` (0: unlimited), for connections open and new.
    pub fn throttle(&self, direction: Direction, bytes_per_second: u64) {
        self.shared
            .rate(direction)
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Lifts both limits.
    pub fn unthrottle(&self) {
        self.throttle(Direction::Down, 0);
        self.throttle(Direction::Up, 0);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.connections.stop(self.addr);
    }
}

/// `duration` in nanoseconds (saturating: centuries are not a delay anyone asks for).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Shared {
    fn rate(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Down => &self.down_rate,
            Direction::Up => &self.up_rate,
        }
    }
}

fn relay_connection(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(shared.target) else {
        // The server is dead: the client sees its connection closed without an answer.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let tracked = [
        shared.connections.track(&client),
        shared.connections.track(&server),
    ];
    if let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) {
        let up = shared.clone();
        std::thread::spawn(move || pump(&up, Direction::Up, client2, server2));
        pump(shared, Direction::Down, server, client);
    } else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    // The server's side has ended, so both sockets are closed or about to be (once what was read
    // last is delivered).
    for id in tracked {
        shared.connections.forget(id);
    }
}

/// What the reading side of a direction hands the writing side: bytes, or the end of the
/// stream, each with when it is due on the other side.
enum Piece {
    Bytes(Instant, Vec<u8>),
    End(Instant),
}

/// Copies `from` to `to` until either side ends, then closes both: this thread reads (at the
/// direction's rate), another writes each piece once it is due.
fn pump(shared: &Arc<Shared>, direction: Direction, from: TcpStream, to: TcpStream) {
    let (queue, pieces) = mpsc::sync_channel(IN_FLIGHT);
    let Ok(from2) = from.try_clone() else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        return;
    };
    std::thread::spawn(move || deliver(pieces, from2, to));
    read_pieces(shared, direction, from, &queue);
}

/// Reads `from` into pieces until it ends or the writing side has stopped.
fn read_pieces(
    shared: &Shared,
    direction: Direction,
    mut from: TcpStream,
    queue: &SyncSender<Piece>,
) {
    let due = || Instant::now() + Duration::from_nanos(shared.delay.load(Ordering::Relaxed));
    let mut buf = vec![0u8; PIECE];
    loop {
        let limit = shared.rate(direction).load(Ordering::Relaxed);
        // Pieces of a twentieth of a second at the limit, so the rate is smooth.
        let piece = if limit == 0 {
            buf.len()
        } else {
            (limit / 20).clamp(1, buf.len() as u64) as usize
        };
        let started = Instant::now();
        let n = match from.read(&mut buf[..piece]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if queue.send(Piece::Bytes(due(), buf[..n].to_vec())).is_err() {
            return;
        }
        if limit > 0 {
            let due = Duration::from_secs_f64(n as f64 / limit as f64);
            if let Some(left) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(left);
            }
        }
    }
    let _ = queue.send(Piece::End(due()));
}

/// Writes each piece to `to` once it is due; at the end of the stream (or when `to` fails) closes
/// both sockets, `from` too, which ends the other direction.
fn deliver(pieces: Receiver<Piece>, from: TcpStream, mut to: TcpStream) {
    for piece in pieces {
        let (due, bytes) = match &piece {
            Piece::Bytes(due, bytes) => (*due, Some(bytes)),
            Piece::End(due) => (*due, None),
        };
        if let Some(left) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        match bytes {
            Some(bytes) if to.write_all(bytes).is_ok() => {}
            _ => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// How long `GET /_status` takes, request by request, straight to a box and through a relay in
/// front of it.
pub struct RoundTrips {
    pub direct: Vec<Duration>,
    pub relayed: Vec<Duration>,
}

/// Times `requests` requests `GET /_status` to the box at `direct`, and as many through the
/// relay at `relayed`, alternating, each on one kept-alive connection (after a first request
/// that opens it, not timed): what the relay adds to a request's round trip.
pub fn round_trips(
    direct: SocketAddr,
    relayed: SocketAddr,
    requests: usize,
) -> Result<RoundTrips, ureq::Error> {
    let agent = ureq::Agent::new_with_defaults();
    let time = |addr: SocketAddr| -> Result<Duration, ureq::Error> {
        let started = Instant::now();
        agent
            .get(format!("http://{addr}/_status"))
            .call()?
            .body_mut()
            .read_to_vec()?;
        Ok(started.elapsed())
    };
    time(direct)?;
    time(relayed)?;
    let mut trips = RoundTrips {
        direct: Vec::with_capacity(requests),
        relayed: Vec::with_capacity(requests),
    };
    for _ in 0..requests {
        trips.direct.push(time(direct)?);
        trips.relayed.push(time(relayed)?);
    }
    Ok(trips)
}

/// The median of `times` (zero for none).
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}
