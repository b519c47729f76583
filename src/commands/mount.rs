//! `dune-cachefs mount`: present a Dune cache (local store plus boxes) at a mount point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dune_cachefs::mount::ahead::Limits;
use dune_cachefs::mount::policy::PlatformPolicy;
use dune_cachefs::mount::trimming::StoreBound;
use dune_cachefs::mount::{self, MountOptions, Reads};
use dune_cachefs::store;

use super::cluster_args::OptionalClusterArgs;
use super::trim::parse_size;

/// Arguments of `mount`.
#[derive(clap::Args)]
pub struct MountArgs {
    /// Where to mount (an empty directory).
    mountpoint: PathBuf,
    /// The local store (default: $XDG_CACHE_HOME/dune/db, else ~/.cache/dune/db).
    #[arg(long)]
    store: Option<PathBuf>,
    #[command(flatten)]
    cluster: OptionalClusterArgs,
    /// Follow macOS (macFUSE) or Linux behaviour (default: this platform's).
    #[arg(long, value_parser = clap::value_parser!(PlatformPolicy))]
    platform_policy: Option<PlatformPolicy>,
    /// Let users other than the mounting one use the mount: they can read entries, and write
    /// only where the modes allow them (a mount by a user other than root needs
    /// `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// How files are opened and read: `kept` (the kernel opens files without asking and keeps
    /// their pages: the fewest requests), `passthrough` (every open asked, reads by FUSE
    /// passthrough where the kernel and privileges allow), `daemon` (every open asked, reads
    /// served by the daemon) or `links` (as `kept`, but an artifact the store holds is a
    /// symbolic link to its store file, which the kernel follows and reads itself: no request
    /// once it keeps the link; `find -type f` and `cp -r` then see links).
    #[arg(long, default_value_t = Reads::Kept, value_parser = clap::value_parser!(Reads))]
    reads: Reads,
    /// If the mount point is a dead mount left by a killed process, detach it first.
    #[arg(long)]
    recover: bool,
    /// Threads serving kernel requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Threads talking to each box (a stalled box ties up only its own), and as many for
    /// listings.
    #[arg(long, default_value_t = 16)]
    fetch_workers: usize,
    /// Threads uploading what Dune stores through the mount.
    #[arg(long, default_value_t = 4)]
    upload_workers: usize,
    /// Rules the mount may fetch ahead of Dune when the boxes' hints name them (and Dune has not
    /// asked for them yet); 0 turns fetching ahead off.
    #[arg(long, default_value_t = Limits::default().window)]
    prefetch_window: usize,
    /// Bytes the mount may fetch ahead of Dune (units as for trim).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    prefetch_budget: u64,
    /// Keep the local store under this size while mounted (units as for trim), trimming it the
    /// way `dune cache trim` does; entries open or waiting for their upload are kept.
    #[arg(long, value_parser = parse_size)]
    store_size: Option<u64>,
    /// Seconds between checks of the store's size when --store-size is set.
    #[arg(long, default_value_t = 60)]
    trim_interval: u64,
    /// Answer `GET /metrics` (Prometheus text format) on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Inode numbers the kernel may hold (the mount's memory grows with it: at 131 072, a
    /// `find` over a million entries peaks at 94 MiB); past this, the kernel is asked to
    /// drop the names of the entries used least recently, which are looked up again when next
    /// used.
    #[arg(long, default_value_t = mount::evict::DEFAULT_MOST, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_inodes: usize,
    /// Do not look up ahead of Dune, through the mount, the entries the boxes' hints say it asks
    /// for next (warming the kernel saves Dune a round trip per name and file it restores; a
    /// plain `umount` at the moment a build ends may find the mount busy with such a lookup),
    /// nor hand the kernel the next artifacts of a shard a program reads through (`cp -r`).
    #[arg(long)]
    no_warming: bool,
}

/// Mounts and serves in the foreground until unmounted or signalled.
pub fn run(args: &MountArgs) -> anyhow::Result<ExitCode> {
    let store = match &args.store {
        Some(store) => store.clone(),
        None => store::default_dune_db()
            .context("no --store given, and neither XDG_CACHE_HOME nor HOME is set")?,
    };
    let cluster = args.cluster.connect(true)?;
    let mountpoint = args.mountpoint.display().to_string();
    mount::serve(MountOptions {
        store,
        mountpoint: args.mountpoint.clone(),
        cluster,
        policy: args.platform_policy.unwrap_or_else(PlatformPolicy::native),
        allow_other: args.allow_other,
        reads: args.reads,
        fuse_threads: args.threads,
        fetch_workers: args.fetch_workers,
        upload_workers: args.upload_workers,
        prefetch: Limits {
            window: args.prefetch_window,
            budget: args.prefetch_budget,
        },
        recover_stale: args.recover,
        metrics: args.metrics,
        store_bound: args.store_size.map(|size| StoreBound {
            size,
            interval: Duration::from_secs(args.trim_interval.max(1)),
        }),
        max_inodes: args.max_inodes,
        warming: !args.no_warming,
    })?;
    log::info!("{mountpoint} is unmounted: exiting");
    Ok(ExitCode::SUCCESS)
}
