//! `dune-cachefs route`: which box owns a key.
//!
//! The same lookup the mount and the uploader make, from the command line: for checking a new
//! config before rolling it out, or finding the box to look at when one key misbehaves. Loading
//! the config validates all of it, so this is also the way to lint a config.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::dune::key::Key;

/// Arguments of `route`.
#[derive(clap::Args)]
pub struct RouteArgs {
    /// The cluster config (the 2020 `dune-distributed-cache` format).
    #[arg(long)]
    config: PathBuf,
    /// The key to route (32 lowercase hex characters).
    key: String,
}

/// Prints the owning node's URL.
pub fn run(args: &RouteArgs) -> anyhow::Result<ExitCode> {
    // The key first: a typo is reported without touching the disk. Its error names the key.
    let key: Key = args.key.parse()?;
    let config = ClusterConfig::load(&args.config)?;
    writeln!(std::io::stdout().lock(), "{}", config.owner(&key).url())?;
    Ok(ExitCode::SUCCESS)
}
