//! `dune-cachefs fsck DB`: check every entry of a Dune cache directory.
//!
//! stdout lists only the bad paths, one per line (`<path>: <reason>`), so scripts can consume it;
//! the summary goes to stderr.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dune_cachefs::store::Store;

/// Arguments of `fsck`.
#[derive(clap::Args)]
pub struct FsckArgs {
    /// The Dune cache directory (the `db/` directory itself, e.g. ~/.cache/dune/db).
    db: PathBuf,
}

/// Checks the store; exit 0 when every entry is sound, 1 when any is not.
pub fn run(args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&args.db)?;
    let report = store
        .fsck()
        .with_context(|| format!("checking {}", args.db.display()))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for finding in &report.findings {
        writeln!(out, "{}: {}", finding.path.display(), finding.problem)?;
    }
    out.flush()?;
    eprintln!(
        "fsck {}: {} artifacts, {} metadata ({} naming artifacts held elsewhere), {} bad",
        args.db.display(),
        report.artifacts,
        report.metadata,
        report.dangling_metadata,
        report.findings.len()
    );
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
