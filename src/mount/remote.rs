//! Everything the mount asks of the boxes, done off the FUSE threads.
//!
//! A FUSE thread never waits on the network. Lookups, opens and listings that need a box hand their
//! reply to a job on a small worker pool and return at once, so a slow box delays only the requests
//! that need it, never the whole mount. Lookups and transfers run on a pool of the owning box's
//! own: a box that stalls ties up its own workers until the client's deadline, never those of
//! other boxes' keys (with one shared pool, a build reading as many of a stalled box's keys at
//! once as there are workers would stall every read of the mount). Listings, which ask every box
//! whose ranges meet a shard, have a pool of their own.
//!
//! Transfers are single-flight: the first open of a cold entry starts the one transfer, later
//! opens of the same entry join it as waiters (counted), and all are answered when it ends, as
//! soon as the bytes are verified: making them durable in the store happens behind the reader
//! ([`Landing`]). Looking up a rule's metadata is such a transfer too (Dune reads it next, and it
//! is as small as a `HEAD`'s answer), and it starts fetching the artifacts the rule names.
//! Waiting is bounded by the client's own deadlines (connect, each read), never by an extra timer
//! that would start a second transfer.
//!
//! Fetching ahead: a box sends, with a rule's metadata, the rules that came next in earlier builds
//! ([`crate::hints`]). The mount then fetches those rules' metadata and artifacts before Dune asks,
//! within the window and byte budget of [`Ahead`], on a lower priority: each box's workers take a
//! job Dune waits for before any job ahead of it, and a job ahead that Dune starts waiting for
//! is moved up. In turn the mount records the order Dune asks for rules in ([`Trail`]) and
//! publishes it as hints, on a thread of its own, to the boxes that keep them.
//!
//! While the cluster config names the table it replaces, a lookup or transfer that misses at the
//! key's owner asks its previous owner too ([`Cluster::read`]), in the same job on the owner's
//! pool: a stalled previous owner holds that pool's workers until the client's deadline.
//!
//! "Absent on its box" is remembered for [`NEGATIVE_TTL`], so a build probing many missing keys
//! costs one request per key, not one per probe. Failures are never remembered here: the client's
//! per-box health state already makes a dead box fail fast, and comes back on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rustix::io::Errno;

use super::absent::Absent;
use super::ahead::{Ahead, Limits};
use super::pools::{Limits as PoolLimits, Pool, Waited};
use super::stats::{RecentErrors, Stats};
use super::trail::{Asked, Trail};
use super::warming::Offer;
use crate::cluster::client::{ClientError, ListedEntry, RemoteEntry};
use crate::cluster::Cluster;
use crate::dune::key::{Awaited, Key, Shard};
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;
use crate::fetch::{fetch_verified, FetchError, Fetched};
use crate::metrics::Histogram;
use crate::store::landing::Landing;
use crate::store::{Store, VerifiedEntry};
use crate::sync::lock;

/// How long "the owning box does not hold this key" is believed without asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// Called once when a transfer ends, for each open that waited on it.
pub type Waiter = Box<dyn FnOnce(Result<(), FetchFailure>) + Send>;

/// Why a transfer did not install the entry, reduced to what an `open` must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchFailure {
    /// The box does not hold it (anymore): ENOENT.
    Missing,
    /// The box could not be reached or failed: EIO, the entry is unavailable for now.
    Unavailable(String),
    /// The box sent a copy that does not verify: EIO, and it is counted and logged.
    BadCopy(String),
    /// The local store failed: the errno to answer (ENOSPC for a full disk; EIO if the failure
    /// carried none), and the error.
    Local(i32, String),
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailure::Missing => write!(f, "not on its box"),
            FetchFailure::Unavailable(why) => write!(f, "unavailable: {why}"),
            FetchFailure::BadCopy(why) => write!(f, "a copy that does not verify: {why}"),
            FetchFailure::Local(_, why) => write!(f, "the local store failed: {why}"),
        }
    }
}

/// What a remote lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The entry was just installed in the store (a transfer in flight finished).
    Installed,
    /// The owning box holds it.
    OnBox(RemoteEntry),
    /// Not to be had now: absent, or its box is unavailable (a miss either way).
    Missing,
}

