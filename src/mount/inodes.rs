//! The inode table: one number per path while the kernel holds it.
//!
//! Keyed by [`Node`] (and so by path), never by content: two names are never the same inode, which
//! is what macOS needs (see [`policy`](super::policy)) and harmless on Linux.
//!
//! The table follows the kernel's own references, so a mount that runs for weeks over millions
//! of entries holds only what the kernel holds. Each number handed to the kernel in an entry
//! reply (lookup, create, mkdir, symlink, link, each readdirplus item) is counted
//! ([`Inodes::handed_out`]); the kernel's `forget` takes the count back ([`Inodes::forget`]), and a
//! number whose count reaches zero leaves the table. A number assigned but never handed out (a
//! plain readdir item, a directory whose listing changed) leaves it after [`UNHANDED_GRACE`].
//! A number never comes to mean another path: a path of the layout (an entry, a shard, a kind)
//! gets its *natural* number, derived from the path itself ([`natural_number`]), so it keeps its
//! number when the kernel forgets and looks it up again, and across remounts (`tar`, `rsync -H`
//! and `find` see stable inode numbers); Dune's scratch paths, and the rare path whose natural
//! number another path already has, get the next of a counter that never goes back.
//!
//! The kernel is held to a bound ([`Inodes::bound`]): past it, the [`evict`](super::evict)
//! thread asks the kernel to drop the names of entries that no request used since its sweep
//! last went by ([`pass`], [`Inodes::victims`]); each request's use is one flag on the number.
//! The numbers live in a map of 64 parts (`parted.rs`), so the table near its
//! bound neither doubles in one step nor grows from the churn of lookups and forgets.
//!
//! Costs: every operation is O(1) (hash maps, amortized over a part's growth), but a rename of a
//! scratch directory, which is O(log n + k) for the k numbers under it (an ordered index of
//! scratch paths), the sweep of unhanded numbers, a bounded few per assignment, and the choice
//! of names to drop, on the evicting thread: at most two laps of the bounded table.
//!
//! A rule's metadata can change under its name (another value stored first elsewhere, a value
//! trimmed here and fetched again as another), so a metadata inode stands for one *value*: when
//! the value under a name changes, the name gets a new number, and the old number goes on
//! standing for the old value (for the kernel's caches and the files it holds open). The kernel
//! may then keep what it learns of either number as long as of an artifact's.
//!
//! What the boxes said about an entry (size, executable bit) is kept beside its number, so a
//! listing answers the lookups that follow it without another request; so are an installed
//! artifact's attributes once read, so listing a shard again costs no `stat` per artifact.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::parted::Parted;
use super::tree::{self, Node};
use crate::dune::layout::{Entry, EntryKind};
use crate::store::EntryStat;

/// The root's inode number (FUSE's fixed value).
pub const ROOT: u64 = 1;

/// How long a number assigned but never handed to the kernel is kept.
pub const UNHANDED_GRACE: Duration = Duration::from_secs(30);

/// How many unhanded numbers each assignment looks at, at most, to drop the expired ones.
const SWEEP_STEP: usize = 4;

/// The table's capacity below which it is never shrunk (shrinking costs a pass over what is
/// left: past this size it is done only when an eighth or less is left, so its cost is spread
/// over the removals that made room).
const SHRINK_FROM: usize = 4096;

/// The most names chosen at once to drop: the sweep holds the table's read lock (lookups of
/// new names wait for it), so it stops once it has found this many.
const EVICT_BATCH: usize = 4096;

/// What a box reported about an entry it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAttr {
    /// Size in bytes.
    pub size: u64,
    /// Whether it is executable (artifacts only).
    pub executable: bool,
}

/// One metadata value: the BLAKE3 digest of its bytes, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// The digest of the bytes.
    pub digest: [u8; 32],
    /// Their number.
    pub size: u64,
}

/// One number's record: kept small (about 100 bytes with its key), since a `find` over a large
/// cache makes the kernel hold a number for every entry.
struct Slot {
    node: Node,
    remote: Option<RemoteAttr>,
    /// An installed artifact's size, mode and link count, once read.
    installed: Option<EntryStat>,
    /// For a metadata entry: the value this number stands for, once one was seen (boxed: most
    /// numbers are artifacts', which have none).
    value: Option<Box<Value>>,
    /// How many times the kernel was handed this number and has not forgotten it.
    handed: u32,
    /// Whether a request used it since the eviction sweep last passed it (atomic: set under
    /// the table's read lock).
    used: AtomicBool,
    /// Whether the kernel was asked to drop it and has not forgotten it yet.
    asked: AtomicBool,
}

impl Slot {
    fn new(node: Node) -> Slot {
        Slot {
            node,
            remote: None,
            installed: None,
            value: None,
            handed: 0,
            used: AtomicBool::new(false),
            asked: AtomicBool::new(false),
        }
    }

