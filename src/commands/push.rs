//! `dune-cachefs push`: upload a local Dune cache to the boxes that own its entries.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use dune_cachefs::store::{self, Store};
use dune_cachefs::upload::push::{push, Progress};

use super::cluster_args::ClusterArgs;

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

/// A one-line progress display on a terminal (stderr), and nothing otherwise, so logs and pipes
/// stay clean.
struct ProgressLine {
    enabled: bool,
    last_draw: Mutex<Option<Instant>>,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
            last_draw: Mutex::new(None),
        }
    }

    fn show(&self, p: Progress) {
        if !self.enabled {
            return;
        }
        let mut last = self.last_draw.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed().as_millis() >= 100) || p.done == p.total;
        if due {
            *last = Some(Instant::now());
            eprint!("\r{}/{} entries, {} failed ", p.done, p.total, p.failed);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}