/// The mount's link to the cluster: worker pools, transfers in flight, negative cache.
pub struct Remote {
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    /// Where fetched entries go, readable at once.
    landing: Arc<Landing>,
    stats: Arc<Stats>,
    /// Listings and other jobs that are not about one box.
    jobs: Pool,
    /// Lookups and transfers, one pool per box, in config order.
    box_jobs: Vec<Pool>,
    in_flight: Mutex<HashMap<Entry, InFlight>>,
    absent: Mutex<Absent>,
    /// The books of what was fetched ahead of Dune.
    ahead: Ahead,
    /// Where the entries Dune is likely to ask for next, once held, are offered for warming
    /// the kernel (`warming`), if it is on.
    warming: OnceLock<Sender<Offer>>,
    /// The order Dune asks for rules in, for the hints this mount publishes.
    trail: Mutex<Trail>,
    /// Hints to publish, to the thread that sends them (dropped when it lags: they are advice).
    publish: Sender<(Entry, Vec<Entry>)>,
    /// How long transfers took, from a worker taking one to its end (whatever the outcome).
    transfer_durations: Histogram,
    /// The last lookups and transfers that failed, and why.
    errors: RecentErrors,
}

/// A transfer that has been asked for, and who waits on it.
struct InFlight {
    transfer: Arc<Transfer>,
    waiters: Vec<Waiter>,
}

/// One transfer: queued on its box's pool, run by the first worker that takes it (a transfer
/// ahead that Dune starts waiting for is queued a second time, at Dune's priority).
struct Transfer {
    entry: Entry,
    /// Fetched ahead of Dune (counted against the window and budget).
    ahead: bool,
    started: std::sync::atomic::AtomicBool,
    /// Set once anyone waits on it: its hashing then no longer waits for other entries'.
    awaited: Awaited,
}

/// How many jobs each queue of a pool holds at most, per worker.
const QUEUED_PER_WORKER: usize = 256;

/// How long a job Dune waits for may wait in its box's queue before it is answered as a miss.
pub const QUEUE_DEADLINE: Duration = Duration::from_secs(3);

/// How many hints may wait for the publishing thread; past it new ones are dropped.
const PUBLISH_QUEUE: usize = 4096;

impl Remote {
    /// Starts `workers` threads for each box's lookups and transfers, and as many for listings.
    pub fn start(
        cluster: Arc<Cluster>,
        store: Arc<Store>,
        landing: Arc<Landing>,
        stats: Arc<Stats>,
        workers: usize,
        limits: Limits,
    ) -> Arc<Remote> {
        let pool = PoolLimits {
            workers,
            capacity: workers.max(1) * QUEUED_PER_WORKER,
            deadline: QUEUE_DEADLINE,
        };
        let jobs = Pool::start("list", pool);
        let box_jobs = (0..cluster.clients().len())
            .map(|i| Pool::start(&format!("box{i}"), pool))
            .collect();
        let (publish, hints) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        let remote = Arc::new(Remote {
            cluster,
            store,
            landing,
            stats,
            jobs,
            box_jobs,
            in_flight: Mutex::new(HashMap::new()),
            absent: Mutex::new(Absent::new(NEGATIVE_TTL)),
            ahead: Ahead::new(limits),
            warming: OnceLock::new(),
            trail: Mutex::new(Trail::default()),
            publish,
            transfer_durations: Histogram::default(),
            errors: RecentErrors::default(),
        });
        let publisher = Arc::downgrade(&remote);
        std::thread::Builder::new()
            .name("hints".into())
            .spawn(move || {
                for (rule, next) in hints {
                    let Some(remote) = publisher.upgrade() else {
                        return;
                    };
                    remote.publish_hint(&rule, &next);
                }
            })
            .expect("cannot start the hints thread");
        remote
    }

    /// The cluster, for status and attribute questions.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Runs `job` on the pool for jobs that are not about one box (listings); told if it
    /// waited too long (see [`pools`](super::pools)).
    pub fn spawn(&self, job: impl FnOnce(Waited) + Send + 'static) {
        self.jobs.now(Box::new(job));
    }

    /// Runs `job`, which asks the box owning `entry`, on that box's pool: before any job ahead
    /// of Dune if `now`.
    fn spawn_for(&self, entry: &Entry, now: bool, job: impl FnOnce(Waited) + Send + 'static) {
        let pool = &self.box_jobs[self.cluster.config().owner_index(&entry.key)];
        match now {
            true => pool.now(Box::new(job)),
            false => pool.ahead(Box::new(job)),
        }
    }

