//! Reading a shard through: read-ahead across the files of a listed shard.
//!
//! A program that copies part of the cache (`cp -r`, `tar`, `find | xargs cat`) lists a shard and
//! then reads its artifacts one after another. A kernel that has not read an artifact yet asks
//! the daemon for it (a READ, a round trip on the program's path), and after that READ marks the
//! file's access time stale, whatever `noatime` says, so the next `stat` of the file asks too (a
//! GETATTR: a second `cp -r` cost one per file). The kernel's own read-ahead never crosses from
//! one file to the next. This module does: it keeps the order of the shards listed last,
//! notices reads through the daemon that follow it, and has the warming threads hand the kernel
//! the next artifacts' pages (as at Dune 2.9's touch: see `unopened`), so the program reads kept
//! pages with no request, and the next `stat` finds the attributes still fresh.
//!
//! - **The order** is that of the inode numbers, and a shard lists its entries in it: `cp`
//!   sorts a directory's names by inode number before copying them (that is fastest on most
//!   disks), and `tar` and `find` keep the listing's order, so all three read in this one.
//! - **The sign** is the one the kernel's read-ahead uses within a file: two artifacts of the
//!   shard read in a row in its order, or a read of the marker, an artifact half a window
//!   ahead left unhanded for that purpose (the kernel marks a page so), which offers the next
//!   half window while the reader still has half of this one to read; or a first read of the
//!   shard that starts at its start. Reads in any other order (Dune restoring
//!   rules, a `cat` of one file) offer nothing.
//! - **Bounded:** [`WINDOW`] artifacts at a time, each up to the bound on handed pages, and the
//!   orders of the last `SHARDS_KEPT` shards listed. A wrong guess costs copies into the page
//!   cache, which the kernel reclaims first.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::dune::layout::Entry;
use crate::sync::lock;

/// How many artifacts are offered ahead of a program reading a shard through.
pub const WINDOW: usize = 64;

/// How many shards' orders are kept (a million-entry cache lists about 4 000 artifacts a
/// shard, some 100 KB of order each).
const SHARDS_KEPT: usize = 16;

/// One listed shard: its artifacts in inode order, and how far a program read it through.
struct Listed {
    /// (inode number, entry), sorted by number.
    order: Vec<(u64, Entry)>,
    progress: Progress,
}

/// How far a program has read a shard through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// The position of the last artifact read through the daemon.
    last: Option<usize>,
    /// The positions below it were offered to warming (0: none yet), but for the markers.
    ahead_until: usize,
}

impl Progress {
    /// Records a read through the daemon of position `at` of a shard of `len` artifacts, and
    /// returns the positions to offer now, if `at` follows the last read (the next in order, or
    /// within what was offered after it), or is the shard's first read and at its start: those
    /// up to a [`WINDOW`] ahead of `at` not offered yet, but for the marker half a window ahead,
    /// left for the reader to ask for, so that its read offers the next half while the reader
    /// still has the rest of this one to read. None otherwise.
    fn read(&mut self, at: usize, len: usize) -> Vec<usize> {
        let follows = match self.last {
            Some(last) => last < at && at <= (last + 1).max(self.ahead_until),
            None => at == 0,
        };
        self.last = Some(at);
        if !follows {
            return Vec::new();
        }
        let from = (at + 1).max(self.ahead_until);
        let to = (at + WINDOW).min(len);
        if from >= to {
            return Vec::new();
        }
        self.ahead_until = to;
        let marker = at + WINDOW / 2;
        (from..to).filter(|&p| p != marker).collect()
    }
}

/// The orders of the shards listed last, and the programs reading them through.
#[derive(Default)]
pub(super) struct Through(Mutex<VecDeque<Listed>>);

impl Through {
    /// Keeps the order of a shard just listed, whose artifacts are `artifacts` (sorted by inode
    /// number): a program reading it through starts again.
    pub(super) fn listed(&self, artifacts: Vec<(u64, Entry)>) {
        let Some(&(_, first)) = artifacts.first() else {
            return;
        };
        let shard = first.key.shard();
        let mut shards = lock(&self.0);
        shards.retain(|listed| {
            listed
                .order
                .first()
                .is_none_or(|(_, e)| e.kind != first.kind || e.key.shard() != shard)
        });
        if shards.len() >= SHARDS_KEPT {
            shards.pop_front();
        }
        shards.push_back(Listed {
            order: artifacts,
            progress: Progress::default(),
        });
    }