    /// Marks it used by a request (a load first: most are marked already, and a store would
    /// take the cache line from the other threads).
    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

/// What the eviction sweep does with one number as it passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Not the sweep's to drop: a directory, a scratch path, the status file, a number the
    /// kernel does not hold, one open, or one the kernel was already asked to drop.
    Keep,
    /// Used since the sweep last passed it: kept, and unmarked.
    SecondChance,
    /// Unused since the sweep last passed it: the kernel is asked to drop its name.
    Evict,
}

/// The eviction sweep's choice for a number standing for `node`, which the kernel holds
/// `handed` times, with the number's marks. Only an entry (a file of the layout) is ever
/// dropped: a directory's name pins all the names under it, and a scratch path is Dune's work
/// in progress. An open entry is kept: dropping its name frees nothing until it is closed.
pub fn pass(node: &Node, handed: u32, open: bool, asked: bool, used: bool) -> Pass {
    match node {
        Node::Entry(_) | Node::Link(_) if handed > 0 && !open && !asked => {
            if used {
                Pass::SecondChance
            } else {
                Pass::Evict
            }
        }
        _ => Pass::Keep,
    }
}

/// A name the kernel is asked to drop: its directory's number, and the entry.
pub type Victim = (u64, Entry);

/// The bound on the numbers the kernel holds, and how the evicting thread is woken.
struct Limit {
    /// Past this many numbers (not counting those the kernel was asked to drop), the evicting
    /// thread is woken.
    most: usize,
    wake: Sender<()>,
}

impl Limit {
    /// The table's size the evicting thread brings it back to: an eighth below the bound, so
    /// it works in batches rather than one name per lookup.
    fn low(&self) -> usize {
        self.most - self.most / 8
    }
}

struct Table {
    slots: Parted<Slot>,
    /// The paths whose number is not their natural one (scratch paths, a changed metadata
    /// value's name, the rare path whose natural number another has): a path of the layout is
    /// found at its natural number, so a million looked-up entries need no entry here.
    by_node: HashMap<Node, u64>,
    /// The scratch paths' numbers, ordered: what a directory rename moves is one range.
    scratch: BTreeMap<PathBuf, u64>,
    /// The last number assigned.
    last: u64,
    /// Numbers assigned, oldest first, to drop if never handed out.
    unhanded: VecDeque<(u64, Instant)>,
    /// How many times each open entry's number is open (only those open).
    open: HashMap<u64, u32>,
    /// How many numbers in the table the kernel was asked to drop (their slots' `asked`).
    asked: AtomicUsize,
}

/// The number derived from a path of the layout (and, for a metadata value after the first one
/// seen under its name, from that value), with the top bit set, so it never meets the counter's
/// small numbers. `None` for scratch paths, which change all the time.
///
/// An entry's key is a digest already, its bits spread evenly: its number is its key's two
/// halves mixed with its kind, no hash needed (a shard's listing numbers hundreds of entries,
/// each looked for up to four times; hashing was a tenth of a first `find`'s listing). Keys made
/// to meet (a box that lies) only cost those entries the counter's numbers. Everything else is 64
/// bits of a BLAKE3 hash of its path.
pub fn natural_number(node: &Node, value: Option<&Value>) -> Option<u64> {
    if let (Node::Entry(entry) | Node::Link(entry), None) = (node, value) {
        let key = entry.key.as_bytes();
        let half = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().unwrap());
        let kind = EntryKind::ALL
            .iter()
            .position(|kind| *kind == entry.kind)
            .unwrap_or(0) as u64;
        // A link's number is apart from its artifact's.
        let shown = match node {
            Node::Link(_) => EntryKind::ALL.len() as u64,
            _ => 0,
        };
        let salt = (kind + shown + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        return Some((half(0) ^ half(8).rotate_left(32) ^ salt) | 1 << 63);
    }
    let mut hasher = blake3::Hasher::new();
    match node {
        Node::Root | Node::Status(_) | Node::Scratch(_) => return None,
        Node::Top(top) => hasher.update(top.name().as_bytes()),
        Node::Kind(kind) => hasher.update(kind.dir().as_bytes()),
        Node::Shard(kind, shard) => hasher
            .update(kind.dir().as_bytes())
            .update(&[b'/', shard.0]),
        Node::Entry(entry) | Node::Link(entry) => hasher
            .update(entry.kind.dir().as_bytes())
            .update(&entry.key.to_hex()),
    };
    if let Some(value) = value {
        hasher.update(&value.digest);
    }
    let mut bytes = [0u8; 8];
    hasher.finalize_xof().fill(&mut bytes);
    Some(u64::from_le_bytes(bytes) | 1 << 63)
}