    /// Whether the owning box was recently found not to hold `entry`.
    pub fn known_absent(&self, entry: &Entry) -> bool {
        lock(&self.absent).holds(entry, Instant::now())
    }

    /// Asks the owning box about `entry` (call from a worker job), and while entries move its
    /// previous owner too ([`Cluster::read`]): `Ok(None)` if neither holds it. Unavailability
    /// is an error so the caller can count it; both are misses for Dune.
    pub fn head(&self, entry: &Entry) -> Result<Option<RemoteEntry>, ClientError> {
        Stats::bump(&self.stats.remote_lookups);
        let client = self.cluster.owner(&entry.key);
        let result = self.cluster.read(&entry.key, |client| client.head(entry));
        match &result {
            Ok(Some(_)) => Stats::bump(&self.stats.remote_found),
            Ok(None) => {
                Stats::bump(&self.stats.remote_missing);
                self.remember_absent(entry);
            }
            Err(e) => {
                self.count_failure(e);
                let url = client.url();
                self.errors
                    .record(format!("looking up {entry} on {url}: {e}"));
            }
        }
        result
    }

    /// What every box whose ranges meet `shard` holds there (call from a worker job). A box that
    /// cannot answer is skipped (and logged): a listing missing one box's keys is still useful.
    pub fn list_shard(&self, kind: EntryKind, shard: Shard) -> Vec<ListedEntry> {
        let mut all = Vec::new();
        for client in self.cluster.clients_for_shard(shard) {
            match client.list(kind, shard) {
                Ok(listed) => all.extend(listed),
                Err(e) => {
                    self.count_failure(&e);
                    log::warn!("listing {kind}/{shard}: {e}");
                }
            }
        }
        all
    }

    /// Finds out whether `entry` can be had, then calls `done` (on a worker thread, or at once).
    /// If a transfer of it is in flight (typically a prefetch), this waits for that transfer
    /// instead of asking the box again. (The mount asks this of artifacts only: a metadata
    /// lookup is a [`Remote::fetch`], since Dune reads the metadata right after.)
    pub fn lookup(self: &Arc<Self>, entry: Entry, done: Box<dyn FnOnce(Lookup) + Send>) {
        {
            let mut in_flight = lock(&self.in_flight);
            if let Some(flight) = in_flight.get_mut(&entry) {
                Stats::bump(&self.stats.fetch_waiters);
                Stats::bump(&self.stats.fetch_joins);
                self.move_up(&flight.transfer);
                flight.waiters.push(Box::new(move |result| {
                    done(match result {
                        Ok(()) => Lookup::Installed,
                        Err(_) => Lookup::Missing,
                    })
                }));
                return;
            }
        }
        let remote = self.clone();
        self.spawn_for(&entry, true, move |waited| {
            if waited == Waited::TooLong {
                Stats::bump(&remote.stats.waited_too_long);
                return done(Lookup::Missing);
            }
            done(match remote.head(&entry) {
                Ok(Some(found)) => Lookup::OnBox(found),
                Ok(None) | Err(_) => Lookup::Missing,
            })
        });
    }

    /// The shards of `kind` in which any box holds entries (a box that cannot answer is skipped
    /// and logged, as for shard listings).
    pub fn list_shards(&self, kind: EntryKind) -> Vec<Shard> {
        let mut all = Vec::new();
        for client in self.cluster.every_client() {
            match client.list_shards(kind) {
                Ok(shards) => all.extend(shards),
                Err(e) => {
                    self.count_failure(&e);
                    log::warn!("listing {kind}/: {e}");
                }
            }
        }
        all
    }

    /// Gets `entry` into the store, then calls `waiter`. If a transfer of it is already in flight,
    /// the waiter joins it instead of starting another (and moves it up, if it was queued ahead
    /// of Dune).
    pub fn fetch(self: &Arc<Self>, entry: Entry, waiter: Waiter) {
        Stats::bump(&self.stats.fetch_waiters);
        self.begin_transfer(entry, false, Some(waiter));
    }

