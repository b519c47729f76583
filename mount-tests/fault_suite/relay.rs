//! A throttling TCP relay in front of a real box: the config names the relay, so every byte
//! between the mount and the box passes through it, as slowly as the test says. That is what
//! makes "kill the box *while* a 64 MiB transfer runs" deterministic: at a few MiB/s the transfer
//! is still running when the test acts, whatever the machine's speed.
//!
//! The relay does not hide a death: when either side closes or fails, it closes both, so the
//! mount sees exactly what a killed box does to a connection (the bytes the box's kernel had
//! already sent, then the end).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::test_server::Connections;
use crate::common;

/// Which way bytes flow.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Box to mount: fetched bodies.
    Down,
    /// Mount to box: uploaded bodies.
    Up,
}

struct Shared {
    target: SocketAddr,
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
    /// Starts relaying from a free loopback port to `target`, unthrottled.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", common::free_port())).expect("relay port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
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

    /// The URL to name in the cluster config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Limits one direction to `bytes_per_second` (0: unlimited), for connections open and new.
    pub fn throttle(&self, direction: Direction, bytes_per_second: u64) {
        let rate = match direction {
            Direction::Down => &self.shared.down_rate,
            Direction::Up => &self.shared.up_rate,
        };
        rate.store(bytes_per_second, Ordering::Relaxed);
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

fn relay_connection(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(shared.target) else {
        // The box is dead: the mount sees its connection closed without an answer.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        shared.connections.track(&client);
        shared.connections.track(&upstream);
    }
    let (client2, upstream2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up_shared = shared.clone();
    std::thread::spawn(move || pump(&up_shared, Direction::Up, client2, upstream2));
    pump(shared, Direction::Down, upstream, client);
}

/// Copies `from` to `to` at the direction's rate until either side ends, then closes both.
fn pump(shared: &Shared, direction: Direction, mut from: TcpStream, mut to: TcpStream) {
    let rate = match direction {
        Direction::Down => &shared.down_rate,
        Direction::Up => &shared.up_rate,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let limit = rate.load(Ordering::Relaxed);
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
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if limit > 0 {
            let due = Duration::from_secs_f64(n as f64 / limit as f64);
            if let Some(left) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(left);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
