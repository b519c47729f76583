//! `dune-cachefs push`: upload a local Dune cache to the boxes that own its entries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use dune_cachefs::store::{self, Store};
use dune_cachefs::upload::push::push;

use super::cluster_args::ClusterArgs;
use super::progress::ProgressLine;

/// Arguments of `push`.
#[derive(clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The Dune cache directory to upload (default: $XDG_CACHE_HOME/dune/db, else ~/.cache/dune/db).
    db: Option<PathBuf>,
    /// How many transfers run at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
}

/// Pushes and prints a summary; exit 1 if any entry did not reach its box.
pub fn run(args: &PushArgs) -> anyhow::Result<ExitCode> {
    let db = match &args.db {
        Some(db) => db.clone(),
        None => store::default_dune_db()
            .context("no DB given, and neither XDG_CACHE_HOME nor HOME is set")?,
    };
    let store = Store::open(&db)?;
    let cluster = args.cluster.connect(true)?;
    let started = Instant::now();
    let line = ProgressLine::new();
    let report = push(&cluster, &store, usize::from(args.jobs), &|p| line.show(p))
        .with_context(|| format!("pushing {}", db.display()))?;
    line.finish();
    for (entry, message) in &report.collisions {
        println!("collision: {entry}: the box keeps its own value ({message})");
    }
    for failure in &report.failures {
        println!("failed: {failure}");
    }
    println!(
        "pushed {} in {:.1}s: {} uploaded, {} already there, {} collisions, {} failed",
        db.display(),
        started.elapsed().as_secs_f64(),
        report.sent,
        report.already_there,
        report.collisions.len(),
        report.failures.len()
    );
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
