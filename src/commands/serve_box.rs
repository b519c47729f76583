//! `dune-cachefs box`: run a cache box.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dune_cachefs::boxd::{self, BoxOptions, Ownership};
use dune_cachefs::cluster::config::{ClusterConfig, NodeUrl};

use super::trim::parse_size;

/// Arguments of `box`.
#[derive(clap::Args)]
pub struct BoxArgs {
    /// The directory that holds the entries (a Dune db/ layout); created if missing.
    #[arg(long)]
    root: PathBuf,
    /// The address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// The cluster config; with --node, this box accepts only that node's keys (others: 421),
    /// and serves those it owned under the config's previous table. Read again on SIGHUP.
    #[arg(long, requires = "node")]
    config: Option<PathBuf>,
    /// This box's URL exactly as the cluster config names it.
    #[arg(long, requires = "config")]
    node: Option<String>,
    /// The largest PUT body accepted (units as for trim).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    max_body: u64,
    /// Keep the box under this size, dropping least recently read entries first.
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Seconds between trims when --max-size is set.
    #[arg(long, default_value_t = 600)]
    trim_interval: u64,
    /// Seconds a client may take to send its headers, stall within a body, or leave an answer
    /// unread.
    #[arg(long, default_value_t = 30)]
    io_timeout: u64,
}

/// Runs the box in the foreground until the process is stopped.
pub fn run(args: &BoxArgs) -> anyhow::Result<ExitCode> {
    let mut options = BoxOptions::new(args.root.clone(), args.listen);
    if let (Some(config_path), Some(node)) = (&args.config, &args.node) {
        let config = ClusterConfig::load(config_path)?;
        let url: NodeUrl = node.parse()?;
        let ownership = Ownership::of(&config, &url).with_context(|| {
            let known: Vec<String> = config.nodes().iter().map(|n| n.url().to_string()).collect();
            format!(
                "{} names no node {url}; its nodes are: {}",
                config_path.display(),
                known.join(", ")
            )
        })?;
        options.node = Some(ownership);
        options.config = Some(config_path.clone());
    }
    options.max_body = args.max_body;
    options.max_size = args.max_size;
    options.trim_interval = Duration::from_secs(args.trim_interval.max(1));
    options.io_timeout = Duration::from_secs(args.io_timeout.max(1));
    boxd::run(options)?;
    Ok(ExitCode::SUCCESS)
}
