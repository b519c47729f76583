//! `dune-cachefs trim`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `trim`.
#[derive(clap::Args)]
pub struct TrimArgs {
    /// The Dune cache directory (the `db/` directory itself).
    db: PathBuf,
    /// Target size.
    #[arg(long)]
    size: String,
}

/// Runs the trim.
pub fn run(args: &TrimArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("trim is not built yet ({:?}, {})", args.db, args.size)
}
