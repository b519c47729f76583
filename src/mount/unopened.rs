//! Reads and writes of files the kernel opened without asking (`--reads kept`, the default).
//!
//! Dune opens every entry it restores, and every open and close of a file on a FUSE mount is a
//! round trip to the daemon each (OPEN, then RELEASE), which made up most of the requests a
//! restored rule cost. Answering the first OPEN with ENOSYS tells the kernel the filesystem has
//! no use for opens: from then on it opens every file of the mount itself, with no request, and
//! keeps the pages it reads (its "no open" mode). Entries never change, so kept pages are never
//! stale, and a file read once is read again, through any number of opens, with no request at
//! all. The daemon sees a file only when the kernel lacks its pages: a READ that names the
//! inode, not a handle. This module answers those:
//!
//! - an entry is read from the store, fetched from its box first if the store lacks it (the
//!   open of a handle used to do that); a metadata entry only if the store still holds the value
//!   its number stands for (else ESTALE, and the kernel is told to look the name up again);
//! - a scratch file (Dune writing an entry) is written through the file its creation opened
//!   ([`Created`]), else by its path, and read by its path.
//!
//! A file created through the mount is answered without a handle in every mode: in this one the
//! kernel never says when the creator closes it (no RELEASE), so a handle would stay open, and
//! with it the disk space of every scratch file Dune removes. [`Created`] keeps the file open
//! for writing instead (Dune creates its scratch files read-only, so they cannot be opened for
//! writing again) until it is removed or installed as an entry, or the kernel forgets it. (So a
//! scratch file cannot be written once removed, even by a writer that still has it open.)
//!
//! Dune 2.9 sets the times of every artifact it restores (`utimensat`) just before it copies
//! it. That costs a SETATTR, which FUSE always forwards; it comes after the lookup, so the kernel
//! holds the inode, and before the read. [`Shared::hand_pages`] uses it: the daemon hands the
//! kernel the artifact's bytes there (FUSE's "store" notification, which fills the inode's page
//! cache), so the copy that follows reads kept pages with no READ, where a fresh kernel (a new
//! mount, a name it has not seen) would otherwise ask once per artifact, on Dune's path. (Handing
//! pages at the *lookup* was tried: the kernel makes the inode only after the reply reaches the
//! looking-up thread, and pages handed meanwhile were mostly lost, so reads were not saved.)
//!
//! A rule's metadata is handed too, but only when Dune is about to read it: the hint of a rule
//! Dune was seen to ask for names it ([`Remote::take_near`](super::remote::Remote::take_near)).
//! Its READ was the one request left on Dune's path for each rule it restores, and the only
//! sign the mount had that Dune reached the rule; so a handing stands for that sign (the books
//! of what was fetched ahead close, the rule's own hint is followed), and since only rules Dune
//! was seen to ask for make others near, Dune still shows itself once every hint's length of
//! rules, and fetching ahead stays paced by it.
//!
//! What the kernel decides alone in this mode: an open for writing of an entry is not refused
//! at open (its first write is, with EACCES), and an open of a missing entry's number cannot
//! fail (its first read does, as the open did before).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fuser::{Errno, INodeNo, Notifier, ReplyData};

use super::answers;
use super::changes::{self, Open};
use super::inodes::Value;
use super::scratch;
use super::shared::{held_meta, Shared};
use super::stats::Stats;
use super::tree::{self, Node};
use super::Reads;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::landing::{read_file_at, window, Landing};
use crate::store::EntryStat;
use crate::sync::lock;

/// The scratch files created through the mount and still open for writing, by inode.
#[derive(Default)]
pub(super) struct Created(Mutex<HashMap<u64, Arc<File>>>);

impl Created {
    pub(super) fn insert(&self, ino: u64, file: File) {
        lock(&self.0).insert(ino, Arc::new(file));
    }

    fn get(&self, ino: u64) -> Option<Arc<File>> {
        lock(&self.0).get(&ino).cloned()
    }

    /// Closes inode `ino`'s file, if it was created here: it was removed, it became an entry,
    /// or the kernel forgot it.
    pub(super) fn close(&self, ino: u64) {
        lock(&self.0).remove(&ino);
    }
}

/// The largest artifact whose pages are handed to the kernel unasked: a copy of a larger one
/// would cost more memory at once than the requests it saves are worth, and a `touch` of a
/// large artifact that is not read next would fill the page cache for nothing.
const HANDED_AT_MOST: u64 = 4 << 20;

/// How long pages handed to the kernel are taken to be still there: an entry handed more
/// recently is not handed again (warming handed it, and Dune 2.9 touches it next). Well under the
/// minute of disuse after which the benchmarks' host reclaimed pages.
pub(super) const HANDED_FRESH: Duration = Duration::from_secs(20);

/// How many inodes' last handing is remembered; past it the memory starts again.
const HANDED_KEPT: usize = 65_536;

