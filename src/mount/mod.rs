//! The FUSE filesystem: Dune's cache layout over the local store, fetching misses from the boxes.
//!
//! The modules follow a request's path: [`tree`] says what a path is, [`changes`] what a request
//! that opens or changes the tree means, [`answers`] which errno a failure becomes, [`attrs`] what
//! the kernel is shown, [`directory`] what a listing holds; [`inodes`] numbers the paths the kernel
//! holds; [`remote`] fetches what the store lacks (off the FUSE threads, one transfer per entry, on
//! the bounded [`pools`], ahead of Dune within the limits of [`ahead`], recording the order for the
//! hints in [`trail`], both remembering rules in the bounded memory of [`lately`]); [`warming`] looks up through the mount what was fetched ahead, so the
//! kernel knows it before Dune asks, and hands it the pages [`through`] says a program copying a
//! shard reads next; `links` shows the artifacts the store holds as links to their store files
//! (`--reads links`); [`listed_ahead`] lists the next shards while a program walking the cache
//! reads one; [`trimming`] keeps the store under its bound; [`policy`] holds the macOS
//! differences; and [`filesystem`] is the `fuser` glue that only translates. [`serve`] runs it all until unmounted or signalled.
//!
//! # What each request costs
//!
//! A mount serves millions of entries for weeks, so no request does work in proportion to the
//! entries in the store or the numbers in the inode table:
//!
//! | request | cost |
//! |---|---|
//! | `lookup` | O(1): a hash look-up and a `stat` of one store path (a metadata entry: its small file read and hashed); a miss asks one box (queued, bounded) |
//! | `forget`, `batch_forget` | O(1) per inode (amortized: a part of the table is rebuilt or shrunk after inserts or removals in proportion to its size) |
//! | `getattr`, `setattr` | O(1): a `stat` (a metadata entry: its file read and hashed); a `setattr` of an artifact held here, with `--reads kept`, also reads it (4 MiB at most) and hands its pages to the kernel |
//! | `open` | none with `--reads kept` (the kernel opens alone); otherwise O(1): one store file opened (registered for passthrough); a miss is one transfer from one box |
//! | `read` | the bytes asked for (none reach the daemon with passthrough, or once the kernel keeps the pages); with `--reads kept`, a miss is one transfer from one box, a metadata entry is read whole and hashed, and an artifact's first read looks up its place in its shard's order (a binary search) and may offer warming the next 64 |
//! | `readlink` of the status file | one status document written to a file |
//! | `readlink` of an artifact shown as a link | O(1): a `stat` of its store file; if a trim removed it since, one transfer from one box |
//! | `release`, `flush`, `fsync` | O(1) |
//! | `create`, `mkdir`, `symlink`, `unlink`, `rmdir` | O(1): one call on a scratch path |
//! | `rename` of a scratch path | O(log n + k) for the k numbers under a renamed directory |
//! | `rename`/`link` into the cache | the entry's bytes (copied and verified), one flush of the upload journal |
//! | `opendir`, `releasedir` | O(1) |
//! | `readdir(plus)` of a shard | O(n log n) for the n entries in that shard, here and on its boxes (sorted by inode number, and the order kept for the last 16 shards), once per listing the kernel does not keep, and the same for the next two shards, listed ahead on a thread of their own; a batch of `readdirplus` waits 1 ms while the kernel holds a quarter more numbers than `--max-inodes` |
//! | `readdir(plus)` of a kind | 256 shard directories opened up to their first entry, and one request per box |
//! | `statfs`, `getxattr`, `listxattr` | O(1) |
//!
//! Memory follows the kernel, and the kernel is held to a bound: the inode table holds what the
//! kernel holds, and past `--max-inodes` numbers a thread ([`evict`]) asks the kernel to drop the
//! names of the entries used least recently. Its cost: one flag set per request, and off the
//! FUSE threads a sweep of at most two laps of the bounded table per batch of 4 096 names.
//! Transfers, fetches ahead, the negative cache ([`absent`]), the landing of fetched entries and
//! the boxes' queues are all bounded.

