//! The cache box: a small HTTP/1.1 server that stores verified entries in a Dune `db/` layout.
//!
//! The box is where a team's cache lives, so it trusts nobody: every artifact `PUT` is verified
//! against its key while it streams to a temp file, metadata must parse, and a second, different
//! metadata value for a rule key is refused (409) and recorded rather than replacing the first.
//! Storage is the same [`Store`] the clients use, so the box's root is a valid Dune cache and
//! `dune-cachefs fsck` works on it. The protocol is in `docs/protocol.md`.
//!
//! Built on hyper (HTTP parsing, keep-alive, header-read timeouts) over tokio. File I/O runs on
//! tokio's blocking pool: the store's API is synchronous, and entries are files. Reads the kernel
//! can answer from memory without waiting are the exception, done in place (`cached.rs`).
//! What a box refuses costs it little: oversized bodies are refused from their `Content-Length` or
//! as soon as they pass the limit, and every connection has deadlines for its headers, for each
//! piece of its body, and for each piece of its answer the client must take.
//!
//! # What each request costs
//!
//! A team's box holds millions of entries, so no request but a trim walks them all:
//!
//! | request | cost |
//! |---|---|
//! | `GET`/`HEAD` of an entry | O(1): an open and a `fstat` (an atime stamp at most once a minute), plus the bytes; a metadata `GET` also reads its hint (one small file) |
//! | `PUT` of an entry | O(1) plus the bytes (hashed or parsed as they arrive): a `stat` of the name, a write and flush of the temp file, a `link`; an offer whose name is taken reads the held value (metadata: to compare it) instead |
//! | hint `GET`/`PUT` | O(1): one small file read, or written and renamed |
//! | shard listing `/<kind>/<hh>/` | O(entries in that shard): a directory read, a sort, and a `stat` per entry |
//! | kind listing `/<kind>/` | 256 directory opens, each read only up to its first key (one `getdents` batch): O(1) in the entries held |
//! | `/_status` | O(1): the counts of what the box holds are kept as it goes (`held.rs`), counted once at startup in the background (`"held_counted": false` until done) |
//! | `/_collisions` | O(collisions kept in memory, at most 10,000) |
//! | trim (`POST /_trim`, and every `--trim-interval` with `--max-size`) | O(entries): a `stat` of each, a sort of the artifacts, a read of each metadata entry and a `stat` of the artifacts it names |

mod body;
mod cached;
mod collisions;
mod deadline;
mod handler;
mod held;
pub mod hints;
mod opened;
pub mod route;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::cluster::config::Node;
use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::trim::TrimOrder;
use crate::store::{InstallOutcome, Store, StoreError, VerifiedEntry};

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

/// Why a box could not start.
#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    /// The root directory could not be created or opened.
    #[error("box root {}: {source}", root.display())]
    Root {
        /// The root.
        root: PathBuf,
        /// What failed.
        source: StoreError,
    },
    /// The listening socket or the runtime could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// Everything a request handler needs, shared by all connections.
pub(crate) struct BoxState {
    store: Store,
    options: BoxOptions,
    stats: stats::Stats,
    /// What the root holds, counted at startup and kept as entries come and go.
    held: held::Held,
    collisions: collisions::CollisionLog,
    /// The URL this box answers as: its node URL, or `http://<listen address>`.
    url: String,
    url_header: hyper::header::HeaderValue,
}

impl BoxState {
    fn owns(&self, entry: &Entry) -> bool {
        self.options
            .node
            .as_ref()
            .is_none_or(|node| node.owns(&entry.key))
    }

    /// One shard's listing: `<key> <size> <0|1>` per owned entry, sorted.
    fn listing(&self, kind: EntryKind, shard: Shard) -> Result<String, StoreError> {
        let mut out = String::new();
        for key in self.store.list_shard(kind, shard)? {
            let entry = Entry { kind, key };
            if !self.owns(&entry) {
                continue;
            }
            if let Some(local) = self.store.lookup(&entry)? {
                let exe = u8::from(local.executable);
                out.push_str(&format!("{key} {} {exe}\n", local.size));
            }
        }
        Ok(out)
    }

    /// The shards of `kind` holding entries, one `<hh>` per line.
    fn shards(&self, kind: EntryKind) -> Result<String, StoreError> {
        Ok(self
            .store
            .non_empty_shards(kind)?
            .into_iter()
            .map(|shard| format!("{shard}\n"))
            .collect())
    }

    /// The `/_status` document: what the box holds, what it has done, what it owns. O(1): the
    /// counts of what it holds are kept as it goes ([`held`]); `held_counted` is false until the
    /// startup count is done.
    fn status(&self) -> serde_json::Value {
        let ranges: Vec<String> = match &self.options.node {
            Some(node) => node.ranges().iter().map(ToString::to_string).collect(),
            None => vec!["all".to_string()],
        };
        let mut status = serde_json::json!({
            "url": self.url,
            "root": self.options.root.display().to_string(),
            "ranges": ranges,
            "held": self.held.to_json(),
            "held_counted": self.held.counted(),
            "collisions": self.collisions.len(),
            "max_body": self.options.max_body,
            "max_size": self.options.max_size,
        });
        if let (Some(map), serde_json::Value::Object(counters)) =
            (status.as_object_mut(), self.stats.to_json())
        {
            map.extend(counters);
        }
        status
    }

