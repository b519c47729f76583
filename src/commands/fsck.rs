//! `dune-cachefs fsck`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `fsck`.
#[derive(clap::Args)]
pub struct FsckArgs {
    /// The Dune cache directory (the `db/` directory itself).
    db: PathBuf,
}

/// Runs the check.
pub fn run(args: &FsckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("fsck is not built yet ({:?})", args.db)
}
