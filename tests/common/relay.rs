//! A TCP relay in front of a server, for the tests and the benchmarks: every byte between a
//! client and the server passes through it, delayed and throttled as the caller says.
//!
//! - **Delay** (changed at any time, for the bytes read from then on): every byte, in both
//!   directions, reaches the other side one one-way delay after the relay read it, as over a link
//!   with that latency. Each direction of a connection is a queue of timestamped pieces, so a
//!   connection has as many bytes in flight as arrive during the delay: the delay costs latency,
//!   never throughput (no waiting for one piece before reading the next). The benchmarks use it
//!   for the network latency the loopback does not have (`examples/delay-relay.rs`; this kernel
//!   has no `tc netem`).
//! - **Throttle** (changed at any time, each direction on its own): at most so many bytes per
//!   second. The fault suite slows transfers down with it, so that "kill the box *while* a
//!   64 MiB transfer runs" is deterministic whatever the machine's speed.
//!
//! Every connection gets its own connection to the server.
//!
//! The relay does not hide a death: when either side closes or a read from it fails, it delivers
//! what it already read from that side and then closes both, so the client sees exactly what a
//! killed server does to a connection (the bytes the server's kernel had already sent, then the
//! end). A write that fails closes both at once.
//!
//! **Why one thread and `epoll`.** A real link costs the machines at its ends nothing for its
//! latency, but the relay runs on the machine it measures. Its first form, four threads a
//! connection handing pieces over channels and sleeping until each was due, took about half a
//! CPU-second in a cold Dune build on 2 CPUs, most of it in thread wake-ups, and that made a cold
//! mount at ~0.5 ms as slow as a cold mount behind the same relay with no delay at all. One
//! thread a relay serves every connection from one `epoll` set with nanosecond timeouts, and
//! reuses its buffers: a wake-up then serves whatever is ready or due on any connection.
//!
//! `std`, `rustix` (the crate's system-call crate, with `event` and `time` for `epoll` and a timer
//! descriptor) and `ureq` (the crate's own HTTP client, for [`round_trips`]):
//! `examples/delay-relay.rs` includes this file and `stopping.rs` by path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{epoll, Timespec};
use rustix::fd::{AsFd, OwnedFd};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};

use super::stopping::Connections;

/// The largest piece read at once.
const PIECE: usize = 64 * 1024;

/// The most pieces one direction reads before the relay turns to the other connections (the
/// socket stays readable, so `epoll` brings it straight back): a fast sender must not hold up
/// the pieces due on every other connection while it fills its queue.
const PIECES_PER_TURN: usize = 4;

/// The most pieces in flight in one direction of one connection (at most 64 MiB: a piece keeps its
/// whole buffer, however little was read into it): enough for any throughput the loopback
/// reaches over the benchmarks' delays, while a client that stops reading still holds the server
/// back (the relay stops reading, and so does TCP).
const IN_FLIGHT: usize = 1024;

/// How long the relay waits to connect to its server for a new client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Spare piece buffers kept for reuse (the rest are freed).
const SPARE_PIECES: usize = 256;

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
        let mut relaying = Relaying::new(shared.clone(), listener).expect("the relay's epoll set");
        std::thread::spawn(move || relaying.run());
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

/// The `epoll` data of the listening socket; a connection's sockets get `2 * id` (the client's)
/// and `2 * id + 1` (the server's).
const LISTENER: u64 = u64::MAX;

/// The `epoll` data of the timer descriptor.
const TIMER: u64 = u64::MAX - 1;

/// What the reading side of a direction holds for the writing side: bytes, or the end of the
/// stream, each due on the other side at a set time.
struct Piece {
    due: Instant,
    /// `None`: the end of the stream.
    bytes: Option<Filled>,
}

/// A buffer of [`PIECE`] bytes, of which `len` were read and `sent` written on.
struct Filled {
    buf: Vec<u8>,
    len: usize,
    sent: usize,
}

