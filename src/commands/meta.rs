//! `dune-cachefs meta`: show a metadata entry.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `meta`.
#[derive(clap::Args)]
pub struct MetaArgs {
    /// The metadata file (e.g. db/meta/v4/ab/<key>).
    file: PathBuf,
    /// Print JSON instead of the readable form.
    #[arg(long)]
    json: bool,
}

/// Prints the entry.
pub fn run(args: &MetaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("meta is not built yet ({:?}, {})", args.file, args.json)
}