pub mod absent;
pub mod ahead;
pub mod answers;
pub mod attrs;
pub mod changes;
pub mod directory;
pub mod evict;
pub mod filesystem;
pub mod inodes;
pub mod lately;
mod links;
pub mod listed_ahead;
pub mod listings;
mod parted;
pub mod policy;
pub mod pools;
mod readdir;
pub mod remote;
pub mod scratch;
mod shared;
pub mod stats;
mod status;
pub mod through;
pub mod trail;
pub mod tree;
pub mod trimming;
mod unopened;
pub mod warming;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use crate::cluster::Cluster;
use crate::store::landing::Landing;
use crate::store::{journal, Store, StoreError};
use crate::upload::background::Uploader;
use filesystem::CacheFs;
use policy::PlatformPolicy;
use remote::Remote;
use shared::Shared;
use stats::Stats;

/// How to mount.
pub struct MountOptions {
    /// The local store (a Dune `db/` directory); created if missing.
    pub store: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The boxes to fetch misses from; `None` presents the local store alone.
    pub cluster: Option<Cluster>,
    /// macOS or Linux behaviour.
    pub policy: PlatformPolicy,
    /// Let other users than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// How files are opened and read: see [`Reads`].
    pub reads: Reads,
    /// Threads serving kernel requests.
    pub fuse_threads: usize,
    /// Threads talking to each box (lookups, transfers), and as many for listings.
    pub fetch_workers: usize,
    /// Threads uploading what Dune stores through the mount.
    pub upload_workers: usize,
    /// How far ahead of Dune the mount may fetch the rules boxes' hints name.
    pub prefetch: ahead::Limits,
    /// If the mount point is a dead FUSE mount (after `kill -9`), detach it first.
    pub recover_stale: bool,
    /// Where to answer `GET /metrics` (Prometheus), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Keep the store under a size while mounted, if given.
    pub store_bound: Option<trimming::StoreBound>,
    /// The inode numbers the kernel may hold before it is asked to drop the least used
    /// ([`evict`]).
    pub max_inodes: usize,
    /// Look up, through the mount, what the boxes' hints say Dune asks for next, and hand the
    /// kernel the next artifacts of a shard a program reads through ([`warming`], [`through`]).
    pub warming: bool,
}

/// How the kernel opens and reads the mount's files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reads {
    /// The kernel opens files without asking the daemon and keeps their pages: a restored file
    /// costs no request at all once read, and one READ per page before (`unopened`).
    #[default]
    Kept,
    /// Every open is asked, and registers the store file for FUSE passthrough where the kernel
    /// and our privileges allow it (else as `Daemon`): reads never reach the daemon, but each
    /// open and close is a round trip.
    Passthrough,
    /// Every open is asked, and the daemon serves the first read of each page.
    Daemon,
    /// An artifact the store holds is shown as a symbolic link to its store file, which the
    /// kernel then follows, opens, reads and touches itself: once it keeps the link, a
    /// restored artifact costs no request at all, Dune 2.9's touch included. Everything else
    /// is read as with `Kept`. The mount then no longer looks like Dune's own directory
    /// (`find -type f` and `cp -r` see links): opt in, for build machines.
    Links,
}

impl Reads {
    /// Whether the kernel opens the mount's regular files without asking (see `unopened`).
    pub fn opens_alone(self) -> bool {
        matches!(self, Reads::Kept | Reads::Links)
    }
}

impl std::str::FromStr for Reads {
    type Err = String;

    fn from_str(s: &str) -> Result<Reads, String> {
        match s {
            "kept" => Ok(Reads::Kept),
            "passthrough" => Ok(Reads::Passthrough),
            "daemon" => Ok(Reads::Daemon),
            "links" => Ok(Reads::Links),
            other => Err(format!(
                "unknown read mode {other:?}: use kept, passthrough, daemon or links"
            )),
        }
    }
}

impl std::fmt::Display for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reads::Kept => "kept",
            Reads::Passthrough => "passthrough",
            Reads::Daemon => "daemon",
            Reads::Links => "links",
        })
    }
}

