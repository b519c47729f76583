//! How a box is set up: [`BoxOptions`], built by the `box` command from its flags.
//!
//! Apart from `mod.rs` so that the shared state ([`super::state`]), which keeps the options, can
//! name them without importing its parent: the box's modules only ever import downward or
//! sideways. Re-exported as `boxd::BoxOptions`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::config::{ClusterConfig, KeyRange, NodeUrl};
use crate::dune::key::Key;

/// How a box is set up; the `box` command builds it from its flags.
#[derive(Clone, Debug)]
pub struct BoxOptions {
    /// The directory holding the entries (a Dune `db/` layout); created if missing.
    pub root: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The keys this box answers for, from its node in the cluster config (others: 421).
    /// `None`: all keys.
    pub node: Option<Ownership>,
    /// The cluster config `node` was read from, read again on `SIGHUP` (a box keeps serving
    /// while its ranges change).
    pub config: Option<PathBuf>,
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
            config: None,
            max_body: 1 << 30,
            io_timeout: Duration::from_secs(30),
            max_size: None,
            trim_interval: Duration::from_secs(600),
            max_connections: 1024,
        }
    }
}

/// Which keys a box answers for under its cluster config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The box's node URL in the config.
    pub url: NodeUrl,
    /// The ranges it owns: it stores and serves their keys.
    pub owned: Vec<KeyRange>,
    /// The ranges it owned under the config's previous table and owns no more: it serves
    /// their keys, which may not have moved yet, and stores none.
    pub previous: Vec<KeyRange>,
}

impl Ownership {
    /// What the node `url` owns under `config` and its previous table; `None` if neither
    /// names it.
    pub fn of(config: &ClusterConfig, url: &NodeUrl) -> Option<Ownership> {
        let now = config.node_by_url(url);
        let before = config.previous_node_by_url(url);
        if now.is_none() && before.is_none() {
            return None;
        }
        let owned = now.map_or_else(Vec::new, |n| n.ranges().to_vec());
        let previous = before.map_or_else(Vec::new, |n| n.ranges().to_vec());
        Some(Ownership {
            url: url.clone(),
            owned,
            previous,
        })
    }

    /// Whether the box owns `key`: it stores it.
    pub fn owns(&self, key: &Key) -> bool {
        self.owned.iter().any(|r| r.contains(key))
    }

    /// Whether the box serves `key`: it owns it, or owned it before.
    pub fn serves(&self, key: &Key) -> bool {
        self.owns(key) || self.previous.iter().any(|r| r.contains(key))
    }
}