    /// Records a read through the daemon of artifact `entry` (inode `ino`) from its start, and
    /// returns the artifacts to hand the kernel now: see the module's docs.
    pub(super) fn read(&self, ino: u64, entry: &Entry) -> Vec<(u64, Entry)> {
        let mut shards = lock(&self.0);
        let shard = entry.key.shard();
        let listed = shards.iter_mut().find(|listed| {
            listed
                .order
                .first()
                .is_some_and(|(_, e)| e.kind == entry.kind && e.key.shard() == shard)
        });
        let Some(listed) = listed else {
            return Vec::new();
        };
        let Ok(at) = listed.order.binary_search_by_key(&ino, |(n, _)| *n) else {
            return Vec::new();
        };
        let len = listed.order.len();
        let offered = listed.progress.read(at, len);
        offered.into_iter().map(|p| listed.order[p]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::EntryKind;

    /// Positions `from..to` but for `marker`.
    fn but(from: usize, to: usize, marker: usize) -> Vec<usize> {
        (from..to).filter(|&p| p != marker).collect()
    }

    const HALF: usize = WINDOW / 2;
    const NONE: Vec<usize> = Vec::new();

    #[test]
    fn a_lone_read_offers_nothing_and_the_next_in_order_offers_a_window() {
        let mut progress = Progress::default();
        assert_eq!(progress.read(5, 1000), NONE, "a first read");
        assert_eq!(progress.read(9, 1000), NONE, "not the next");
        assert_eq!(progress.read(10, 1000), but(11, 10 + WINDOW, 10 + HALF));
    }

    #[test]
    fn a_first_read_at_the_start_offers_a_window() {
        let mut progress = Progress::default();
        assert_eq!(progress.read(0, 1000), but(1, WINDOW, HALF));
        assert_eq!(progress.read(0, 1000), NONE, "again");
    }

    #[test]
    fn the_marker_offers_the_next_half_window_ahead_of_the_reader() {
        let mut progress = Progress::default();
        progress.read(0, 1000);
        assert_eq!(
            progress.read(HALF, 1000),
            but(WINDOW, HALF + WINDOW, WINDOW)
        );
        assert_eq!(
            progress.read(WINDOW, 1000),
            but(HALF + WINDOW, 2 * WINDOW, WINDOW + HALF),
            "the next marker"
        );
    }

    #[test]
    fn reads_within_the_window_offer_only_what_was_not_offered() {
        let mut progress = Progress::default();
        progress.read(0, 1000);
        assert_eq!(progress.read(5, 1000), but(WINDOW, 5 + WINDOW, 5 + HALF));
        assert_eq!(progress.read(4, 1000), NONE, "backwards");
        assert_eq!(
            progress.read(6, 1000),
            vec![5 + WINDOW],
            "a reader behind its window"
        );
    }

    #[test]
    fn a_window_stops_at_the_shard_end_and_a_jump_past_it_starts_over() {
        let mut progress = Progress::default();
        assert_eq!(
            progress.read(0, 10),
            (1..10).collect::<Vec<_>>(),
            "no marker in it"
        );
        assert_eq!(progress.read(9, 10), NONE, "nothing left");
        let mut progress = Progress::default();
        progress.read(0, 1000);
        assert_eq!(progress.read(500, 1000), NONE, "past what was offered");
        assert_eq!(progress.read(501, 1000), but(502, 501 + WINDOW, 501 + HALF));
    }

    fn artifact(shard: u8, n: u8) -> Entry {
        Entry {
            kind: EntryKind::File,
            key: format!("{shard:02x}{n:02x}{}", "0".repeat(28))
                .parse()
                .unwrap(),
        }
    }

    #[test]
    fn reads_follow_the_order_of_the_shard_they_are_in() {
        let through = Through::default();
        let order = |shard| (0..50u8).map(move |n| (u64::from(n) * 10, artifact(shard, n)));
        through.listed(order(1).collect());
        through.listed(order(2).collect());
        assert!(through.read(10, &artifact(1, 1)).is_empty(), "a lone read");
        assert!(
            through.read(20, &artifact(2, 2)).is_empty(),
            "another shard"
        );
        let offered = through.read(20, &artifact(1, 2));
        let expected: Vec<_> = order(1).skip(3).filter(|(ino, _)| *ino != 340).collect();
        assert_eq!(offered, expected, "to the end, but for the marker");
        assert!(
            through.read(15, &artifact(1, 1)).is_empty(),
            "a number not listed"
        );
        through.listed(order(1).collect());
        assert!(
            through.read(340, &artifact(1, 34)).is_empty(),
            "listed again: starts over"
        );
    }

    #[test]
    fn only_the_last_shards_listed_are_kept() {
        let through = Through::default();
        for shard in 0..=SHARDS_KEPT as u8 {
            through.listed(vec![(1, artifact(shard, 0)), (2, artifact(shard, 1))]);
        }
        assert_eq!(lock(&through.0).len(), SHARDS_KEPT);
        assert!(through.read(1, &artifact(0, 0)).is_empty(), "forgotten");
        assert_eq!(through.read(1, &artifact(1, 0)), vec![(2, artifact(1, 1))]);
        through.listed(Vec::new());
        assert_eq!(lock(&through.0).len(), SHARDS_KEPT);
    }
}