/// Why the mount failed or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The mount point is a dead FUSE mount left by a killed process.
    #[error(
        "{path} is a dead FUSE mount (its process was killed): run `fusermount3 -u {path}` \
         (or `umount -l {path}`), or mount again with --recover",
        path = .0.display()
    )]
    StaleMount(PathBuf),
    /// The directory for the status file's snapshots could not be made.
    #[error("a directory for the status file's snapshots in the temporary directory: {0}")]
    StatusSnapshots(io::Error),
    /// The metrics listener could not be set up.
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// What failed.
        source: io::Error,
    },
    /// Mounting or serving failed.
    #[error("mount at {}: {source}", path.display())]
    Fuse {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Mounts and serves until the filesystem is unmounted (`umount`, `fusermount3 -u`) or the
/// process gets SIGINT, SIGTERM or SIGHUP, after which the mount point is clean again. A busy
/// mount is detached at the signal and the process exits when its last open file is closed.
pub fn serve(options: MountOptions) -> Result<(), MountError> {
    let fuse_err = |source| MountError::Fuse {
        path: options.mountpoint.clone(),
        source,
    };
    recover_if_stale(&options.mountpoint, options.recover_stale)?;
    std::fs::create_dir_all(&options.store)
        .map_err(|e| StoreError::io("create", &options.store)(e))?;
    // The mount is its store's only writer: what a killed mount left in its temp dir (fetches
    // cut short) is swept now.
    let store = Arc::new(Store::open_exclusive(&options.store)?);
    if let Some(device) = journal::unjournaled_ext4_device(&options.store) {
        log::warn!(
            "the store {} is on ext4 without a journal ({device}): there, making files right \
             after many were removed (a trim, an rm -rf) is slow, and so is a cold build then; \
             a filesystem with a journal has no such delay",
            options.store.display()
        );
    }
    if options.reads == Reads::Links && rustix::process::geteuid().is_root() {
        log::warn!(
            "--reads links as root: an artifact is a link to its store file, and root ignores \
             that file's read-only mode, so a program writing through the link as root would \
             change the store file itself (Dune never writes to an entry)"
        );
    }
    raise_open_files_limit();

    // Block the stop signals before any thread starts, so every thread inherits the mask and
    // only the waiter below receives them.
    let mut stop_signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop_signals.add(signal);
    }
    stop_signals
        .thread_block()
        .map_err(|e| fuse_err(io::Error::from(e)))?;

    let stats = Arc::new(Stats::default());
    let cluster = options.cluster.map(Arc::new);
    let landing = Landing::start(store.clone());
    if options.reads == Reads::Links {
        // An artifact is a link from the moment it lands (see `links`).
        landing.keep_temp_names();
    }
    let remote = cluster.clone().map(|cluster| {
        Remote::start(
            cluster,
            store.clone(),
            landing.clone(),
            stats.clone(),
            options.fetch_workers,
            options.prefetch,
        )
    });
    let uploader = match cluster {
        Some(cluster) => Some(Uploader::start(
            cluster,
            store.clone(),
            options.upload_workers,
        )?),
        None => None,
    };
    let fs = CacheFs::new(
        Shared::new(
            store.clone(),
            landing.clone(),
            remote,
            uploader,
            stats,
            options.policy,
            options.reads,
        )
        .map_err(MountError::StatusSnapshots)?,
    );

    if let Some(bound) = options.store_bound {
        trimming::start(fs.shared(), bound).map_err(fuse_err)?;
    }
    if let Some(addr) = options.metrics {
        let shared = fs.shared();
        let bound = crate::metrics::serve(addr, move || shared.metrics_page())
            .map_err(|source| MountError::Metrics { addr, source })?;
        log::info!("metrics on http://{bound}/metrics");
    }

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("dune-cachefs:{}", options.store.display())),
        MountOption::Subtype("dune-cachefs".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.fuse_threads.max(1));
    config.clone_fd = cfg!(target_os = "linux");

    let listings = fs.listings();
    let shared = fs.shared();
    let evictor = evict::Evictor::start(&fs.inodes(), options.max_inodes);
    let mut session = fuser::Session::new(fs, &options.mountpoint, &config).map_err(fuse_err)?;
    listings.set_notifier(session.notifier());
    evictor.set_notifier(session.notifier());
    shared.pages.set_notifier(session.notifier());
    listed_ahead::start(&shared);
    if options.warming {
        let (offers, taken) = warming::queue();
        if let Some(remote) = &shared.remote {
            remote.warm_into(offers.clone());
        }
        let mountpoint = std::path::absolute(&options.mountpoint).map_err(fuse_err)?;
        warming::start(&shared, mountpoint, offers, taken);
    }
    // What the kernel holds as a file, or as a link to a temp file, while it settles becomes a
    // link to its store file (see `links`).
    if options.reads == Reads::Links {
        links::start_retargeting(&shared, &landing).map_err(fuse_err)?;
    }
    let mut unmounter = session.unmount_callable();
    let mountpoint = options.mountpoint.clone();
    let warming_stops = shared.clone();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_requested = stopping.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = stop_signals.wait() {
                stop_requested.store(true, std::sync::atomic::Ordering::SeqCst);
                log::info!("{signal}: unmounting {}", mountpoint.display());
                // A warming lookup in flight would make the unmount fail as busy.
                warming_stops.warming.stop();
                match unmounter.unmount() {
                    Ok(()) => {}
                    // Something has a file open or its working directory in the mount. Detach
                    // it, as `umount -l` does: the mount point is free at once, open files keep
                    // reading, and the session (so the process) ends when the last is closed.
                    // Without this the process would serve on with the stop signals blocked,
                    // deaf to any further SIGTERM.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                        log::warn!(
                            "{} is busy: detaching it; exiting once nothing there is open",
                            mountpoint.display()
                        );
                        if let Err(e) = detach(&mountpoint) {
                            log::error!("detaching {}: {e}", mountpoint.display());
                        }
                    }
                    Err(e) => log::error!("unmounting {}: {e}", mountpoint.display()),
                }
            }
        })
        .map_err(fuse_err)?;
    log::info!(
        "mounted {} at {} ({} policy)",
        options.store.display(),
        options.mountpoint.display(),
        options.policy
    );
    // The kernel queues requests from now on; the session answers them just below.
    crate::service::notify_ready();
    let served = session.run();
    // What was fetched but has not settled yet is kept, not dropped with the process.
    landing.finish();
    match served {
        // After a detach, the kernel may end the session by aborting the connection rather than
        // closing it: that is the end we asked for, not a failure.
        Err(e)
            if stopping.load(std::sync::atomic::Ordering::SeqCst)
                && e.raw_os_error() == Some(rustix::io::Errno::CONNABORTED.raw_os_error()) =>
        {
            Ok(())
        }
        result => result.map_err(fuse_err),
    }
}