impl Table {
    /// Gives `node` a number, which its path now resolves to: its natural number (for the value
    /// `value`, if given) unless another path has it, else the counter's next.
    fn assign(&mut self, node: &Node, value: Option<&Value>) -> u64 {
        let now = Instant::now();
        self.sweep(now);
        let ino = match natural_number(node, value) {
            Some(ino) if !self.slots.contains_key(&ino) => ino,
            _ => {
                self.last += 1;
                self.last
            }
        };
        self.slots.insert(ino, Slot::new(node.clone()));
        self.index(node, ino);
        self.unhanded.push_back((ino, now));
        ino
    }

    /// Makes `node`'s path resolve to `ino`.
    fn index(&mut self, node: &Node, ino: u64) {
        if natural_number(node, None) == Some(ino) {
            // Found at its natural number; an override left from another number goes.
            self.by_node.remove(node);
        } else {
            self.by_node.insert(node.clone(), ino);
        }
        if let Node::Scratch(path) = node {
            self.scratch.insert(path.clone(), ino);
        }
    }

    /// The number `node`'s path resolves to, if any.
    fn find(&self, node: &Node) -> Option<u64> {
        if let Some(ino) = self.by_node.get(node) {
            return Some(*ino);
        }
        let natural = natural_number(node, None)?;
        (self.slots.get(&natural)?.node == *node).then_some(natural)
    }

    /// `ino` no longer is what `node`'s path resolves to (its slot is going, or moving).
    fn unindex(&mut self, node: &Node, ino: u64) {
        if self.by_node.get(node) == Some(&ino) {
            self.by_node.remove(node);
        }
        if let Node::Scratch(path) = node {
            if self.scratch.get(path) == Some(&ino) {
                self.scratch.remove(path);
            }
        }
    }

    /// Takes `ino` out of the table, and gives memory back once the table is far below the
    /// size it reached (the kernel forgot most of what a `find` made it hold).
    fn remove(&mut self, ino: u64) {
        let Some(slot) = self.slots.remove(&ino) else {
            return;
        };
        if slot.asked.load(Ordering::Relaxed) {
            self.asked.fetch_sub(1, Ordering::Relaxed);
        }
        if self.by_node.capacity() > SHRINK_FROM && self.by_node.len() < self.by_node.capacity() / 8
        {
            self.by_node.shrink_to(self.by_node.len() * 2);
        }
        if self.unhanded.capacity() > SHRINK_FROM
            && self.unhanded.len() < self.unhanded.capacity() / 8
        {
            self.unhanded.shrink_to(self.unhanded.len() * 2);
        }
        self.unindex(&slot.node, ino);
    }

    /// Drops a few numbers that were never handed out within the grace period, and forgets
    /// about those handed out or gone meanwhile (most of them: a listing hands out what it
    /// assigns at once), so the queue holds no more than what is waiting.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_STEP {
            let Some(&(ino, since)) = self.unhanded.front() else {
                return;
            };
            let waiting = self.slots.get(&ino).is_some_and(|s| s.handed == 0) && ino != ROOT;
            if waiting && now.duration_since(since) < UNHANDED_GRACE {
                return;
            }
            self.unhanded.pop_front();
            if waiting {
                self.remove(ino);
            }
        }
    }

    fn slot(&self, ino: u64) -> Option<&Slot> {
        self.slots.get(&ino)
    }

    /// How many numbers the kernel holds, not counting those it was asked to drop.
    fn held(&self) -> usize {
        self.slots
            .len()
            .saturating_sub(self.asked.load(Ordering::Relaxed))
    }

    /// How many numbers the kernel holds beyond `limit`'s low mark (0 while within the bound),
    /// not counting those it was asked to drop.
    fn excess(&self, limit: &Limit) -> usize {
        let held = self.held();
        if held > limit.most {
            held - limit.low()
        } else {
            0
        }
    }

    /// Up to `want` names to ask the kernel to drop, chosen by a second-chance sweep ([`pass`])
    /// from position `hand` of the table (moved on past what was looked at), at most two laps:
    /// one to unmark what was used, one to find it unused. Each is marked as asked.
    fn victims(&self, want: usize, hand: &mut usize) -> Vec<Victim> {
        let len = self.slots.len();
        if len == 0 {
            return Vec::new();
        }
        let start = *hand % len;
        let two_laps = self
            .slots
            .iter()
            .skip(start)
            .chain(self.slots.iter())
            .chain(self.slots.iter().take(start));
        let mut victims = Vec::new();
        let mut looked = 0;
        for (ino, slot) in two_laps {
            if victims.len() == want {
                break;
            }
            looked += 1;
            let open = self.open.contains_key(ino);
            let asked = slot.asked.load(Ordering::Relaxed);
            match pass(
                &slot.node,
                slot.handed,
                open,
                asked,
                slot.used.load(Ordering::Relaxed),
            ) {
                Pass::Keep => {}
                Pass::SecondChance => slot.used.store(false, Ordering::Relaxed),
                Pass::Evict => {
                    let (Node::Entry(entry) | Node::Link(entry), Some(parent)) =
                        (&slot.node, self.find(&tree::parent(&slot.node)))
                    else {
                        continue;
                    };
                    slot.asked.store(true, Ordering::Relaxed);
                    self.asked.fetch_add(1, Ordering::Relaxed);
                    victims.push((parent, *entry));
                }
            }
        }
        *hand = (start + looked) % len;
        victims
    }
}

