//! Listing the next shards while a program reads one: `find`, `ls -R`, `du` and `cp -r` walk a
//! kind's shards in order, and the first read of each shard waits for the daemon to list it.
//!
//! Why: through a fresh mount, `find` over 100 000 entries sent 1 025 `READDIRPLUS`, and the
//! first of each shard's waited about a millisecond while the daemon read the store's directory,
//! `stat`ed each artifact and numbered it; meanwhile `find` (and the kernel, making an inode and a
//! dentry per name in `find`'s own context) waited, and so did the other CPU. About half of the
//! walk was that wait. So when a shard is first read, a thread of the daemon lists the next
//! [`AHEAD`] shards, and their first reads take those listings instead of making their own: the
//! daemon's listing and the kernel's taking in the names run side by side.
//!
//! - A listing made ahead is used only if nothing was stored through the mount since it was
//!   made (the [`Listings`](super::listings::Listings) change count), and only within [`FRESH`]
//!   (what the boxes hold changes unannounced; the kernel keeps a listing with boxes for 10 s).
//!   Otherwise it is dropped and the read lists the shard itself, as before.
//! - A read that finds its shard being listed ahead waits for it: listing it twice at once
//!   would only share the same CPU, and a box that stalls would be waited for twice. The
//!   listing ahead is bounded as any listing is (the boxes' connect and I/O timeouts), and one
//!   that panics ends as failed; [`WAIT_AT_MOST`] is only a backstop.
//! - Bounded: at most [`AHEAD`] listings are kept; a read of any shard replaces them. An `ls`
//!   of one shard costs the listing of the next two, made off its path.

use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::shared::{DirItem, Shared};
use super::stats::Stats;
use crate::dune::key::Shard;
use crate::dune::layout::EntryKind;
use crate::sync::lock;

/// Shards listed ahead of the one read.
pub const AHEAD: u8 = 2;

/// How long a listing made ahead may be used.
pub const FRESH: Duration = Duration::from_secs(5);

/// How long a read waits for its shard's listing ahead before listing it itself, at most: longer
/// than a listing from a stalled box takes to fail (its I/O timeout), so only a stuck lister
/// meets it.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(30);

/// Where a shard's listing ahead is.
#[derive(Debug)]
enum State {
    /// Asked for, not begun: a read that comes first lists the shard itself.
    Queued,
    /// Being listed: a read waits for it.
    Listing,
    /// Listed at change count `taken`.
    Listed { taken: u64, items: Vec<DirItem> },
    /// Listing it failed: the read lists it itself (and meets the error, if it lasts).
    Failed,
}

#[derive(Debug)]
struct Slot {
    kind: EntryKind,
    shard: Shard,
    since: Instant,
    state: State,
}

/// The shards listed ahead, and the thread listing them.
#[derive(Default)]
pub(super) struct ListedAhead {
    slots: Mutex<Vec<Slot>>,
    /// Signalled whenever a listing ahead ends.
    ended: Condvar,
    /// Where the shards to list are sent (unset until the thread runs: nothing is listed ahead).
    jobs: OnceLock<Sender<(EntryKind, Shard)>>,
}

/// The shards to list ahead once `shard` is read: the next [`AHEAD`], in the order a kind lists
/// them (the last shard has none).
pub fn next_shards(shard: Shard) -> impl Iterator<Item = Shard> {
    (1..=AHEAD).filter_map(move |step| shard.0.checked_add(step).map(Shard))
}

/// Whether a listing made at change count `taken`, `age` ago, may answer a read at change count
/// `now`.
pub fn usable(taken: u64, age: Duration, now: u64) -> bool {
    taken == now && age <= FRESH
}

