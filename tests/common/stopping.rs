//! What the tests' own servers (the fault suite's fake box, the relay) share: stopping. Each
//! keeps every socket it opens so that dropping the server closes them all, a stalled one too,
//! and its accepting thread sees the stop flag once woken by one last connection.
//!
//! Only `std`: `examples/delay-relay.rs` includes it (with `relay.rs`) by path.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The stop flag and the open sockets of one test server.
#[derive(Default)]
pub struct Connections {
    stopped: AtomicBool,
    /// Each socket by the number `track` gave it.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next: AtomicU64,
}

impl Connections {
    /// Whether the server was told to stop.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Remembers a socket to close when the server stops; the number is for [`Self::forget`].
    pub fn track(&self, socket: &TcpStream) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(copy) = socket.try_clone() {
            lock(&self.sockets).insert(id, copy);
        }
        id
    }

    /// Lets go of a socket `track` remembered (its connection is over): a long-lived server
    /// keeps no descriptor per connection it ever served.
    pub fn forget(&self, id: u64) {
        lock(&self.sockets).remove(&id);
    }

    /// Stops the server listening on `addr`: sets the flag, wakes its accepting thread, and
    /// closes every socket it opened.
    pub fn stop(&self, addr: SocketAddr) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(addr);
        for (_, socket) in lock(&self.sockets).drain() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