    /// Starts a transfer of `entry` unless one is in flight; `waiter` (if any) is answered when
    /// it ends. False if one was in flight already.
    fn begin_transfer(self: &Arc<Self>, entry: Entry, ahead: bool, waiter: Option<Waiter>) -> bool {
        let transfer = {
            let mut in_flight = lock(&self.in_flight);
            if let Some(flight) = in_flight.get_mut(&entry) {
                if let Some(waiter) = waiter {
                    Stats::bump(&self.stats.fetch_joins);
                    flight.transfer.awaited.set();
                    self.move_up(&flight.transfer);
                    flight.waiters.push(waiter);
                }
                return false;
            }
            // A transfer lands its entry before it leaves the table: one that ended since the
            // caller looked is found here, and not fetched again.
            if self.landing.holds(&entry) {
                drop(in_flight);
                if let Some(waiter) = waiter {
                    self.stats
                        .fetch_waiters
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    waiter(Ok(()));
                }
                return false;
            }
            let transfer = Arc::new(Transfer {
                entry,
                ahead,
                started: std::sync::atomic::AtomicBool::new(false),
                awaited: Awaited::default(),
            });
            in_flight.insert(
                entry,
                InFlight {
                    transfer: transfer.clone(),
                    waiters: waiter.into_iter().collect(),
                },
            );
            transfer
        };
        Stats::bump(&self.stats.fetches);
        Stats::bump(&self.stats.fetches_in_flight);
        self.queue(transfer, !ahead);
        true
    }

