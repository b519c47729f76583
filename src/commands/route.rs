//! `dune-cachefs route`: which box owns a key.

use std::path::PathBuf;
use std::process::ExitCode;

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
    anyhow::bail!("route is not built yet ({:?}, {})", args.config, args.key)
}