/// How the daemon hands the kernel pages it did not ask for (the notifier is set once the
/// session exists), and when it last handed each inode's.
#[derive(Default)]
pub(super) struct Pages {
    notifier: OnceLock<Notifier>,
    handed: Mutex<HashMap<u64, Instant>>,
}

impl Pages {
    pub(super) fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Drops whatever the kernel keeps of inode `ino`'s pages (a kept link's target is one).
    pub(super) fn drop_kept(&self, ino: u64) -> std::io::Result<()> {
        match self.notifier.get() {
            Some(notifier) => notifier.inval_inode(INodeNo(ino), 0, 0),
            None => Ok(()),
        }
    }

    /// Whether inode `ino`'s pages are due to be handed `now` (none handed lately); if so they
    /// count as handed now.
    fn due(&self, ino: u64, now: Instant) -> bool {
        let mut handed = lock(&self.handed);
        if let Some(at) = handed.get(&ino) {
            if now.saturating_duration_since(*at) < HANDED_FRESH {
                return false;
            }
        }
        if handed.len() >= HANDED_KEPT {
            handed.clear();
        }
        handed.insert(ino, now);
        true
    }
}

impl Shared {
    /// Hands the kernel the pages of artifact `entry` (inode `ino`), which it holds and is
    /// likely to read next (at Dune 2.9's touch, or once warming looked it up): see the module's
    /// docs. A rule's metadata goes to [`Shared::hand_rule`]. Not once per inode for good: the
    /// kernel may have dropped pages it was handed long ago (memory pressure, or a host's
    /// proactive reclaim of pages unused for a minute, as on the machine the benchmarks ran on),
    /// and a copy costs less than the READs it saves; but not again within [`HANDED_FRESH`], so
    /// that an artifact warming handed is not copied a second time at Dune 2.9's touch. Only
    /// what the store holds is handed (a fetch is not started for it), and nothing in the other
    /// read modes, where the kernel reads through an open handle or by passthrough.
    pub(super) fn hand_pages(self: &Arc<Self>, ino: u64, entry: &Entry) {
        if entry.kind != EntryKind::File {
            return self.hand_rule(ino, entry);
        }
        // A link's pages hold its target: handing it the artifact's bytes would change it.
        if !hands_pages(self.reads, entry.kind, 0)
            || self.inodes.is_link(ino)
            || !self.pages.due(ino, Instant::now())
        {
            return;
        }
        let size = match self.landing.stat(entry) {
            Ok(stat) if hands_pages(self.reads, entry.kind, stat.size) => stat.size,
            _ => return,
        };
        if let Ok(bytes) = self.landing.read_at(entry, 0, size as u32) {
            self.store_pages(ino, entry, &bytes);
        }
    }

    /// Hands the kernel the metadata of rule `rule` (inode `ino`) if the hints say Dune reads it
    /// next ([`Remote::take_near`](super::remote::Remote::take_near)): Dune then reads it with
    /// no request, on the path of every rule it restores, and the handing stands for its asking
    /// ([`Remote::handed`](super::remote::Remote::handed)). Only the value `ino` stands for is
    /// handed.
    fn hand_rule(self: &Arc<Self>, ino: u64, rule: &Entry) {
        let Some(remote) = &self.remote else {
            return;
        };
        // Most rules warming looks up are not near: asked first, before their value is read.
        if !self.reads.opens_alone() || !remote.is_near(rule) {
            return;
        }
        let Ok((value, _, bytes)) = held_meta(&self.landing, rule) else {
            return;
        };
        if !self.inodes.holds_value(ino, value)
            || !remote.take_near(rule)
            || !self.pages.due(ino, Instant::now())
        {
            return;
        }
        if self.store_pages(ino, rule, &bytes) {
            Stats::bump(&self.stats.rules_handed);
            remote.handed(rule);
        }
    }

    /// Fills inode `ino`'s page cache with `bytes`, all of `entry`: true unless that failed.
    /// (An inode the kernel forgot meanwhile is not a failure: fuser reports it as done.)
    fn store_pages(&self, ino: u64, entry: &Entry, bytes: &[u8]) -> bool {
        let Some(notifier) = self.pages.notifier.get() else {
            return false;
        };
        match notifier.store(INodeNo(ino), 0, bytes) {
            Ok(()) => {
                Stats::bump(&self.stats.pages_handed);
                true
            }
            Err(e) => {
                log::debug!("cannot hand the kernel the pages of {entry}: {e}");
                false
            }
        }
    }