/// The table, shared by all FUSE threads and workers.
pub struct Inodes {
    table: RwLock<Table>,
    /// The bound, once an evicting thread keeps it ([`Inodes::bound`]).
    limit: OnceLock<Limit>,
    /// Names the kernel was asked to drop, over the mount's life.
    evictions: AtomicU64,
}

impl Default for Inodes {
    fn default() -> Inodes {
        let mut root = Slot::new(Node::Root);
        // The kernel holds the root for the mount's life, and never forgets it.
        root.handed = 1;
        let mut slots = Parted::default();
        slots.insert(ROOT, root);
        Inodes {
            table: RwLock::new(Table {
                slots,
                by_node: HashMap::from([(Node::Root, ROOT)]),
                scratch: BTreeMap::new(),
                last: ROOT,
                unhanded: VecDeque::new(),
                open: HashMap::new(),
                asked: AtomicUsize::new(0),
            }),
            limit: OnceLock::new(),
            evictions: AtomicU64::new(0),
        }
    }
}

impl Inodes {
    /// The number of `node`, assigning the next one on first sight (not yet handed out).
    pub fn ino_of(&self, node: &Node) -> u64 {
        if let Some(ino) = self.read().find(node) {
            return ino;
        }
        let mut table = self.write();
        if let Some(ino) = table.find(node) {
            return ino;
        }
        table.assign(node, None)
    }

    /// The number of `node` if it has one; assigns nothing.
    pub fn known(&self, node: &Node) -> Option<u64> {
        self.read().find(node)
    }

    /// Counts `ino`, the number of `node`, as handed to the kernel in an entry reply: it stays
    /// until the kernel forgets it as often. (One forgotten meanwhile is put back.)
    pub fn handed_out(&self, ino: u64, node: &Node) {
        let mut table = self.write();
        match table.slots.get_mut(&ino) {
            Some(slot) => {
                slot.handed = slot.handed.saturating_add(1);
                slot.mark_used();
                // Looked up again: the kernel holds a name for it anew.
                if slot.asked.swap(false, Ordering::Relaxed) {
                    table.asked.fetch_sub(1, Ordering::Relaxed);
                }
            }
            None => {
                let mut slot = Slot::new(node.clone());
                slot.handed = 1;
                slot.mark_used();
                table.slots.insert(ino, slot);
                if table.find(node).is_none() {
                    table.index(node, ino);
                }
            }
        }
        if let Some(limit) = self.limit.get() {
            if table.excess(limit) > 0 {
                // Full: the thread is awake already.
                let _ = limit.wake.try_send(());
            }
        }
    }

    /// The kernel forgot `ino` `times` times (FUSE `forget`): at zero it leaves the table.
    pub fn forget(&self, ino: u64, times: u64) {
        if ino == ROOT {
            return;
        }
        let mut table = self.write();
        let Some(slot) = table.slots.get_mut(&ino) else {
            return;
        };
        let times = u32::try_from(times).unwrap_or(u32::MAX);
        slot.handed = slot.handed.saturating_sub(times);
        if slot.handed == 0 {
            table.remove(ino);
        }
    }

    /// Keeps the numbers the kernel holds near `most`: past it, `wake` is sent to, and the
    /// thread it wakes asks the kernel to drop [`Inodes::victims`]. Set once.
    pub fn bound(&self, most: usize, wake: Sender<()>) {
        let _ = self.limit.set(Limit {
            most: most.max(1),
            wake,
        });
    }

    /// Names the kernel should drop now to bring the table back within its bound (none while
    /// within it; at most `EVICT_BATCH`), chosen from position `hand` of the table on (see
    /// [`pass`]).
    pub fn victims(&self, hand: &mut usize) -> Vec<Victim> {
        let Some(limit) = self.limit.get() else {
            return Vec::new();
        };
        let table = self.read();
        let want = table.excess(limit).min(EVICT_BATCH);
        if want == 0 {
            return Vec::new();
        }
        let victims = table.victims(want, hand);
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        victims
    }