/// Raises the limit on open files to the most allowed: a mount keeps a descriptor per open
/// entry, per box connection and per entry it is settling, and running out turns reads into
/// EMFILE errors. Failing to raise it is logged, not fatal.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let raised = match (limit.current, limit.maximum) {
        (Some(soft), hard) if hard.is_none_or(|hard| soft < hard) => {
            limit.current = hard;
            setrlimit(Resource::Nofile, limit)
        }
        _ => Ok(()),
    };
    if let Err(e) = raised {
        log::warn!("cannot raise the open files limit: {e}");
    }
}

/// Detects a dead FUSE mount at `path` ("Transport endpoint is not connected") and, if asked,
/// detaches it.
///
/// The probe is `statvfs`, which always reaches the filesystem's daemon. A `stat` does not: the
/// kernel answers it from the attributes it still caches for the dead mount's root, so a mount
/// killed right after a build looks alive to `stat`, and we would mount on top of the dead one.
fn recover_if_stale(path: &Path, recover: bool) -> Result<(), MountError> {
    match rustix::fs::statvfs(path) {
        Err(rustix::io::Errno::NOTCONN) => {
            if !recover {
                return Err(MountError::StaleMount(path.to_path_buf()));
            }
            log::warn!("{} is a dead FUSE mount; detaching it", path.display());
            detach(path).map_err(|e| MountError::Fuse {
                path: path.to_path_buf(),
                source: e,
            })
        }
        _ => Ok(()),
    }
}

/// Removes the mount at `path` even if it is dead or busy: lazily on Linux (what is open stays
/// usable until closed), by force elsewhere (macOS has no lazy unmount).
#[cfg(target_os = "linux")]
fn detach(path: &Path) -> io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn detach(path: &Path) -> io::Result<()> {
    nix::mount::unmount(path, nix::mount::MntFlags::MNT_FORCE).map_err(io::Error::from)
}