impl ListedAhead {
    /// The listing of `kind`'s `shard` made ahead, if there is one still usable at change count
    /// `now` (waiting for it if it is being made). Taken: a second read lists for itself.
    pub(super) fn take(&self, kind: EntryKind, shard: Shard, now: u64) -> Option<Vec<DirItem>> {
        let deadline = Instant::now() + WAIT_AT_MOST;
        let mut slots = lock(&self.slots);
        loop {
            let at = slots
                .iter()
                .position(|slot| slot.kind == kind && slot.shard == shard)?;
            if matches!(slots[at].state, State::Listing) {
                let left = deadline.checked_duration_since(Instant::now())?;
                slots = self
                    .ended
                    .wait_timeout(slots, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let slot = slots.swap_remove(at);
            return match slot.state {
                State::Listed { taken, items } if usable(taken, slot.since.elapsed(), now) => {
                    Some(items)
                }
                _ => None,
            };
        }
    }

    /// `kind`'s `shard` was just read: lists the shards after it ahead, and forgets the others.
    pub(super) fn after(&self, kind: EntryKind, shard: Shard) {
        let Some(jobs) = self.jobs.get() else {
            return;
        };
        let wanted: Vec<Shard> = next_shards(shard).collect();
        let mut slots = lock(&self.slots);
        // One being listed is left to end (its reader may be waiting), then dropped by the next.
        slots.retain(|slot| {
            (slot.kind == kind && wanted.contains(&slot.shard))
                || matches!(slot.state, State::Listing)
        });
        for next in wanted {
            if slots.iter().any(|s| s.kind == kind && s.shard == next) {
                continue;
            }
            if jobs.try_send((kind, next)).is_ok() {
                slots.push(Slot {
                    kind,
                    shard: next,
                    since: Instant::now(),
                    state: State::Queued,
                });
            }
        }
    }

    /// Begins listing `kind`'s `shard` ahead, unless a read took or dropped it meanwhile.
    fn begin(&self, kind: EntryKind, shard: Shard) -> bool {
        let mut slots = lock(&self.slots);
        match slots
            .iter_mut()
            .find(|slot| slot.kind == kind && slot.shard == shard)
        {
            Some(slot) if matches!(slot.state, State::Queued) => {
                slot.state = State::Listing;
                slot.since = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Ends listing `kind`'s `shard` ahead with `listed` (made at change count `taken`).
    fn end(&self, kind: EntryKind, shard: Shard, taken: u64, listed: Option<Vec<DirItem>>) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots
            .iter_mut()
            .find(|slot| slot.kind == kind && slot.shard == shard)
        {
            slot.state = match listed {
                Some(items) => State::Listed { taken, items },
                None => State::Failed,
            };
        }
        drop(slots);
        self.ended.notify_all();
    }
}

/// Starts the thread listing shards ahead for `shared`, until the mount ends.
pub(super) fn start(shared: &std::sync::Arc<Shared>) {
    let (jobs, taken) = crossbeam_channel::bounded(usize::from(AHEAD) * 2);
    let weak = std::sync::Arc::downgrade(shared);
    let started = std::thread::Builder::new()
        .name("listing-ahead".into())
        .spawn(move || list_ahead(&weak, &taken));
    match started {
        Ok(_) => {
            let _ = shared.listed_ahead.jobs.set(jobs);
        }
        Err(e) => log::warn!("not listing shards ahead: {e}"),
    }
}

fn list_ahead(shared: &Weak<Shared>, jobs: &Receiver<(EntryKind, Shard)>) {
    for (kind, shard) in jobs {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let ahead = &shared.listed_ahead;
        if !ahead.begin(kind, shard) {
            continue;
        }
        let taken = shared.listings.now();
        let listing = || shared.shard_items(kind, shard);
        let listed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(listing)) {
            Ok(Ok(items)) => {
                Stats::bump(&shared.stats.listed_ahead);
                Some(items)
            }
            Ok(Err(e)) => {
                log::debug!("listing shard {shard} of {kind:?} ahead: {e}");
                None
            }
            // Its reader lists it itself, and meets the same bug there.
            Err(_) => {
                log::error!("listing shard {shard} of {kind:?} ahead panicked");
                None
            }
        };
        ahead.end(kind, shard, taken, listed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    fn item(name: &str) -> DirItem {
        (name.into(), 7, fuser::FileType::RegularFile)
    }

    /// A `ListedAhead` whose jobs go to the returned receiver (no thread).
    fn with_jobs() -> (ListedAhead, Receiver<(EntryKind, Shard)>) {
        let ahead = ListedAhead::default();
        let (jobs, taken) = crossbeam_channel::bounded(usize::from(AHEAD) * 2);
        let _ = ahead.jobs.set(jobs);
        (ahead, taken)
    }

    #[test]
    fn the_next_shards_stop_at_the_last() {
        let next: Vec<u8> = next_shards(Shard(0x10)).map(|s| s.0).collect();
        assert_eq!(next, vec![0x11, 0x12]);
        let next: Vec<u8> = next_shards(Shard(0xfe)).map(|s| s.0).collect();
        assert_eq!(next, vec![0xff]);
        assert_eq!(next_shards(Shard(0xff)).count(), 0);
    }

    #[test]
    fn a_listing_is_used_only_if_nothing_changed_and_it_is_fresh() {
        assert!(usable(3, Duration::from_millis(10), 3));
        assert!(!usable(3, Duration::from_millis(10), 4), "changed since");
        assert!(!usable(3, FRESH + Duration::from_millis(1), 3), "too old");
    }

    #[test]
    fn a_read_takes_the_listing_made_ahead_once() {
        let (ahead, jobs) = with_jobs();
        let kind = EntryKind::File;
        ahead.after(kind, Shard(1));
        let asked: Vec<u8> = jobs.try_iter().map(|(_, s)| s.0).collect();
        assert_eq!(asked, vec![2, 3]);
        assert!(ahead.begin(kind, Shard(2)));
        ahead.end(kind, Shard(2), 5, Some(vec![item("a")]));
        assert_eq!(ahead.take(kind, Shard(2), 5), Some(vec![item("a")]));
        assert_eq!(ahead.take(kind, Shard(2), 5), None, "taken twice");
        // Not begun yet: the read lists it itself, and the thread then skips it.
        assert_eq!(ahead.take(kind, Shard(3), 5), None);
        assert!(!ahead.begin(kind, Shard(3)));
    }

    #[test]
    fn a_listing_made_before_a_change_is_dropped() {
        let (ahead, _jobs) = with_jobs();
        let kind = EntryKind::File;
        ahead.after(kind, Shard(1));
        assert!(ahead.begin(kind, Shard(2)));
        ahead.end(kind, Shard(2), 5, Some(vec![item("a")]));
        assert_eq!(ahead.take(kind, Shard(2), 6), None);
        // A failed listing is no listing either.
        assert!(ahead.begin(kind, Shard(3)));
        ahead.end(kind, Shard(3), 5, None);
        assert_eq!(ahead.take(kind, Shard(3), 5), None);
    }

    #[test]
    fn reading_elsewhere_forgets_what_was_listed_ahead() {
        let (ahead, jobs) = with_jobs();
        ahead.after(EntryKind::File, Shard(1));
        assert!(ahead.begin(EntryKind::File, Shard(2)));
        ahead.end(EntryKind::File, Shard(2), 5, Some(vec![item("a")]));
        ahead.after(EntryKind::Meta(MetaVersion::V4), Shard(1));
        assert_eq!(ahead.take(EntryKind::File, Shard(2), 5), None);
        // Only the new shards were asked for again: the jobs bound holds.
        let asked: Vec<(EntryKind, u8)> = jobs.try_iter().map(|(k, s)| (k, s.0)).collect();
        assert_eq!(
            asked,
            vec![
                (EntryKind::File, 2),
                (EntryKind::File, 3),
                (EntryKind::Meta(MetaVersion::V4), 2),
                (EntryKind::Meta(MetaVersion::V4), 3)
            ]
        );
        assert!(lock(&ahead.slots).len() <= usize::from(AHEAD));
    }

    #[test]
    fn a_read_waits_for_its_shard_being_listed() {
        let (ahead, _jobs) = with_jobs();
        let ahead = std::sync::Arc::new(ahead);
        let kind = EntryKind::File;
        ahead.after(kind, Shard(1));
        assert!(ahead.begin(kind, Shard(2)));
        let lister = ahead.clone();
        let ending = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            lister.end(kind, Shard(2), 5, Some(vec![item("b")]));
        });
        assert_eq!(ahead.take(kind, Shard(2), 5), Some(vec![item("b")]));
        ending.join().unwrap();
    }
}
