//! What the suite's own servers (the fake box, the relay) share: stopping. Each keeps every
//! socket it opens so that dropping the server closes them all, a stalled one too, and its
//! accepting thread sees the stop flag once woken by one last connection.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The stop flag and the open sockets of one test server.
#[derive(Default)]
pub struct Connections {
    stopped: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

impl Connections {
    /// Whether the server was told to stop.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Remembers a socket to close when the server stops.
    pub fn track(&self, socket: &TcpStream) {
        if let Ok(copy) = socket.try_clone() {
            lock(&self.sockets).push(copy);
        }
    }

    /// Stops the server listening on `addr`: sets the flag, wakes its accepting thread, and
    /// closes every socket it opened.
    pub fn stop(&self, addr: SocketAddr) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(addr);
        for socket in lock(&self.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
