//! Keeping a mount's store under `--store-size` while it is mounted: every `--trim-interval`,
//! if entries came into the store since the last trim, the store is trimmed the way
//! `dune cache trim` trims (the offline trim's code, [`crate::store::trim`]: unused artifacts
//! oldest-ctime first, then metadata naming an artifact no longer here), except that an entry
//! open through the mount or waiting for its upload is never removed
//! (`Shared::remove_unless_open`; only in the read modes where the kernel asks before it
//! opens, not `--reads kept`). An entry trimmed here and asked for again is fetched again from
//! its box, like any other miss.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use super::stats::Stats;
use crate::store::trim::TrimRules;

/// The store's bound and how often to hold it.
#[derive(Clone, Copy, Debug)]
pub struct StoreBound {
    /// The size to trim down to, in bytes.
    pub size: u64,
    /// The time between checks.
    pub interval: Duration,
}

/// What has come into the store so far: bytes fetched and entries stored through the mount. A
/// trim is due only when it changed, so an idle mount does not walk its store every interval.
fn arrivals(stats: &Stats) -> (u64, u64) {
    (
        stats.bytes_fetched.load(Ordering::Relaxed),
        stats.stores.load(Ordering::Relaxed),
    )
}

/// Whether a trim is due: at the first check, and after anything came in since the last trim.
fn due(last_trim: Option<(u64, u64)>, now: (u64, u64)) -> bool {
    last_trim != Some(now)
}

/// Starts the thread that keeps the store under `bound`; it runs as long as the process.
pub(super) fn start(shared: Arc<Shared>, bound: StoreBound) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("trim".into())
        .spawn(move || {
            let mut last_trim = None;
            loop {
                let seen = arrivals(&shared.stats);
                if due(last_trim, seen) {
                    // Entries fetched before `seen` and still settling reach the store after
                    // this trim has walked it: then the next check trims again.
                    let settled = shared.landing.waiting() == 0;
                    trim(&shared, bound.size);
                    last_trim = settled.then_some(seen);
                }
                std::thread::sleep(bound.interval);
            }
        })
        .map(drop)
}

/// One trim of the store down to `size` bytes, counted and logged.
fn trim(shared: &Shared, size: u64) {
    let trimmed = shared
        .store
        .trim_with(size, TrimRules::Dune, |entry, _, remove| {
            shared.remove_unless_open(entry, remove)
        });
    match trimmed {
        Ok(report) => {
            let stats = &shared.stats;
            Stats::bump(&stats.trims);
            let add =
                |counter: &std::sync::atomic::AtomicU64, n| counter.fetch_add(n, Ordering::Relaxed);
            add(&stats.trimmed_artifacts, report.removed_artifacts);
            add(&stats.trimmed_metadata, report.removed_metadata);
            stats
                .store_bytes
                .store(report.size_after, Ordering::Relaxed);
            if report.removed_artifacts + report.removed_metadata > 0 {
                log::info!(
                    "trimmed the store to {size} bytes: {} -> {} bytes, {} artifacts and {} \
                     metadata entries removed",
                    report.size_before,
                    report.size_after,
                    report.removed_artifacts,
                    report.removed_metadata
                );
            }
        }
        Err(e) => log::error!("trimming the store: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_at_first_and_after_arrivals_only() {
        assert!(due(None, (0, 0)));
        assert!(!due(Some((10, 2)), (10, 2)));
        assert!(due(Some((10, 2)), (20, 2)));
        assert!(due(Some((10, 2)), (10, 3)));
    }
}