/// One direction of a connection.
struct Flow {
    direction: Direction,
    /// The index in [`Connection::sockets`] this direction reads from (it writes to the other).
    from: usize,
    pieces: VecDeque<Piece>,
    /// The reading side has ended: the last piece is the end.
    ended: bool,
    /// No read before this (the throttle's pace).
    read_after: Instant,
    /// The last write would have blocked: wait until the socket is writable.
    write_blocked: bool,
}

impl Flow {
    /// Whether the reading side may read on: it has not ended and the queue has room.
    fn has_room(&self) -> bool {
        !self.ended && self.pieces.len() < IN_FLIGHT
    }
}

struct Connection {
    /// The client's socket, then the server's.
    sockets: [TcpStream; 2],
    /// What each socket is registered for in the `epoll` set (`None`: not registered).
    registered: [Option<epoll::EventFlags>; 2],
    /// Client to server, then server to client.
    flows: [Flow; 2],
    /// The numbers [`Connections::track`] gave the sockets.
    tracked: [u64; 2],
    /// The moment of its latest entry in [`Relaying::timers`], until that comes up.
    timer: Option<Instant>,
}

/// Whether a connection goes on after being served.
enum Served {
    Open,
    Closed,
}

/// The relay's one thread: its listener, its connections and its timers.
struct Relaying {
    shared: Arc<Shared>,
    listener: TcpListener,
    epoll: OwnedFd,
    /// A timer descriptor in the `epoll` set, set for the earliest of `timers`.
    timer: OwnedFd,
    /// What `timer` is set for, until it goes off.
    armed: Option<Instant>,
    connections: HashMap<u64, Connection>,
    next_id: u64,
    /// When a connection has a piece due or may read again, earliest first. An entry of a closed
    /// connection is skipped when it comes up; one for a moment already served costs a turn
    /// that finds nothing to do.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    spare: Vec<Vec<u8>>,
}

