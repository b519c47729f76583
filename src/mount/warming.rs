//! Warming the kernel ahead of Dune: looking up, through the mount, the entries the boxes' hints
//! say Dune asks for next, and handing the kernel their pages, before Dune gets there.
//!
//! Why: a kernel that has not seen a name (a new machine, a new mount) asks the daemon for it,
//! a LOOKUP per entry and a READ per file at its first read, and every one is a round trip on
//! Dune's path: Dune restores rules one after another, and each waits for its answers. Fetching
//! ahead ([`remote`](super::remote)) already brings what the hints name into the store before
//! Dune asks; a warm kernel would also answer the lookups and reads alone. No FUSE notification
//! creates a name in the kernel (a name exists only once a process looked it up), so a thread of
//! the daemon looks the entries up itself: a `stat` of each path through the mount, answered by
//! the FUSE threads like any lookup. Once the kernel holds an artifact's inode, the daemon hands
//! it the artifact's bytes (the store notification, as at Dune 2.9's `setattr`: see
//! `unopened`), and Dune's copy finds kept pages.
//!
//! A rule's metadata is looked up, and its pages handed only if the rule is near Dune (the hint
//! of a rule Dune was seen to ask for names it: see `unopened`). Dune's READ of a rule's
//! metadata is the one sign the daemon gets that Dune has reached the rule, and fetching ahead
//! needs it (a rule Dune reached leaves the window, and the rules its hint names come next), as
//! does the order recorded for the hints this mount publishes. (Handing every rule's metadata
//! was tried: Dune then sent nothing for a warmed rule, the window filled with rules Dune never
//! seemed to reach, and fetching ahead stopped.) A rule near Dune is offered again as such
//! ([`Offer::Near`]), to be handed even if warmed already.
//!
//! `WARMERS` threads warm, sharing what they warmed lately: each waits for the round trip of
//! its lookup through the kernel and the FUSE threads, and one alone fell behind Dune once
//! Dune read most rules with no request at all (cold Dune 3.22 restores, 5 alternating rounds:
//! a median of 1.34 s with two, 1.48 s with one; Dune's own lookups 80 against 90-170).
//!
//! - Only what the store holds is looked up: a rule whose metadata is still on its way is
//!   offered again when its fetch ahead lands, an artifact likewise. The warming lookups never
//!   fetch, and the daemon tells them from Dune's by the thread that sent them: they do not count
//!   as Dune asking (the books of fetching ahead, the order recorded for hints).
//! - Bounded: a queue of [`QUEUED`] entries (past it offers are dropped: Dune is already past
//!   them) and a memory of `REMEMBERED` entries warmed, so that none is warmed twice within
//!   `HANDED_FRESH`. After that an entry is warmed again when offered: on a warm machine the
//!   kernel keeps the names but may have lost the pages (memory pressure, or a host reclaiming
//!   pages idle for a minute, as on the machine the benchmarks ran on), and Dune's READ of a
//!   rule's metadata, the sign it has reached it, then hands the next rules' artifacts again.
//! - The cost is the same lookups and copies Dune would have caused, moved off its path onto a
//!   thread of the daemon and the FUSE threads; a wrong hint costs a lookup and a copy.
//! - A plain `umount` fails with EBUSY while a warming lookup is in flight (the path walk holds
//!   the mount). The daemon's own unmount (at SIGTERM, SIGINT, SIGHUP) stops warming first;
//!   `--no-warming` turns it off for those who unmount by hand at the moment a build ends.
//!
//! - A warm machine whose host reclaimed the store's pages (the benchmarks' host pages out what
//!   was not used for a minute) has warming read every store file from the disk, one after
//!   another, and fall behind Dune. When the first entry of what is queued is not in the page
//!   cache, a thread takes the whole queue, asks the kernel to read all of its store files
//!   (`posix_fadvise`, the rules' metadata first, then their artifacts), and only then warms it
//!   in order: the disk works on them together. (With `echo 1 > drop_caches` before each build,
//!   a warm Dune 3.22 mount took 0.89-0.94 s against 1.03-1.16 s without it, and Dune's own
//!   cache in copy mode 1.10-1.22 s.)
//!
//! The same threads hand the kernel the pages of the artifacts a program reading a listed shard
//! through will read next ([`through`](super::through)): those need no lookup, the listing gave
//! the kernel their names.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::shared::Shared;
use super::stats::Stats;
use super::unopened::HANDED_FRESH;
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;
use crate::sync::lock;