    /// Answers a READ of inode `ino` opened by the kernel alone.
    pub(super) fn read_unopened(
        self: &Arc<Self>,
        ino: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let Some(node) = self.inodes.node(ino) else {
            return reply.error(Errno::ESTALE);
        };
        match changes::open(node, false) {
            Ok(Open::Entry(entry)) => self.read_unopened_entry(ino, entry, offset, size, reply),
            Ok(Open::Scratch(relative)) => {
                let read = File::open(self.scratch_path(&relative))
                    .and_then(|file| read_file_at(&file, offset, size));
                match read {
                    Ok(bytes) => reply.data(&bytes),
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    /// Answers a WRITE of inode `ino` opened by the kernel alone: only a scratch file takes it.
    pub(super) fn write_unopened(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let node = self.inodes.node(ino).ok_or(Errno::ESTALE)?;
        let Open::Scratch(relative) = changes::open(node, true)? else {
            return Err(Errno::EACCES);
        };
        let file = match self.created.get(ino) {
            Some(file) => file,
            None => {
                let write_only = rustix::fs::OFlags::WRONLY.bits() as i32;
                let opened = scratch::open(&self.scratch_path(&relative), write_only, None);
                Arc::new(opened.map_err(|e| answers::of_io(&e))?)
            }
        };
        let written = file.write_all_at(data, offset);
        match written {
            Ok(()) => Ok(data.len() as u32),
            Err(e) => Err(answers::of_io(&e)),
        }
    }

    fn read_unopened_entry(
        self: &Arc<Self>,
        ino: u64,
        entry: Entry,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        if offset == 0 && entry.kind == EntryKind::File {
            let ahead = self.through.read(ino, &entry);
            if !ahead.is_empty() {
                Stats::bump(&self.stats.read_through);
                self.warming.offer_pages(ahead);
            }
        }
        let shared = self.clone();
        // What opening it used to tell the fetching ahead is said at its first read. Without
        // boxes, an entry gone from the store since the kernel looked it up was trimmed: stale.
        let (asking, absent) = (offset == 0, Errno::ESTALE);
        if entry.kind == EntryKind::File {
            let get = move |landing: &Landing| landing.read_at(&entry, offset, size);
            return self.with_entry(entry, asking, absent, get, move |read| match read {
                Ok(bytes) => {
                    shared.count_daemon_read(bytes.len());
                    reply.data(&bytes)
                }
                Err(e) => reply.error(e),
            });
        }
        let get = move |landing: &Landing| held_meta(landing, &entry);
        self.with_entry(entry, asking, absent, get, move |held| match held {
            Ok(held) => shared.reply_meta_read(ino, &entry, held, offset, size, reply),
            Err(e) => reply.error(e),
        });
    }

    /// Reads a metadata entry `held` here for the kernel. The entry's number must still stand
    /// for the value held; if another value replaced it, the read fails with ESTALE, and the
    /// kernel is told to forget the name, so that the next open looks it up again.
    fn reply_meta_read(
        &self,
        ino: u64,
        entry: &Entry,
        (value, _, bytes): (Value, EntryStat, Vec<u8>),
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        if self.inodes.holds_value(ino, value) {
            self.count_daemon_read(bytes.len());
            reply.data(window(&bytes, offset, size))
        } else {
            reply.error(Errno::ESTALE);
            self.forget_name(entry);
        }
    }

    /// Tells the kernel to drop its name for `entry` (off the FUSE thread: the kernel takes the
    /// directory's lock to do it, which a request in flight in that directory may hold).
    fn forget_name(&self, entry: &Entry) {
        let node = Node::Entry(*entry);
        let parent = self.inodes.ino_of(&tree::parent(&node));
        let name = entry.key.to_string();
        let listings = self.listings.clone();
        std::thread::spawn(move || listings.forget_name(INodeNo(parent), name.as_ref()));
    }
}

/// Whether an entry of `kind` and `size` bytes has its pages handed to the kernel when it is
/// touched, in read mode `reads`: only artifacts (a metadata value is read by Dune without a
/// touch first), up to [`HANDED_AT_MOST`], and only when the kernel keeps pages of files it
/// opened alone.
fn hands_pages(reads: Reads, kind: EntryKind, size: u64) -> bool {
    reads.opens_alone() && kind == EntryKind::File && size <= HANDED_AT_MOST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_artifacts_up_to_the_bound_are_handed_and_only_when_the_kernel_opens_alone() {
        let meta = EntryKind::Meta(crate::dune::layout::MetaVersion::V5);
        for (reads, kind, size, handed) in [
            (Reads::Kept, EntryKind::File, 0, true),
            (Reads::Kept, EntryKind::File, HANDED_AT_MOST, true),
            (Reads::Kept, EntryKind::File, HANDED_AT_MOST + 1, false),
            (Reads::Kept, meta, 100, false),
            (Reads::Passthrough, EntryKind::File, 100, false),
            (Reads::Daemon, EntryKind::File, 100, false),
            // Artifacts shown as links are never handed (`Shared::hand_pages`); the others are.
            (Reads::Links, EntryKind::File, 100, true),
        ] {
            assert_eq!(
                hands_pages(reads, kind, size),
                handed,
                "{reads:?} {kind:?} {size}"
            );
        }
    }

    #[test]
    fn pages_are_handed_again_only_once_the_last_handing_is_stale() {
        let pages = Pages::default();
        let now = Instant::now();
        assert!(pages.due(1, now));
        assert!(!pages.due(1, now + HANDED_FRESH / 2), "handed lately");
        assert!(pages.due(2, now), "another inode");
        assert!(pages.due(1, now + HANDED_FRESH), "stale by now");
    }
}
