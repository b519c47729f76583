//! `dune-cachefs rebalance`: move the entries whose owner changed to their new owners, then (with
//! `--drop`) have their previous owners drop them. See docs/cluster-config.md for the whole
//! procedure of adding or removing boxes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use dune_cachefs::rebalance::{drop_unowned, rebalance, transition_digest, Dropped, Journal};
use dune_cachefs::store::Store;

use super::cluster_args::ClusterArgs;
use super::progress::ProgressLine;

/// Arguments of `rebalance`.
#[derive(clap::Args)]
pub struct RebalanceArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Where the entries already settled are recorded, so a re-run resumes (default: the
    /// config's path with `.rebalance` appended).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// How many transfers run at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Once every entry is settled, have each previous owner still in the cluster drop what it
    /// no longer owns (`POST /_drop`).
    #[arg(long)]
    drop: bool,
}

/// Moves, prints a summary, and drops if asked; exit 1 if any entry did not settle (or a drop
/// failed).
pub fn run(args: &RebalanceArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.connect(true)?;
    let config_path = args.cluster.config_path();
    if cluster.config().previous_nodes().is_empty() {
        anyhow::bail!(
            "{} names no previous table: nothing to move. Add (previous (node ...) ...) with \
             the table it replaces (docs/cluster-config.md)",
            config_path.display()
        );
    }
    let journal_path = args.journal.clone().unwrap_or_else(|| {
        let mut path = config_path.as_os_str().to_owned();
        path.push(".rebalance");
        PathBuf::from(path)
    });
    let journal = Journal::open(&journal_path, &transition_digest(&cluster))
        .with_context(|| format!("opening the journal {}", journal_path.display()))?;
    // Fetched entries are verified in a store of their own beside the journal, owned by this
    // run: a second rebalance with the same journal is refused, and what a killed run left
    // there is swept.
    let mut scratch_path = journal_path.as_os_str().to_owned();
    scratch_path.push(".scratch");
    let scratch_path = PathBuf::from(scratch_path);
    std::fs::create_dir_all(&scratch_path)
        .with_context(|| format!("creating {}", scratch_path.display()))?;
    let scratch = Store::open_exclusive(&scratch_path)?;

    let started = Instant::now();
    let line = ProgressLine::new();
    let report = rebalance(&cluster, &scratch, &journal, usize::from(args.jobs), &|p| {
        line.show(p)
    });
    line.finish();
    for (entry, message) in &report.collisions {
        println!("collision: {entry}: the new owner keeps its own value ({message})");
    }
    for failure in &report.failures {
        println!("failed: {failure}");
    }
    println!(
        "rebalanced in {:.1}s: {} moved ({} bytes), {} already there, {} settled before, \
         {} vanished, {} collisions, {} failed",
        started.elapsed().as_secs_f64(),
        report.moved,
        report.moved_bytes,
        report.already_there,
        report.settled_before,
        report.vanished,
        report.collisions.len(),
        report.failures.len()
    );
    if !report.is_complete() {
        println!(
            "not every entry is on its new owner: run the same command again to finish \
             (journal {})",
            journal.path().display()
        );
        return Ok(ExitCode::from(1));
    }
    drop(scratch);
    let _ = std::fs::remove_dir_all(&scratch_path);
    if !args.drop {
        println!(
            "every entry is on its new owner; `--drop` has the previous owners drop what they \
             no longer own"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut all_dropped = true;
    let dropped = drop_unowned(&cluster);
    if dropped.is_empty() {
        println!("no node that stays in the cluster lost keys: nothing to drop");
    }
    for Dropped { url, result } in dropped {
        match result {
            Ok(Some((entries, bytes))) => {
                println!("dropped: {url}: {entries} entries ({bytes} bytes)")
            }
            Ok(None) => println!(
                "not dropped: {url} is an S3 bucket, which has no drop request: the objects of \
                 keys it no longer owns stay there; delete them with the store's own tools \
                 (docs/object-store.md)"
            ),
            Err(e) => {
                all_dropped = false;
                println!("failed: dropping on {url}: {e}");
            }
        }
    }
    Ok(if all_dropped {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