impl Relaying {
    fn new(shared: Arc<Shared>, listener: TcpListener) -> io::Result<Relaying> {
        listener.set_nonblocking(true)?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let readable = |fd, data| {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(data),
                epoll::EventFlags::IN,
            )
        };
        readable(listener.as_fd(), LISTENER)?;
        readable(timer.as_fd(), TIMER)?;
        Ok(Relaying {
            shared,
            listener,
            epoll,
            timer,
            armed: None,
            connections: HashMap::new(),
            next_id: 0,
            timers: BinaryHeap::new(),
            spare: Vec::new(),
        })
    }

    /// Serves until the relay is dropped; then every socket closes with `self`.
    fn run(&mut self) {
        let mut events = Vec::with_capacity(256);
        let mut ready = Vec::new();
        loop {
            // Checked before every wait, not only once woken: a stop's waking connection may have
            // been accepted and closed by the last turn, and then nothing would wake this one.
            if self.shared.connections.stopped() {
                return;
            }
            self.arm_timer();
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("the relay's epoll_wait failed: {e}"),
            }
            ready.clear();
            for event in &events {
                match event.data.u64() {
                    LISTENER => self.accept(),
                    TIMER => {
                        // Only to clear its readiness: the timers due are taken below.
                        let _ = rustix::io::read(&self.timer, &mut [0u8; 8]);
                        self.armed = None;
                    }
                    socket => ready.push(socket / 2),
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, id))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if let Some(connection) = self.connections.get_mut(&id) {
                    if connection.timer == Some(at) {
                        connection.timer = None;
                    }
                }
                ready.push(id);
            }
            ready.sort_unstable();
            ready.dedup();
            for &id in &ready {
                self.serve(id);
            }
        }
    }

    /// Sets the timer descriptor to go off at the earliest moment in `timers`, unless it is
    /// set for that already. (A timer descriptor rather than `epoll_wait`'s timeout: that one is
    /// whole milliseconds unless `rustix` assumes Linux 5.11, and the delays are fractions of one.)
    fn arm_timer(&mut self) {
        let Some(&Reverse((at, _))) = self.timers.peek() else {
            return;
        };
        if self.armed == Some(at) {
            return;
        }
        // A zero time disarms the timer: a moment already past goes off in a nanosecond.
        let left = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec::default(),
            it_value: Timespec::try_from(left).expect("a due time within centuries"),
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)
            .expect("setting the relay's timer");
        self.armed = Some(at);
    }

    fn accept(&mut self) {
        loop {
            let client = match self.listener.accept() {
                Ok((client, _)) => client,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors, say: the listener stays readable, so pause rather
                    // than spin, and try again on the next turn.
                    eprintln!("relay: accepting a connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            if self.shared.connections.stopped() {
                return;
            }
            // Bounded: a server that cannot take the connection (a stopped process with a full
            // backlog) must not stall every other connection's pieces for the kernel's retries.
            let Ok(server) = TcpStream::connect_timeout(&self.shared.target, CONNECT_TIMEOUT)
            else {
                // The server is dead: the client sees its connection closed without an answer.
                let _ = client.shutdown(Shutdown::Both);
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            let tracked = [
                self.shared.connections.track(&client),
                self.shared.connections.track(&server),
            ];
            let flow = |direction, from| Flow {
                direction,
                from,
                pieces: VecDeque::new(),
                ended: false,
                read_after: Instant::now(),
                write_blocked: false,
            };
            let connection = Connection {
                sockets: [client, server],
                registered: [None, None],
                flows: [flow(Direction::Up, 0), flow(Direction::Down, 1)],
                tracked,
                timer: None,
            };
            for socket in &connection.sockets {
                let _ = socket.set_nodelay(true);
                let _ = socket.set_nonblocking(true);
            }
            self.connections.insert(id, connection);
            self.serve(id);
        }
    }

    /// Reads what is ready, writes what is due, and sets what the connection waits for next.
    fn serve(&mut self, id: u64) {
        let Some(mut connection) = self.connections.remove(&id) else {
            return;
        };
        let served = self.move_bytes(&mut connection);
        if let Served::Open = served {
            if self.wait_for(id, &mut connection).is_ok() {
                self.connections.insert(id, connection);
                return;
            }
        }
        for socket in &connection.sockets {
            // Needed, not tidiness: the copies `Connections` tracks keep each socket open past
            // this descriptor's close, and `epoll` forgets a socket only when all are closed.
            let _ = epoll::delete(&self.epoll, socket);
            let _ = socket.shutdown(Shutdown::Both);
        }
        for id in connection.tracked {
            self.shared.connections.forget(id);
        }
        for piece in connection.flows.into_iter().flat_map(|flow| flow.pieces) {
            if let Some(filled) = piece.bytes {
                self.give_back(filled.buf);
            }
        }
    }

    /// Keeps a piece's buffer for a later read, up to [`SPARE_PIECES`] of them.
    fn give_back(&mut self, buf: Vec<u8>) {
        if self.spare.len() < SPARE_PIECES {
            self.spare.push(buf);
        }
    }

    fn move_bytes(&mut self, connection: &mut Connection) -> Served {
        for flow in &mut connection.flows {
            let [client, server] = &connection.sockets;
            let (from, to) = if flow.from == 0 {
                (client, server)
            } else {
                (server, client)
            };
            self.read(flow, from);
            if let Served::Closed = self.deliver(flow, to) {
                return Served::Closed;
            }
        }
        Served::Open
    }

    /// Reads `from` into pieces while it has bytes, the flow has room, and the throttle allows, at
    /// most [`PIECES_PER_TURN`] of them.
    fn read(&mut self, flow: &mut Flow, mut from: &TcpStream) {
        let delay = Duration::from_nanos(self.shared.delay.load(Ordering::Relaxed));
        for _ in 0..PIECES_PER_TURN {
            let now = Instant::now();
            if !flow.has_room() || flow.read_after > now {
                return;
            }
            let limit = self.shared.rate(flow.direction).load(Ordering::Relaxed);
            // Pieces of a twentieth of a second at the limit, so the rate is smooth.
            let piece = if limit == 0 {
                PIECE
            } else {
                (limit / 20).clamp(1, PIECE as u64) as usize
            };
            let mut buf = self.spare.pop().unwrap_or_else(|| vec![0; PIECE]);
            let bytes = match from.read(&mut buf[..piece]) {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.give_back(buf);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.give_back(buf);
                    continue;
                }
                Err(_) => None,
            };
            let due = now + delay;
            match bytes {
                Some(len) => {
                    flow.pieces.push_back(Piece {
                        due,
                        bytes: Some(Filled { buf, len, sent: 0 }),
                    });
                    if limit > 0 {
                        flow.read_after = now + Duration::from_secs_f64(len as f64 / limit as f64);
                    }
                }
                None => {
                    self.give_back(buf);
                    flow.ended = true;
                    flow.pieces.push_back(Piece { due, bytes: None });
                }
            }
        }
    }

    /// Writes the pieces that are due to `to`. The end of the stream, once due, closes the
    /// connection, as does a write that fails.
    fn deliver(&mut self, flow: &mut Flow, mut to: &TcpStream) -> Served {
        let now = Instant::now();
        while let Some(piece) = flow.pieces.front_mut() {
            if piece.due > now {
                break;
            }
            let Some(filled) = &mut piece.bytes else {
                return Served::Closed;
            };
            match to.write(&filled.buf[filled.sent..filled.len]) {
                Ok(0) => return Served::Closed,
                Ok(n) => {
                    filled.sent += n;
                    flow.write_blocked = false;
                    if filled.sent == filled.len {
                        if let Some(Piece {
                            bytes: Some(filled),
                            ..
                        }) = flow.pieces.pop_front()
                        {
                            self.give_back(filled.buf);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flow.write_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Served::Closed,
            }
        }
        Served::Open
    }

    /// Registers the connection's sockets for what its flows wait on, and sets a timer for the
    /// next piece due or the next read the throttle allows.
    fn wait_for(&mut self, id: u64, connection: &mut Connection) -> io::Result<()> {
        let mut wanted = [epoll::EventFlags::empty(); 2];
        let mut next: Option<Instant> = None;
        let mut at = |moment: Instant| next = Some(next.map_or(moment, |n| n.min(moment)));
        for flow in &connection.flows {
            let can_read = flow.has_room();
            if can_read && flow.read_after <= Instant::now() {
                wanted[flow.from] |= epoll::EventFlags::IN;
            } else if can_read {
                at(flow.read_after);
            }
            if flow.write_blocked {
                wanted[1 - flow.from] |= epoll::EventFlags::OUT;
            } else if let Some(piece) = flow.pieces.front() {
                at(piece.due);
            }
        }
        for (index, flags) in wanted.into_iter().enumerate() {
            let socket = connection.sockets[index].as_fd();
            let data = epoll::EventData::new_u64(2 * id + index as u64);
            match (connection.registered[index], flags.is_empty()) {
                (Some(now), false) if now == flags => {}
                (Some(_), false) => epoll::modify(&self.epoll, socket, data, flags)?,
                (None, false) => epoll::add(&self.epoll, socket, data, flags)?,
                // Not registered at all, rather than for nothing: the kernel reports a hang-up
                // whatever was asked, and a flow that cannot read yet must not spin on it.
                (Some(_), true) => epoll::delete(&self.epoll, socket)?,
                (None, true) => {}
            }
            connection.registered[index] = (!flags.is_empty()).then_some(flags);
        }
        if let Some(moment) = next {
            if connection.timer != Some(moment) {
                self.timers.push(Reverse((moment, id)));
                connection.timer = Some(moment);
            }
        }
        Ok(())
    }
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