    /// Whether the kernel holds a quarter more numbers than the bound (not counting those it was
    /// asked to drop): the evicting thread is behind, and listings should wait for it.
    pub fn crowded(&self) -> bool {
        let Some(limit) = self.limit.get() else {
            return false;
        };
        self.read().held() > limit.most + limit.most / 4
    }

    /// An entry's number `ino` was opened: it is not evicted until closed.
    pub fn opened(&self, ino: u64) {
        *self.write().open.entry(ino).or_default() += 1;
    }

    /// A file of number `ino` was closed (any file: one not counted as open is ignored, under
    /// the read lock only).
    pub fn closed(&self, ino: u64) {
        if !self.read().open.contains_key(&ino) {
            return;
        }
        let mut table = self.write();
        if let Some(count) = table.open.get_mut(&ino) {
            *count -= 1;
            if *count == 0 {
                table.open.remove(&ino);
            }
        }
    }

    /// How many names the kernel was asked to drop over the mount's life (for the status file).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The number standing for `node`, a metadata entry, holding `value` now: its number if that
    /// stands for this value (or for none yet, which it then does); else a new number, the old
    /// one keeping its old value.
    pub fn ino_for_value(&self, node: &Node, value: Value) -> u64 {
        let mut table = self.write();
        let ino = match table.find(node) {
            Some(ino) => ino,
            None => table.assign(node, None),
        };
        let slot = table
            .slots
            .get_mut(&ino)
            .expect("an indexed number has a slot");
        match slot.value.as_deref() {
            Some(held) if *held != value => {
                let fresh = table.assign(node, Some(&value));
                if let Some(slot) = table.slots.get_mut(&fresh) {
                    slot.value = Some(Box::new(value));
                }
                fresh
            }
            _ => {
                slot.value = Some(Box::new(value));
                ino
            }
        }
    }

    /// Whether inode `ino` stands for `value` (one that stood for no value yet now does).
    pub fn holds_value(&self, ino: u64, value: Value) -> bool {
        let mut table = self.write();
        let Some(slot) = table.slots.get_mut(&ino) else {
            return false;
        };
        **slot.value.get_or_insert_with(|| Box::new(value)) == value
    }

    /// The value inode `ino` stands for, if it is a metadata entry's and one was seen.
    pub fn value(&self, ino: u64) -> Option<Value> {
        self.read()
            .slot(ino)
            .and_then(|s| s.value.as_deref().copied())
    }