    /// Installs a checked entry, counting it if it is stored: flushed to disk outside its
    /// shard's lock, linked inside it ([`held`]).
    fn install(&self, verified: &VerifiedEntry) -> Result<InstallOutcome, StoreError> {
        let (entry, size) = (verified.entry(), verified.size());
        verified.commit_with(|staged| self.held.installing(&entry, size, || staged.link()))
    }
}

/// A box's request handling without its listener: the open root, counters and collision log,
/// serving one connection at a time over any byte stream. [`run`] serves it on a TCP listener;
/// the fuzzer (`fuzz/fuzz_targets/box_http.rs`) feeds it requests in memory.
#[derive(Clone)]
pub struct BoxService {
    state: Arc<BoxState>,
}

impl BoxService {
    /// Opens (creating it if missing) and owns the root: see [`Store::open_exclusive`]. What the
    /// root holds is counted on a thread of its own, so the box serves at once (`/_status` says
    /// `"held_counted": false` until the count is done).
    pub fn open(options: BoxOptions) -> Result<BoxService, BoxError> {
        let service = BoxService::open_uncounted(options)?;
        let state = service.state.clone();
        let counting = std::thread::Builder::new()
            .name("box-count".to_string())
            .spawn(move || state.held.count(&state.store));
        if let Err(e) = counting {
            log::error!("cannot start counting the entries held: {e}; counting them now");
            service.state.held.count(&service.state.store);
        }
        Ok(service)
    }

    /// [`BoxService::open`] without the startup count: `/_status` says it is not done.
    fn open_uncounted(options: BoxOptions) -> Result<BoxService, BoxError> {
        let root_err = |source| BoxError::Root {
            root: options.root.clone(),
            source,
        };
        std::fs::create_dir_all(&options.root)
            .map_err(|e| root_err(StoreError::io("create", &options.root)(e)))?;
        // The box is its root's only writer: what a killed box left in its temp dir goes now.
        let store = Store::open_exclusive(&options.root).map_err(root_err)?;
        let collisions = collisions::CollisionLog::open(&options.root).map_err(root_err)?;
        let url = match &options.node {
            Some(node) => node.url().to_string(),
            None => format!("http://{}", options.listen),
        };
        let url_header = hyper::header::HeaderValue::from_str(&url)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("unknown"));
        let state = Arc::new(BoxState {
            store,
            stats: stats::Stats::default(),
            held: held::Held::default(),
            collisions,
            options,
            url,
            url_header,
        });
        Ok(BoxService { state })
    }

    /// Serves the requests of one connection from `peer` until it ends, within the box's
    /// deadlines (headers, body pieces, and answers the client must take). Call it inside a
    /// tokio runtime with timers.
    pub async fn serve_connection<S>(self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.state;
        let io_timeout = state.options.io_timeout;
        let service = service_fn(move |request| handler::handle(state.clone(), peer, request));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(io_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(
                TokioIo::new(deadline::WriteDeadline::new(stream, io_timeout)),
                service,
            );
        if let Err(e) = connection.await {
            log::debug!("connection from {peer}: {e}");
        }
    }
}

/// Runs a box until the process is stopped. Opens the root first, so a bad root fails at once.
pub fn run(options: BoxOptions) -> Result<(), BoxError> {
    let service = BoxService::open(options.clone())?;
    let listen_err = |source| BoxError::Listen {
        addr: options.listen,
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(listen_err)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(listen_err)?;
        log::info!(
            "box serving {} on {} ({})",
            options.root.display(),
            options.listen,
            match &options.node {
                Some(node) => format!("node {}", node.url()),
                None => "all keys".to_string(),
            }
        );
        if options.max_size.is_some() {
            tokio::spawn(trim_periodically(service.state.clone()));
        }
        serve(listener, service).await;
        Ok(())
    })
}

async fn serve(listener: TcpListener, service: BoxService) {
    let slots = Arc::new(Semaphore::new(service.state.options.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            service.serve_connection(stream, peer).await;
            drop(slot);
        });
    }
}

async fn trim_periodically(state: Arc<BoxState>) {
    let mut ticker = tokio::time::interval(state.options.trim_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let state = state.clone();
        let result = tokio::task::spawn_blocking(move || trim_now(&state)).await;
        match result {
            Ok(Ok(report)) => log::info!("periodic trim: {report:?}"),
            Ok(Err(e)) => log::error!("periodic trim failed: {e}"),
            Err(e) => log::error!("periodic trim panicked: {e}"),
        }
    }
}

/// Trims to the configured bound, least recently read first, counting what goes. Without a
/// bound, reports only.
pub(crate) fn trim_now(state: &BoxState) -> Result<crate::store::trim::TrimReport, StoreError> {
    let limit = state.options.max_size.unwrap_or(u64::MAX);
    state.store.trim_with(
        limit,
        TrimOrder::LeastRecentlyRead,
        |entry, size, remove| state.held.removing(entry, size, remove),
    )
}

#[cfg(test)]
mod tests;