/// Threads warming (see the module's docs).
const WARMERS: usize = 2;

/// Entries waiting to be warmed, at most.
pub const QUEUED: usize = 512;

/// Offers taken at once beside the first, their store files read ahead together.
const BATCH: usize = 32;

/// How long the store files are read ahead once the store's pages were found gone.
const READING_AHEAD_FOR: Duration = Duration::from_secs(5);

/// Entries remembered as warmed lately; past it the memory starts again (an entry warmed twice
/// costs a lookup the kernel answers alone and one copy).
const REMEMBERED: usize = 65_536;

/// What warming is offered.
pub enum Offer {
    /// An entry the hints say Dune asks for soon: looked up once held, with the artifacts a
    /// rule names, and an artifact's pages handed.
    Hinted(Entry),
    /// A rule near Dune (the hint of a rule Dune asked for names it): as [`Offer::Hinted`], and
    /// looked up even if warmed lately, so that its metadata is handed too.
    Near(Entry),
    /// Artifacts the kernel has the names of (inode number, entry), whose pages to hand: a
    /// program reads their shard through.
    Pages(Vec<(u64, Entry)>),
    /// Artifacts the store has just named (`--reads links`): those the kernel holds as files
    /// are dropped from it and looked up again, so that it holds their links before Dune's
    /// next build walks through them (see `links`).
    Relink(Vec<Entry>),
}

/// The warming threads, as the rest of the mount sees it.
#[derive(Default)]
pub(super) struct Warming {
    /// Where the mount offers it pages to hand (unset with `--no-warming`).
    offers: OnceLock<Sender<Offer>>,
    /// The threads' ids, as the kernel names the sender of a request (0 until each runs).
    threads: [AtomicU32; WARMERS],
    stopped: AtomicBool,
    /// Held (shared) while a warming lookup is in flight through the mount.
    walking: RwLock<()>,
    /// What the threads warmed lately.
    remembered: Mutex<Remembered>,
}

impl Warming {
    /// Whether a request sent by process (thread) `pid` is a warming thread's.
    pub(super) fn sent_by_warming(&self, pid: u32) -> bool {
        pid != 0
            && self
                .threads
                .iter()
                .any(|t| t.load(Ordering::Relaxed) == pid)
    }

    /// Offers the pages of `artifacts` to hand (dropped if the queue is full: the reader is
    /// past them by then).
    pub(super) fn offer_pages(&self, artifacts: Vec<(u64, Entry)>) {
        if let Some(offers) = self.offers.get() {
            let _ = offers.try_send(Offer::Pages(artifacts));
        }
    }

    /// Offers artifacts the store has just named, to turn into links (dropped if the queue is
    /// full: the kernel then meets each link at its next lookup of the name, on Dune's path).
    pub(super) fn offer_relink(&self, artifacts: Vec<Entry>) {
        if let Some(offers) = self.offers.get() {
            let _ = offers.try_send(Offer::Relink(artifacts));
        }
    }

