//! How a box is set up: [`BoxOptions`], built by the `box` command from its flags.
//!
//! Apart from `mod.rs` so that the shared state ([`super::state`]), which keeps the options, can
//! name them without importing its parent: the box's modules only ever import downward or
//! sideways. Re-exported as `boxd::BoxOptions`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::config::Node;

/// How a box is set up; the `box` command builds it from its flags.
#[derive(Clone, Debug)]
pub struct BoxOptions {
    /// The directory holding the entries (a Dune `db/` layout); created if missing.
    pub root: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The node this box is in the cluster config: only its keys are accepted. `None`: all keys.
    pub node: Option<Node>,
    /// The largest body a `PUT` may have.
    pub max_body: u64,
    /// How long a client may take to send its headers, or stall between two pieces of its body,
    /// or leave the answer unread.
    pub io_timeout: Duration,
    /// Trim to this many bytes (least recently read first); `None`: never trim.
    pub max_size: Option<u64>,
    /// How often to trim when `max_size` is set.
    pub trim_interval: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl BoxOptions {
    /// Options with the defaults the `box` command documents, for `root` on `listen`.
    pub fn new(root: PathBuf, listen: SocketAddr) -> BoxOptions {
        BoxOptions {
            root,
            listen,
            node: None,
            max_body: 1 << 30,
            io_timeout: Duration::from_secs(30),
            max_size: None,
            trim_interval: Duration::from_secs(600),
            max_connections: 1024,
        }
    }
}