    /// Queues `transfer` on its box's pool, at Dune's priority if `now`.
    fn queue(self: &Arc<Self>, transfer: Arc<Transfer>, now: bool) {
        let remote = self.clone();
        let entry = transfer.entry;
        self.spawn_for(&entry, now, move |waited| {
            if !transfer
                .started
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                remote.run(&transfer, waited);
            }
        });
    }

    /// Dune waits on `transfer`: if it was queued ahead of Dune and has not started, it is
    /// queued again at Dune's priority (whichever copy a worker takes first runs it).
    fn move_up(self: &Arc<Self>, transfer: &Arc<Transfer>) {
        if transfer.ahead && !transfer.started.load(std::sync::atomic::Ordering::Acquire) {
            Stats::bump(&self.stats.ahead_moved_up);
            self.queue(transfer.clone(), true);
        }
    }

    /// Runs a transfer (or, if it waited too long, gives it up), then answers everyone waiting
    /// on it.
    fn run(self: &Arc<Self>, transfer: &Transfer, waited: Waited) {
        let entry = transfer.entry;
        if waited == Waited::TooLong {
            Stats::bump(&self.stats.waited_too_long);
            let failure = FetchFailure::Unavailable(format!(
                "{entry} waited too long for its box (its queue was full, or {QUEUE_DEADLINE:?} \
                 passed)"
            ));
            return self.end(transfer, Err(failure));
        }
        // Whatever happens in the transfer, even a panic, its waiters are answered: left in
        // the table, they would make every later open of the entry join a fetch that never
        // ends.
        let started = Instant::now();
        let result = unless_panicked(&format!("fetching {entry}"), || {
            let transferred = self.transfer(transfer);
            self.transfer_durations.observe(started.elapsed());
            transferred.map(|(named, next)| {
                // Started before the waiters are answered, so that Dune, opening them next,
                // finds them in flight rather than asking their boxes again.
                self.prefetch(&transfer.entry, named, transfer.ahead);
                self.fetch_ahead(&next);
            })
        });
        self.end(transfer, result);
    }

    /// Ends a transfer with `result`: out of the table, its waiters answered.
    fn end(&self, transfer: &Transfer, result: Result<(), FetchFailure>) {
        let entry = transfer.entry;
        if result.is_err() && transfer.ahead {
            self.ahead.release(&entry);
        }
        let waiters = lock(&self.in_flight)
            .remove(&entry)
            .map_or_else(Vec::new, |flight| flight.waiters);
        if result.is_ok() && transfer.ahead && waiters.is_empty() {
            // Landed before Dune asked: the kernel can learn it before Dune asks too.
            self.offer_warming(Offer::Hinted(entry));
        }
        self.stats
            .fetches_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .fetch_waiters
            .fetch_sub(waiters.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for waiter in waiters {
            waiter(result.clone());
        }
    }

    /// Starts fetching the artifacts a just-fetched metadata entry names: Dune restores a rule
    /// by reading its metadata and then every artifact it names, so fetching them all at once
    /// turns a chain of round trips into one parallel batch. For a rule fetched `ahead` of
    /// Dune, its artifacts are fetched ahead too (within the budget).
    fn prefetch(self: &Arc<Self>, rule: &Entry, named: Vec<Key>, ahead: bool) {
        let artifacts: Vec<Entry> = named
            .into_iter()
            .map(|key| Entry {
                kind: EntryKind::File,
                key,
            })
            .collect();
        if ahead {
            self.ahead.fetching_for(*rule, artifacts.clone());
        }
        // `begin_transfer` skips those held here already.
        for artifact in artifacts {
            if !self.known_absent(&artifact) && self.begin_transfer(artifact, ahead, None) {
                Stats::bump(&self.stats.prefetches);
            }
        }
    }

    /// Starts fetching ahead the rules a hint names, as far as the window allows.
    fn fetch_ahead(self: &Arc<Self>, next: &[Entry]) {
        if !self.ahead.enabled() {
            return;
        }
        // A hint is followed once for each rule before it that Dune asks for and each that is
        // fetched: most of its rules are claimed already, or the window is full. Those are
        // skipped on the books alone, before `begin_transfer` looks for the rule in the store
        // (a `stat` of a name not there yet: several per entry restored).
        for rule in next {
            if self.known_absent(rule) || !self.ahead.claim_rule(*rule, Instant::now()) {
                continue;
            }
            if self.begin_transfer(*rule, true, None) {
                Stats::bump(&self.stats.ahead_rules);
            } else {
                // Held here already, or in flight: Dune's own fetch, or another hint's.
                self.ahead.release(rule);
            }
        }
    }

    /// Dune asked for `entry`, which is held here now (`fetched`: Dune waited for its fetch):
    /// it leaves the books of what was fetched ahead, and, for a rule, the rules its hint names
    /// are fetched ahead in turn and the order is recorded for the hints this mount publishes.
    ///
    /// Returns the rules this made near Dune ([`Ahead::near`]).
    pub fn asked(self: &Arc<Self>, entry: &Entry, fetched: bool) -> Vec<Entry> {
        let was_ahead = self.ahead.used(entry);
        if was_ahead {
            Stats::bump(&self.stats.ahead_used);
        }
        if entry.kind == EntryKind::File {
            return Vec::new();
        }
        let near = match self.ahead.next_of(entry) {
            Some(next) => self.follow_hint(&next, true),
            None if !fetched => {
                self.ask_hint(*entry);
                Vec::new()
            }
            None => Vec::new(),
        };
        let asked = if fetched || was_ahead {
            Asked::Networked
        } else {
            Asked::Held
        };
        self.record(*entry, asked);
        near
    }

    /// Whether rule `rule` is near Dune, to hand the kernel its metadata ([`Ahead::near`]).
    pub fn is_near(&self, rule: &Entry) -> bool {
        self.ahead.is_near(rule)
    }

    /// Whether rule `rule` is near Dune ([`Remote::is_near`]); from now on it is not.
    pub fn take_near(&self, rule: &Entry) -> bool {
        self.ahead.take_near(rule)
    }

    /// The kernel was handed rule `rule`'s metadata: Dune reads it next with no request, so
    /// this stands for its asking. It leaves the books of what was fetched ahead, and the rules
    /// its hint names are fetched ahead and warmed in turn (but not made near: see
    /// [`Ahead::near`]); its place in the order is recorded as handed.
    pub fn handed(self: &Arc<Self>, rule: &Entry) {
        if self.ahead.used(rule) {
            Stats::bump(&self.stats.ahead_used);
        }
        if let Some(next) = self.ahead.next_of(rule) {
            self.follow_hint(&next, false);
        }
        self.record(*rule, Asked::Handed);
    }

    /// Fetches ahead, and offers for warming, the rules a hint says come `next`; `near` if the
    /// hint is of a rule Dune was seen to ask for ([`Ahead::near`]). Returns the rules this
    /// made near.
    fn follow_hint(self: &Arc<Self>, next: &[Entry], near: bool) -> Vec<Entry> {
        let newly_near = match near {
            true => self.ahead.near(next),
            false => Vec::new(),
        };
        self.fetch_ahead(next);
        for rule in next {
            self.offer_warming(match newly_near.contains(rule) {
                true => Offer::Near(*rule),
                false => Offer::Hinted(*rule),
            });
        }
        newly_near
    }

    /// Asks the box owning rule `rule`, which Dune found here, for its hint, off Dune's path
    /// (a hint comes with a fetched rule, but a rule held here is not fetched), and follows it:
    /// so a mount over a store that holds everything (a restarted mount, a machine that built
    /// before) warms the kernel too. Once per rule, and not of a node that keeps no hints.
    fn ask_hint(self: &Arc<Self>, rule: Entry) {
        let client = self.cluster.owner(&rule.key);
        if !self.ahead.enabled() || !client.may_keep_hints() || !self.ahead.first_hint_ask(rule) {
            return;
        }
        let remote = self.clone();
        self.spawn_for(&rule, false, move |waited| {
            if let Waited::TooLong = waited {
                return;
            }
            match remote.cluster.owner(&rule.key).get_hint(&rule) {
                Ok(Some(next)) if !next.is_empty() => {
                    Stats::bump(&remote.stats.hints_received);
                    remote.ahead.learn(rule, next.clone());
                    // Made near with no thread to hand them: warming does.
                    remote.follow_hint(&next, true);
                }
                Ok(_) => {}
                Err(e) => log::debug!("asking for the hint of {rule}: {e}"),
            }
        });
    }

    /// From now on, offers the entries Dune is likely to ask for next to `warming` (a bounded
    /// queue: an offer it has no room for is dropped).
    pub fn warm_into(&self, warming: Sender<Offer>) {
        let _ = self.warming.set(warming);
    }

    fn offer_warming(&self, offer: Offer) {
        if let Some(warming) = self.warming.get() {
            let _ = warming.try_send(offer);
        }
    }

    /// Records that Dune asked for the rule `rule`, or that the kernel was handed it (how:
    /// `asked`). The order that yields is this mount's own hint from then on (the next build
    /// here follows it), and is queued for publishing if the trail says so.
    pub fn record(&self, rule: Entry, asked: Asked) {
        let Some(followed) = lock(&self.trail).record(rule, asked) else {
            return;
        };
        if followed.publish
            && self
                .publish
                .try_send((followed.rule, followed.next.clone()))
                .is_err()
        {
            Stats::bump(&self.stats.hints_dropped);
        }
        self.ahead.learn(followed.rule, followed.next);
    }

    /// Sends a hint to the box owning its rule, if that box keeps hints (a dumb box does not).
    fn publish_hint(&self, rule: &Entry, next: &[Entry]) {
        let client = self.cluster.owner(&rule.key);
        if !client.keeps_hints() {
            return;
        }
        match client.put_hint(rule, next) {
            Ok(()) => Stats::bump(&self.stats.hints_published),
            Err(e) => {
                Stats::bump(&self.stats.hints_dropped);
                log::debug!("publishing the hint of {rule}: {e}");
            }
        }
    }

    /// Fetches `entry` into the landing; for metadata, returns the artifacts it names and the
    /// rules its hint says come next.
    fn transfer(&self, transfer: &Transfer) -> Result<(Vec<Key>, Vec<Entry>), FetchFailure> {
        let entry = &transfer.entry;
        if entry.kind != EntryKind::File {
            // Its hint, if its box keeps one, comes with it: not to be asked for again, even by
            // a lookup that finds the rule held the moment it lands, before this returns.
            self.ahead.first_hint_ask(*entry);
        }
        let client = self.cluster.owner(&entry.key);
        let mut budget =
            |n: usize| !transfer.ahead || self.ahead.take_bytes(*entry, n as u64, Instant::now());
        let fetched = self.cluster.read(&entry.key, |client| {
            let ahead = transfer.ahead.then_some(&transfer.awaited);
            fetch_verified(client, &self.store, entry, ahead, &mut budget)
        });
        let fetched = fetched.and_then(|fetched| match fetched {
            Some(Fetched { verified, next }) => {
                let size = verified.size();
                let named = artifacts_named(&verified);
                self.landing.land(verified).map_err(FetchError::Local)?;
                Ok(Some((size, named, next)))
            }
            None => Ok(None),
        });
        let result = match fetched {
            Ok(Some((size, named, next))) => {
                self.stats
                    .bytes_fetched
                    .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                if entry.kind != EntryKind::File && !next.is_empty() {
                    Stats::bump(&self.stats.hints_received);
                    self.ahead.learn(*entry, next.clone());
                    lock(&self.trail).heard(*entry, next.clone());
                }
                return Ok((named, next));
            }
            // Not on its box: a miss, not a failure (a metadata lookup asks this way).
            Ok(None) => {
                self.remember_absent(entry);
                return Err(FetchFailure::Missing);
            }
            Err(FetchError::OverBudget) => {
                Stats::bump(&self.stats.ahead_over_budget);
                return Err(FetchFailure::Unavailable(
                    "the prefetch budget is spent".into(),
                ));
            }
            Err(FetchError::BadCopy { cause, .. }) => {
                Stats::bump(&self.stats.verification_failures);
                FetchFailure::BadCopy(cause)
            }
            Err(FetchError::Local(e)) => FetchFailure::Local(
                e.os_error().unwrap_or(Errno::IO.raw_os_error()),
                e.to_string(),
            ),
            Err(FetchError::Box(e)) => {
                self.count_failure(&e);
                FetchFailure::Unavailable(e.to_string())
            }
        };
        Stats::bump(&self.stats.fetch_failures);
        self.errors
            .record(format!("fetching {entry} from {}: {result}", client.url()));
        if matches!(result, FetchFailure::Unavailable(_)) {
            // The client logged the box's failure when it marked it down; while it stays down,
            // every metadata lookup of its keys ends here, and one line each would flood the log.
            log::debug!("fetching {entry} from {}: {result:?}", client.url());
        } else {
            log::warn!("fetching {entry} from {}: {result:?}", client.url());
        }
        Err(result)
    }

    /// The last lookups and transfers that failed (for the status file).
    pub fn recent_errors(&self) -> serde_json::Value {
        self.errors.to_json()
    }

    /// How long transfers took (for the metrics).
    pub fn transfer_durations(&self) -> &Histogram {
        &self.transfer_durations
    }

    /// The bytes fetched ahead of Dune and not yet asked for.
    pub fn ahead_bytes(&self) -> u64 {
        self.ahead.bytes()
    }

    /// The rules fetched ahead of Dune and not yet asked for.
    pub fn ahead_rules(&self) -> usize {
        self.ahead.rules()
    }

    fn remember_absent(&self, entry: &Entry) {
        lock(&self.absent).insert(*entry, Instant::now());
    }

    fn count_failure(&self, error: &ClientError) {
        if error.is_box_unavailable() {
            Stats::bump(&self.stats.box_unavailable);
        }
    }
}