    /// Stops warming and waits for a lookup in flight: after it, nothing of the daemon holds
    /// the mount busy.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        drop(self.walking.write().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A queue of entries to warm: what [`remote`](super::remote) offers and `start`'s threads
/// take.
pub fn queue() -> (Sender<Offer>, Receiver<Offer>) {
    crossbeam_channel::bounded(QUEUED)
}

/// Starts the threads that warm what is offered to `offers` (and so `taken` from it), through
/// the mount at `mountpoint`, until the mount ends.
pub(super) fn start(
    shared: &Arc<Shared>,
    mountpoint: PathBuf,
    offers: Sender<Offer>,
    taken: Receiver<Offer>,
) {
    let _ = shared.warming.offers.set(offers);
    for i in 0..WARMERS {
        let weak = Arc::downgrade(shared);
        let (mountpoint, taken) = (mountpoint.clone(), taken.clone());
        let started = std::thread::Builder::new()
            .name(format!("warming-{i}"))
            .spawn(move || warm(&weak, i, &mountpoint, &taken));
        if let Err(e) = started {
            log::warn!("not warming the kernel ahead of Dune: {e}");
        }
    }
}

fn warm(shared: &Weak<Shared>, i: usize, mountpoint: &std::path::Path, offers: &Receiver<Offer>) {
    let Some(first) = shared.upgrade() else {
        return;
    };
    let thread = rustix::thread::gettid().as_raw_nonzero().get();
    first.warming.threads[i].store(thread as u32, Ordering::Relaxed);
    drop(first);
    let mut reading_ahead = ReadingAhead::default();
    for first in offers {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // What else is queued is taken too. If the store's pages are gone (the first entry's
        // are not in the page cache: the host reclaimed them, as the benchmarks' did after a
        // minute of disuse), the store files of all of it are read ahead at once, each rule's
        // metadata then its artifacts, before the first is warmed: the disk works on all of
        // them together, not on one file after another for this thread. Once found gone, the
        // pages are taken to be gone for [`READING_AHEAD_FOR`] (what was read ahead is in the
        // page cache, so a probe of the next batch would say otherwise).
        let batch = std::iter::once(first).chain(offers.try_iter().take(BATCH));
        let batch: Vec<Offer> = batch.collect();
        let landing = &shared.landing;
        let probed = match batch.first() {
            Some(Offer::Hinted(entry) | Offer::Near(entry)) => Some(entry),
            Some(Offer::Pages(artifacts)) => artifacts.first().map(|(_, entry)| entry),
            Some(Offer::Relink(_)) | None => None,
        };
        let gone = || probed.is_some_and(|entry| landing.on_disk_only(entry));
        let read_ahead = reading_ahead.now(Instant::now(), gone);
        let will_need = |entry: &Entry| {
            if read_ahead {
                landing.will_need(entry)
            }
        };
        for offer in &batch {
            if let Offer::Hinted(entry) | Offer::Near(entry) = offer {
                will_need(entry);
            }
        }
        let held = |entry: &Entry| landing.stat(entry).is_ok();
        let named = |rule: &Entry| artifacts_named(&shared, rule);
        let mut remembered = lock(&shared.warming.remembered);
        let steps = steps(batch, held, named, &mut remembered, Instant::now());
        drop(remembered);
        for step in &steps {
            match step {
                Step::LookUp(entry) | Step::Hand(_, entry) if entry.kind == EntryKind::File => {
                    will_need(entry)
                }
                _ => {}
            }
        }
        let warming = &shared.warming;
        for step in steps {
            let walking = warming.walking.read().unwrap_or_else(|e| e.into_inner());
            if warming.stopped.load(Ordering::SeqCst) {
                return;
            }
            match step {
                Step::LookUp(entry) => {
                    let looked_up = look_up(&mountpoint.join(entry.relative_path()));
                    drop(walking);
                    if let Ok(meta) = looked_up {
                        Stats::bump(&shared.stats.warmed);
                        shared.hand_pages(meta.ino(), &entry);
                    }
                }
                Step::Hand(ino, entry) => {
                    drop(walking);
                    shared.hand_pages(ino, &entry);
                }
                Step::Relink(entry) => {
                    if shared.drop_file_name(&entry) {
                        let looked_up = look_up(&mountpoint.join(entry.relative_path()));
                        if looked_up.is_ok_and(|m| m.file_type().is_symlink()) {
                            Stats::bump(&shared.stats.relinked);
                        }
                    } else if shared.kept_as_link(&entry) {
                        // Its kept target was taken back (it named the temp file): read anew.
                        let _ = look_up(&mountpoint.join(entry.relative_path()));
                    }
                    drop(walking);
                }
            }
        }
    }
}

/// Looks `path` up through the mount. An artifact shown as a link (`links`) is read too, which
/// makes the kernel keep its target, so that Dune's path through it asks nothing.
fn look_up(path: &std::path::Path) -> std::io::Result<std::fs::Metadata> {
    let looked_up = std::fs::symlink_metadata(path)?;
    if looked_up.file_type().is_symlink() {
        let _ = std::fs::read_link(path);
    }
    Ok(looked_up)
}

/// Whether the store files are read ahead before they are warmed: for [`READING_AHEAD_FOR`]
/// once the store's pages were found gone.
#[derive(Default)]
struct ReadingAhead {
    until: Option<Instant>,
}

impl ReadingAhead {
    /// Whether to read ahead `now`; `gone` probes the store's pages (an entry about to be
    /// warmed is not in the page cache), and is asked only once the last finding is stale.
    fn now(&mut self, now: Instant, gone: impl FnOnce() -> bool) -> bool {
        if self.until.is_none_or(|until| now >= until) {
            self.until = gone().then_some(now + READING_AHEAD_FOR);
        }
        self.until.is_some()
    }
}

/// The steps warming `batch` takes, in order: each hinted entry's [`plan`], each artifact
/// whose pages are offered.
fn steps(
    batch: Vec<Offer>,
    held: impl Fn(&Entry) -> bool,
    named: impl Fn(&Entry) -> Vec<Entry>,
    remembered: &mut Remembered,
    now: Instant,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for offer in batch {
        match offer {
            Offer::Hinted(entry) => {
                let plan = plan(entry, &held, &named, remembered, now);
                steps.extend(plan.into_iter().map(Step::LookUp));
            }
            Offer::Near(rule) => {
                let plan = plan(rule, &held, &named, remembered, now);
                if plan.first() != Some(&rule) && held(&rule) {
                    steps.push(Step::LookUp(rule));
                }
                steps.extend(plan.into_iter().map(Step::LookUp));
            }
            Offer::Pages(artifacts) => steps.extend(
                artifacts
                    .into_iter()
                    .map(|(ino, entry)| Step::Hand(ino, entry)),
            ),
            Offer::Relink(artifacts) => steps.extend(artifacts.into_iter().map(Step::Relink)),
        }
    }
    steps
}

/// One thing a warming thread does.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Looks an entry up through the mount, then hands an artifact's pages.
    LookUp(Entry),
    /// Hands the pages of an artifact the kernel has the name of (its inode number).
    Hand(u64, Entry),
    /// Turns an artifact the kernel holds as a file into its link ([`Offer::Relink`]).
    Relink(Entry),
}