    /// The node numbered `ino`, if any: a request uses it (see [`pass`]).
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.read().slot(ino).map(|s| {
            s.mark_used();
            s.node.clone()
        })
    }

    /// What a box reported about inode `ino`.
    pub fn remote(&self, ino: u64) -> Option<RemoteAttr> {
        self.read().slot(ino).and_then(|s| s.remote)
    }

    /// The number and remote attributes of `node`, if a box reported on it; assigns nothing.
    pub fn known_remote(&self, node: &Node) -> Option<(u64, RemoteAttr)> {
        let table = self.read();
        let ino = table.find(node)?;
        table.slot(ino)?.remote.map(|r| (ino, r))
    }

    /// Assigns (if needed) the number of `node` and records what a box reported about it.
    pub fn set_remote(&self, node: &Node, remote: RemoteAttr) -> u64 {
        let mut table = self.write();
        let ino = match table.find(node) {
            Some(ino) => ino,
            None => table.assign(node, None),
        };
        if let Some(slot) = table.slots.get_mut(&ino) {
            slot.remote = Some(remote);
        }
        ino
    }

    /// What inode `ino`'s file looked like when it was last found installed.
    pub fn installed(&self, ino: u64) -> Option<EntryStat> {
        self.read().slot(ino).and_then(|s| s.installed)
    }

    /// Records what inode `ino`, an installed artifact, looks like. Artifacts never change under
    /// their key, so this stays true (a trimmed artifact that comes back has the same bytes).
    /// Never call this for metadata, whose value can change.
    pub fn set_installed(&self, ino: u64, stat: EntryStat) {
        if let Some(slot) = self.write().slots.get_mut(&ino) {
            slot.installed = Some(stat);
        }
    }

    /// Whether inode `ino` is an artifact shown as a link (marks nothing used).
    pub fn is_link(&self, ino: u64) -> bool {
        matches!(self.read().slot(ino).map(|s| &s.node), Some(Node::Link(_)))
    }

    /// Makes the number of `from` refer to `to`, as the kernel expects after a rename: it keeps
    /// the renamed file's number under its new name. For a scratch directory, everything below
    /// it moves too. Numbers of nodes that were never looked up need no change.
    pub fn retarget(&self, from: &Node, to: &Node) {
        let mut table = self.write();
        let moved: Vec<(u64, Node)> = match (from, to) {
            (Node::Scratch(old), Node::Scratch(new)) => table
                .scratch
                .range(old.clone()..)
                .take_while(|(path, _)| path.starts_with(old))
                .filter_map(|(path, ino)| {
                    let rest = path.strip_prefix(old).ok()?;
                    Some((*ino, Node::Scratch(new.join(rest))))
                })
                .collect(),
            _ => table
                .find(from)
                .map(|ino| vec![(ino, to.clone())])
                .unwrap_or_default(),
        };
        for (ino, node) in moved {
            let Some(slot) = table.slots.get_mut(&ino) else {
                continue;
            };
            let old = std::mem::replace(&mut slot.node, node.clone());
            table.unindex(&old, ino);
            table.index(&node, ino);
        }
    }

    /// How many numbers the table holds now (for the status file).
    pub fn assigned(&self) -> usize {
        self.read().slots.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{Entry, EntryKind};
    use std::path::PathBuf;

    #[test]
    fn numbers_are_stable_distinct_and_start_after_root() {
        let t = Inodes::default();
        let entry = Node::Entry(Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        let scratch = Node::Scratch(PathBuf::from("beacon"));
        assert_eq!(t.ino_of(&Node::Root), ROOT);
        let a = t.ino_of(&entry);
        let b = t.ino_of(&scratch);
        assert_ne!(a, b);
        assert!(a > ROOT && b > ROOT);
        assert_eq!(t.ino_of(&entry), a);
        assert_eq!(t.node(a), Some(entry.clone()));
        assert_eq!(t.node(0), None);
        assert_eq!(t.node(99), None);
        let attr = RemoteAttr {
            size: 5,
            executable: true,
        };
        assert_eq!(t.set_remote(&entry, attr), a);
        assert_eq!(t.remote(a), Some(attr));
        assert_eq!(t.remote(b), None);
        assert_eq!(t.assigned(), 3);
    }

    #[test]
    fn a_metadata_name_gets_a_new_number_when_its_value_changes() {
        let t = Inodes::default();
        let meta = Node::Entry(Entry {
            kind: EntryKind::Meta(crate::dune::layout::MetaVersion::V5),
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        let a = Value {
            digest: [1; 32],
            size: 10,
        };
        let b = Value {
            digest: [2; 32],
            size: 20,
        };
        let listed = t.ino_of(&meta);
        assert_eq!(t.value(listed), None);
        assert_eq!(
            t.ino_for_value(&meta, a),
            listed,
            "the first value takes the number"
        );
        assert_eq!(t.ino_for_value(&meta, a), listed);
        assert!(t.holds_value(listed, a));
        assert!(!t.holds_value(listed, b));
        let next = t.ino_for_value(&meta, b);
        assert_ne!(next, listed);
        assert_eq!(t.ino_of(&meta), next, "the name resolves to the new number");
        assert_eq!(
            t.value(listed),
            Some(a),
            "the old number keeps the old value"
        );
        assert_eq!(t.value(next), Some(b));
        assert_eq!(t.node(listed), Some(meta.clone()));
        // A value seen first at an open is taken by a number that had none.
        let other = Node::Scratch(PathBuf::from("x"));
        let fresh = t.ino_of(&other);
        assert!(t.holds_value(fresh, a));
        assert!(!t.holds_value(999, a));
    }

    #[test]
    fn retargeting_follows_renames_of_files_and_directories() {
        let t = Inodes::default();
        let dir = Node::Scratch(PathBuf::from("promoting.1"));
        let file = Node::Scratch(PathBuf::from("promoting.1/data"));
        let (dir_ino, file_ino) = (t.ino_of(&dir), t.ino_of(&file));
        t.retarget(&dir, &Node::Scratch(PathBuf::from("moved")));
        assert_eq!(t.node(dir_ino), Some(Node::Scratch(PathBuf::from("moved"))));
        assert_eq!(
            t.node(file_ino),
            Some(Node::Scratch(PathBuf::from("moved/data")))
        );
        assert_eq!(
            t.ino_of(&Node::Scratch(PathBuf::from("moved/data"))),
            file_ino
        );
        let entry = Node::Entry(Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        t.retarget(&Node::Scratch(PathBuf::from("moved/data")), &entry);
        assert_eq!(t.node(file_ino), Some(entry.clone()));
        assert_eq!(t.ino_of(&entry), file_ino);
    }

    #[test]
    fn numbers_leave_when_the_kernel_forgets_them_and_are_never_reused() {
        let t = Inodes::default();
        let file = |n: u32| Node::Scratch(PathBuf::from(format!("temp/f{n}")));
        let a = t.ino_of(&file(1));
        t.handed_out(a, &file(1));
        t.handed_out(a, &file(1));
        assert_eq!(t.assigned(), 2);
        t.forget(a, 1);
        assert_eq!(t.node(a), Some(file(1)), "still held once");
        t.forget(a, 1);
        assert_eq!(t.node(a), None);
        assert_eq!(t.known(&file(1)), None);
        assert_eq!(t.assigned(), 1, "only the root is left");
        let again = t.ino_of(&file(1));
        assert!(again > a, "a number is never reused");
        // The root is never forgotten; forgetting what is not there does nothing.
        t.forget(ROOT, 10);
        t.forget(12345, 1);
        assert_eq!(t.node(ROOT), Some(Node::Root));
        // A number handed out after the kernel forgot it (a reply racing a forget) comes back.
        t.handed_out(a, &file(1));
        assert_eq!(t.node(a), Some(file(1)));
    }

    #[test]
    fn numbers_never_handed_out_leave_after_the_grace_period() {
        let t = Inodes::default();
        let listed = Node::Scratch(PathBuf::from("listed"));
        let looked_up = Node::Scratch(PathBuf::from("looked-up"));
        let a = t.ino_of(&listed);
        let b = t.ino_of(&looked_up);
        t.handed_out(b, &looked_up);
        let later = Instant::now() + UNHANDED_GRACE + Duration::from_secs(1);
        t.write().sweep(later);
        assert_eq!(t.node(a), None, "never handed out: swept");
        assert_eq!(t.node(b), Some(looked_up), "held by the kernel: kept");
    }

    #[test]
    fn a_directory_rename_moves_only_what_is_under_it() {
        let t = Inodes::default();
        let path = |p: &str| Node::Scratch(PathBuf::from(p));
        let inside = t.ino_of(&path("promoting.1/a/b"));
        let dir = t.ino_of(&path("promoting.1"));
        let sibling = t.ino_of(&path("promoting.10/c"));
        let prefix_only = t.ino_of(&path("promoting.1x"));
        t.retarget(&path("promoting.1"), &path("done"));
        assert_eq!(t.node(dir), Some(path("done")));
        assert_eq!(t.node(inside), Some(path("done/a/b")));
        assert_eq!(t.node(sibling), Some(path("promoting.10/c")));
        assert_eq!(t.node(prefix_only), Some(path("promoting.1x")));
        assert_eq!(t.known(&path("done/a/b")), Some(inside));
        assert_eq!(t.known(&path("promoting.1/a/b")), None);
    }

    #[test]
    fn paths_of_the_layout_keep_their_number_across_forgetting() {
        let t = Inodes::default();
        let entry = Node::Entry(Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        let first = t.ino_of(&entry);
        assert_eq!(Some(first), natural_number(&entry, None));
        t.handed_out(first, &entry);
        t.forget(first, 1);
        assert_eq!(t.node(first), None);
        assert_eq!(t.ino_of(&entry), first, "looked up again: the same number");
        let other = Node::Entry(Entry {
            kind: EntryKind::Meta(crate::dune::layout::MetaVersion::V4),
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        assert_ne!(t.ino_of(&other), first, "same key, another kind");
        let value = Value {
            digest: [7; 32],
            size: 1,
        };
        assert_ne!(
            natural_number(&other, Some(&value)),
            natural_number(&other, None)
        );
        assert_eq!(
            natural_number(&Node::Scratch(PathBuf::from("x")), None),
            None
        );
        assert!(first > 1 << 63);
    }

    #[test]
    fn paths_found_at_their_natural_number_need_no_index() {
        let t = Inodes::default();
        let entries: Vec<Node> = (0..100u32)
            .map(|n| {
                Node::Entry(Entry {
                    kind: EntryKind::File,
                    key: format!("{n:08x}{}", "a".repeat(24)).parse().unwrap(),
                })
            })
            .collect();
        for node in &entries {
            let ino = t.ino_of(node);
            assert_eq!(t.known(node), Some(ino));
            assert_eq!(t.node(ino), Some(node.clone()));
        }
        assert_eq!(
            t.read().by_node.len(),
            1,
            "only the root: {:?}",
            t.read().by_node.len()
        );
        // An artifact shown as a link has a natural number of its own, which says so.
        let Node::Entry(first) = entries[0] else {
            unreachable!()
        };
        let link = Node::Link(first);
        let link_ino = t.ino_of(&link);
        assert_ne!(link_ino, t.ino_of(&entries[0]));
        assert_eq!(natural_number(&link, None), Some(link_ino));
        assert!(t.is_link(link_ino) && !t.is_link(t.ino_of(&entries[0])));
        assert_eq!(t.node(link_ino), Some(link));
        // A scratch file renamed into the cache keeps its (counter) number: indexed.
        let scratch = Node::Scratch(PathBuf::from("temp/x"));
        let ino = t.ino_of(&scratch);
        t.retarget(&scratch, &entries[0]);
        assert_eq!(t.known(&entries[0]), Some(ino));
        assert_eq!(t.known(&scratch), None);
    }

    #[test]
    fn a_number_costs_about_a_hundred_bytes() {
        // A `find` over a million entries makes the kernel hold a million numbers.
        let per_number = std::mem::size_of::<Slot>() + std::mem::size_of::<u64>();
        assert!(per_number <= 112, "{per_number} bytes per number");
    }

    #[test]
    fn the_table_gives_memory_back_when_the_kernel_forgets_most_of_it() {
        let t = Inodes::default();
        let nodes: Vec<Node> = (0..20_000)
            .map(|n| Node::Scratch(PathBuf::from(format!("f{n}"))))
            .collect();
        for node in &nodes {
            let ino = t.ino_of(node);
            t.handed_out(ino, node);
        }
        let grown = t.read().slots.capacity();
        for node in &nodes[..19_990] {
            let ino = t.known(node).unwrap();
            t.forget(ino, 1);
        }
        let table = t.read();
        assert_eq!(table.slots.len(), 11);
        assert!(
            table.slots.capacity() < grown / 8,
            "{} of {grown}",
            table.slots.capacity()
        );
    }

    #[test]
    fn the_sweep_drops_only_entries_held_unused_and_closed() {
        let entry = Node::Entry(Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        });
        let shard = tree::parent(&entry);
        // (node, handed, open, asked, used)
        assert_eq!(pass(&entry, 1, false, false, false), Pass::Evict);
        assert_eq!(pass(&entry, 3, false, false, true), Pass::SecondChance);
        assert_eq!(pass(&entry, 0, false, false, false), Pass::Keep, "not held");
        assert_eq!(pass(&entry, 1, true, false, false), Pass::Keep, "open");
        assert_eq!(pass(&entry, 1, false, true, false), Pass::Keep, "asked");
        for node in [
            shard,
            Node::Root,
            Node::Status(0),
            Node::Scratch(PathBuf::from("temp/x")),
        ] {
            assert_eq!(pass(&node, 1, false, false, false), Pass::Keep, "{node:?}");
        }
    }

    #[test]
    fn past_its_bound_the_table_names_the_entries_unused_longest() {
        let t = Inodes::default();
        let (wake, woken) = crossbeam_channel::bounded(1);
        t.bound(80, wake);
        let entry = |n: u32| {
            Node::Entry(Entry {
                kind: EntryKind::File,
                key: format!("{n:08x}{}", "a".repeat(24)).parse().unwrap(),
            })
        };
        let hand_out = |node: &Node| {
            let ino = t.ino_of(node);
            t.handed_out(ino, node);
            ino
        };
        // The kernel holds the entries' shard directories (and the root).
        for n in 0..100 {
            hand_out(&tree::parent(&entry(n)));
        }
        let mut hand = 0;
        assert!(t.victims(&mut hand).is_empty(), "within the bound");
        assert!(woken.try_recv().is_err());
        let inos: Vec<u64> = (0..100).map(|n| hand_out(&entry(n))).collect();
        assert!(
            woken.try_recv().is_ok(),
            "past the bound: the thread is woken"
        );
        t.opened(inos[0]);
        // A first sweep unmarks everything (all were used by being handed out); then the old
        // ones are found unused, but one used again meanwhile.
        let mut hand = 0;
        let held = t.assigned();
        let want = held - (80 - 80 / 8);
        let mut chosen = t.victims(&mut hand);
        assert_eq!(chosen.len(), want);
        assert!(
            t.victims(&mut hand).is_empty(),
            "the kernel was asked already"
        );
        for (parent, victim) in &chosen {
            let node = Node::Entry(*victim);
            assert_eq!(Some(*parent), t.known(&tree::parent(&node)));
            assert_ne!(
                t.known(&node),
                Some(inos[0]),
                "an open entry is never chosen"
            );
        }
        // The kernel forgets them: the table is within its low mark, nothing more to drop.
        for (_, victim) in chosen.drain(..) {
            let ino = t.known(&Node::Entry(victim)).unwrap();
            t.forget(ino, 1);
        }
        assert_eq!(t.assigned(), 80 - 80 / 8);
        assert!(t.victims(&mut hand).is_empty());
        // What was used since the sweep passed (10 old entries looked at, 20 new ones handed
        // out) is kept over what was not.
        let old: Vec<u64> = (0..100).filter_map(|n| t.known(&entry(n))).collect();
        for ino in &old[..10] {
            t.node(*ino);
        }
        for n in 100..120 {
            hand_out(&entry(n));
        }
        let chosen = t.victims(&mut hand);
        assert_eq!(chosen.len(), 20);
        for (_, victim) in &chosen {
            let ino = t.known(&Node::Entry(*victim)).unwrap();
            assert!(old[10..].contains(&ino), "{ino} was used or is open");
        }
        t.closed(inos[0]);
        assert!(t.read().open.is_empty());
    }
}