/// The artifacts a verified entry names, if it is metadata (already parsed once to verify it,
/// so parsing cannot fail here; if its bytes cannot be read back, nothing is prefetched).
fn artifacts_named(verified: &VerifiedEntry) -> Vec<Key> {
    if verified.entry().kind == EntryKind::File {
        return Vec::new();
    }
    verified
        .read()
        .ok()
        .and_then(|bytes| Metadata::parse(&bytes).ok())
        .map(|metadata| metadata.artifact_keys().collect())
        .unwrap_or_default()
}

/// Runs a transfer, turning a panic in it into an unavailable entry (EIO for its readers),
/// logged with `what` it was doing.
fn unless_panicked(
    what: &str,
    transfer: impl FnOnce() -> Result<(), FetchFailure>,
) -> Result<(), FetchFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(transfer)).unwrap_or_else(|panic| {
        let cause = panic_message(panic.as_ref());
        log::error!("{what}: the transfer panicked: {cause}");
        Err(FetchFailure::Unavailable(format!(
            "internal error: {cause}"
        )))
    })
}

/// The message a panic carried, if it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => message.to_string(),
        (_, Some(message)) => message.clone(),
        _ => "a panic without a message".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_transfer_becomes_an_unavailable_entry() {
        let result = unless_panicked("fetching a test entry", || panic!("boom {}", 7));
        assert_eq!(
            result,
            Err(FetchFailure::Unavailable("internal error: boom 7".into()))
        );
        let result = unless_panicked("fetching a test entry", || std::panic::panic_any(5u8));
        assert!(
            matches!(result, Err(FetchFailure::Unavailable(m)) if m.contains("without a message"))
        );
        assert_eq!(unless_panicked("fetching", || Ok(())), Ok(()));
        assert_eq!(
            unless_panicked("fetching", || Err(FetchFailure::Missing)),
            Err(FetchFailure::Missing)
        );
    }
}