/// The artifacts rule `rule`'s metadata in the store names (none if it does not parse).
fn artifacts_named(shared: &Shared, rule: &Entry) -> Vec<Entry> {
    super::shared::held_meta(&shared.landing, rule)
        .ok()
        .and_then(|(_, _, bytes)| Metadata::parse(&bytes).ok())
        .map(|metadata| {
            metadata
                .artifact_keys()
                .map(|key| Entry {
                    kind: EntryKind::File,
                    key,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What warming `offered` looks up now, in order: nothing if the store does not hold it yet (it
/// is offered again when it lands, so it is not remembered) or it was warmed lately (a rule is
/// offered once by each hint that names it: its metadata is read only the first time); else it,
/// and for a rule the artifacts it names that are held and not warmed lately. What it returns
/// counts as warmed now.
fn plan(
    offered: Entry,
    held: impl Fn(&Entry) -> bool,
    named: impl Fn(&Entry) -> Vec<Entry>,
    remembered: &mut Remembered,
    now: Instant,
) -> Vec<Entry> {
    if !remembered.due(offered, now, &held) {
        return Vec::new();
    }
    let mut plan = vec![offered];
    if offered.kind != EntryKind::File {
        plan.extend(
            named(&offered)
                .into_iter()
                .filter(|e| remembered.due(*e, now, &held)),
        );
    }
    plan
}

/// When each entry was warmed lately, a bounded number.
#[derive(Default)]
struct Remembered(HashMap<Entry, Instant>);

impl Remembered {
    /// Whether `entry` is due to be warmed `now`: not warmed within [`HANDED_FRESH`], and
    /// `held`. If so it counts as warmed now. What was warmed lately is skipped before `held`
    /// looks in the store: a rule is offered by every hint that names it, about as many times
    /// as a hint names rules.
    fn due(&mut self, entry: Entry, now: Instant, held: impl Fn(&Entry) -> bool) -> bool {
        if let Some(at) = self.0.get(&entry) {
            if now.saturating_duration_since(*at) < HANDED_FRESH {
                return false;
            }
        }
        if !held(&entry) {
            return false;
        }
        if self.0.len() >= REMEMBERED {
            self.0.clear();
        }
        self.0.insert(entry, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    fn entry(kind: EntryKind, n: u8) -> Entry {
        Entry {
            kind,
            key: format!("{n:02x}{}", "3".repeat(30)).parse().unwrap(),
        }
    }

    fn rule(n: u8) -> Entry {
        entry(EntryKind::Meta(MetaVersion::V5), n)
    }

    fn artifact(n: u8) -> Entry {
        entry(EntryKind::File, n)
    }

    #[test]
    fn a_held_rule_is_warmed_with_the_artifacts_it_names_that_are_held() {
        let held = |e: &Entry| *e != artifact(2) && *e != rule(9);
        let named = |r: &Entry| match *r == rule(1) {
            true => vec![artifact(1), artifact(2), artifact(3)],
            false => panic!("asked what {r} names"),
        };
        let now = Instant::now();
        let plan_of = |offered| plan(offered, held, named, &mut Remembered::default(), now);
        assert_eq!(plan_of(rule(1)), vec![rule(1), artifact(1), artifact(3)]);
        assert_eq!(plan_of(rule(9)), vec![], "not held yet");
        assert_eq!(plan_of(artifact(3)), vec![artifact(3)]);
        assert_eq!(plan_of(artifact(2)), vec![]);
    }

    #[test]
    fn a_rule_warmed_lately_is_not_read_again_and_one_not_held_is_not_remembered() {
        let mut held_now = false;
        let named = |_: &Entry| vec![artifact(1)];
        let mut remembered = Remembered::default();
        let now = Instant::now();
        let held = |_: &Entry| held_now;
        assert_eq!(plan(rule(1), held, named, &mut remembered, now), vec![]);
        held_now = true;
        let held = |_: &Entry| held_now;
        assert_eq!(
            plan(rule(1), held, named, &mut remembered, now),
            vec![rule(1), artifact(1)],
            "warmed once it lands"
        );
        let unread = |r: &Entry| panic!("read what {r} names again");
        assert_eq!(plan(rule(1), held, unread, &mut remembered, now), vec![]);
        assert_eq!(plan(artifact(1), held, named, &mut remembered, now), vec![]);
    }

    #[test]
    fn an_entry_is_warmed_again_only_once_its_last_warming_is_stale() {
        let mut remembered = Remembered::default();
        let now = Instant::now();
        let held = |_: &Entry| true;
        let not_asked = |e: &Entry| panic!("asked the store for {e}, warmed lately");
        assert!(!remembered.due(rule(1), now, |_| false), "not held");
        assert!(remembered.due(rule(1), now, held), "not remembered unheld");
        assert!(!remembered.due(rule(1), now + HANDED_FRESH / 2, not_asked));
        assert!(remembered.due(artifact(1), now, held));
        assert!(
            remembered.due(rule(1), now + HANDED_FRESH, held),
            "warmed again later"
        );
        for n in 0..REMEMBERED {
            let key = format!("{n:032x}").parse().unwrap();
            let entry = Entry {
                kind: EntryKind::File,
                key,
            };
            remembered.due(entry, now, held);
        }
        assert!(remembered.0.len() <= REMEMBERED, "bounded");
    }

    #[test]
    fn a_batch_is_warmed_in_the_order_offered() {
        let named = |r: &Entry| match *r == rule(1) {
            true => vec![artifact(1)],
            false => vec![],
        };
        let batch = vec![
            Offer::Hinted(rule(1)),
            Offer::Pages(vec![(7, artifact(5)), (8, artifact(6))]),
            Offer::Hinted(artifact(1)),
            Offer::Relink(vec![artifact(3), artifact(1)]),
            Offer::Hinted(rule(2)),
        ];
        let now = Instant::now();
        let steps = steps(batch, |_| true, named, &mut Remembered::default(), now);
        assert_eq!(
            steps,
            vec![
                Step::LookUp(rule(1)),
                Step::LookUp(artifact(1)),
                Step::Hand(7, artifact(5)),
                Step::Hand(8, artifact(6)),
                Step::Relink(artifact(3)),
                // Turned into a link even if warmed lately (then it was a file).
                Step::Relink(artifact(1)),
                Step::LookUp(rule(2)),
            ],
            "an artifact warmed with its rule is not looked up again"
        );
    }

    #[test]
    fn the_store_is_read_ahead_for_a_while_once_its_pages_were_found_gone() {
        let mut reading_ahead = ReadingAhead::default();
        let now = Instant::now();
        assert!(!reading_ahead.now(now, || false), "pages there");
        assert!(
            !reading_ahead.now(now, || false),
            "asked again: still there"
        );
        assert!(reading_ahead.now(now, || true), "gone");
        let unasked = || panic!("probed again while the finding is fresh");
        assert!(reading_ahead.now(now + READING_AHEAD_FOR / 2, unasked));
        assert!(
            !reading_ahead.now(now + READING_AHEAD_FOR, || false),
            "stale: probed"
        );
    }

    #[test]
    fn only_the_warming_thread_is_known_as_warming() {
        let warming = Warming::default();
        assert!(!warming.sent_by_warming(0), "before it runs");
        warming.threads[1].store(42, Ordering::Relaxed);
        assert!(warming.sent_by_warming(42));
        assert!(!warming.sent_by_warming(41));
    }
}
