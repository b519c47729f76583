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
//! | trim (`POST /_trim`, and every `--trim-interval` with `--max-size`) | O(entries): a `stat` of each and a sort of them by last read |
//! | `POST /_drop` (after a rebalance) | O(entries): a `stat` and a removal of each entry it does not own |
//!
//! The keys a box answers for come from its node in the cluster config, read again on `SIGHUP`:
//! it stores the keys it owns, and while the config names the table it replaces, it still serves
//! (never stores) the keys it owned under that table, which may not have moved yet.

mod body;
mod cached;
mod collisions;
mod deadline;
mod handler;
mod held;
pub mod hints;
mod opened;
mod options;
pub mod route;
mod state;
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

pub use options::{BoxOptions, Ownership};
use state::{trim_now, BoxState};

use crate::store::{Store, StoreError};

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
            Some(node) => node.url.to_string(),
            None => format!("http://{}", options.listen),
        };
        let url_header = hyper::header::HeaderValue::from_str(&url)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("unknown"));
        let state = Arc::new(BoxState {
            store,
            stats: stats::Stats::default(),
            held: held::Held::default(),
            collisions,
            ownership: std::sync::RwLock::new(options.node.clone()),
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
    if let (Some(config), Some(node)) = (&options.config, &options.node) {
        reload_on_hangup(service.state.clone(), config.clone(), node.url.clone())
            .map_err(listen_err)?;
    }
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
                Some(node) => format!("node {}", node.url),
                None => "all keys".to_string(),
            }
        );
        if options.max_size.is_some() {
            tokio::spawn(trim_periodically(service.state.clone()));
        }
        crate::service::notify_ready();
        serve(listener, service).await;
        Ok(())
    })
}

/// Reads the cluster config again on each `SIGHUP` and takes the box's ranges from it, so a box
/// keeps serving while keys move to or from it. A config that does not load, or no longer names
/// the box, is refused with a log line and the box keeps its ranges. `SIGHUP` is blocked here,
/// before the runtime starts its threads, so that they inherit the mask and only the thread
/// started here receives it.
fn reload_on_hangup(
    state: Arc<BoxState>,
    config: PathBuf,
    url: crate::cluster::config::NodeUrl,
) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut hangup = SigSet::empty();
    hangup.add(Signal::SIGHUP);
    hangup.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("box-reload".into())
        .spawn(move || loop {
            if hangup.wait().is_err() {
                continue;
            }
            let loaded = crate::cluster::config::ClusterConfig::load(&config);
            match loaded.map(|c| Ownership::of(&c, &url)) {
                Ok(Some(ownership)) => {
                    log::info!(
                        "read {} again: owns {} range(s), serves {} more from the previous table",
                        config.display(),
                        ownership.owned.len(),
                        ownership.previous.len()
                    );
                    state.set_ownership(ownership);
                }
                Ok(None) => log::error!(
                    "{} names no node {url} any more; keeping this box's ranges",
                    config.display()
                ),
                Err(e) => log::error!("{e}; keeping this box's ranges"),
            }
        })?;
    Ok(())
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

#[cfg(test)]
mod tests;
