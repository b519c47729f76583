//! What the mount has fetched ahead of Dune, and the limits that keep it from running away: a
//! window of rules (metadata fetched ahead and not yet asked for) and a byte budget (bytes
//! fetched ahead and not yet asked for). Plain bookkeeping, tested without a mount; the fetching
//! is [`remote`](super::remote)'s.
//!
//! An entry leaves the books when Dune asks for it (it was worth fetching), when its fetch fails,
//! or when it has waited [`AGED`] unasked (a wrong or stale hint): so wrong hints cost bandwidth
//! and never stop the prefetching for good, and the budget bounds what is fetched ahead at any
//! moment, whatever the hints say. The artifacts fetched ahead for a rule leave with the rule:
//! Dune restores every artifact of a rule it reads, and once the kernel has been warmed with
//! them (`warming`) Dune copies them without a request the daemon could count.
//!
//! A rule whose metadata the kernel was handed counts as asked for too (Dune reads it with no
//! request). Which rules may be handed is kept here as well ([`Ahead::near`]): only those named
//! by the hint of a rule Dune was seen to ask for, so a wrong hint cannot carry the handing (and
//! with it the fetching ahead) away from where Dune is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lately::Lately;
use crate::dune::layout::Entry;
use crate::sync::lock;

/// How long an entry fetched ahead is counted against the limits while Dune does not ask for it.
pub const AGED: Duration = Duration::from_secs(60);

/// How often the books are swept for what has [`AGED`] at most. While the window or the budget
/// is full, every rule a hint names asks for a slot: a sweep for each would walk every entry
/// fetched ahead under the books' lock, several times per rule Dune restores, to find what
/// ages by the minute.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many rules' hints are remembered at least, and twice that at most (each about 370 bytes:
/// up to 25 MiB in all). A mount follows the order every build records (`trail`), so over weeks
/// it would learn a hint for every rule any build asked for: the ones learnt last are kept (see
/// [`Lately`]), the others forgotten, and learnt again from the next build or a box.
const HINTS_KEPT: usize = 32_768;

/// How many rules whose hints were asked of their box are remembered; past it they are
/// forgotten (and may be asked again).
const HINT_ASKS_KEPT: usize = 100_000;

/// How many rules near Dune are remembered; past it they are forgotten (their metadata is then
/// read with a request, as it would be without hints).
const NEAR_KEPT: usize = 4_096;

/// How many artifacts of rules Dune reached are remembered while their fetches may still run;
/// past it they are forgotten (and counted against the budget until asked for or aged).
const REACHED_KEPT: usize = 100_000;

/// The limits on fetching ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rules (metadata) fetched ahead and not yet asked for, at most; 0 turns prefetching off.
    pub window: usize,
    /// Bytes fetched ahead and not yet asked for, at most.
    pub budget: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            window: 64,
            budget: 256 << 20,
        }
    }
}

/// The books of the fetches ahead.
pub struct Ahead {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Rules claimed for a fetch ahead, and when.
    rules: HashMap<Entry, Instant>,
    /// Bytes taken by each entry fetched ahead, and when it started.
    taken: HashMap<Entry, (u64, Instant)>,
    bytes: u64,
    /// What the hints (the boxes', or this mount's own record) said comes after each rule.
    next_of: Lately<Arc<[Entry]>, HINTS_KEPT>,
    /// The artifacts fetched ahead for each rule claimed.
    artifacts_of: HashMap<Entry, Vec<Entry>>,
    /// Artifacts of rules Dune has reached, whose fetches may still be running: their bytes
    /// are not fetched ahead any more.
    reached: HashSet<Entry>,
    /// Rules held here whose hint was asked of their box (it came with no fetch).
    hint_asked: HashSet<Entry>,
    /// Rules near Dune: see [`Ahead::near`].
    near: HashSet<Entry>,
    /// Rules near Dune whose metadata the kernel was handed lately, or that Dune asked for
    /// itself: not near again.
    handed: HashSet<Entry>,
    /// When the books were last swept.
    swept: Option<Instant>,
}

impl State {
    /// `rule`, near Dune, is near no more: handed, or asked for.
    fn mark_handed(&mut self, rule: Entry) {
        if self.handed.len() >= NEAR_KEPT {
            self.handed.clear();
        }
        self.handed.insert(rule);
    }

    fn forget(&mut self, entry: &Entry) -> bool {
        self.reached.remove(entry);
        self.artifacts_of.remove(entry);
        let claimed = self.rules.remove(entry).is_some();
        let taken = self.taken.remove(entry);
        if let Some((bytes, _)) = taken {
            self.bytes -= bytes;
        }
        claimed || taken.is_some()
    }

    /// Forgets what has waited too long unasked, unless the books were swept within
    /// [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.rules
            .retain(|_, since| now.duration_since(*since) < AGED);
        let mut freed = 0;
        self.taken.retain(|_, (bytes, since)| {
            let keep = now.duration_since(*since) < AGED;
            if !keep {
                freed += *bytes;
            }
            keep
        });
        self.bytes -= freed;
        let rules = &self.rules;
        self.artifacts_of.retain(|rule, _| rules.contains_key(rule));
    }
}

impl Ahead {
    /// Empty books with these limits.
    pub fn new(limits: Limits) -> Ahead {
        Ahead {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether prefetching is on at all.
    pub fn enabled(&self) -> bool {
        self.limits.window > 0
    }

    /// Claims a slot of the window for fetching `rule` ahead: false if the window is full or the
    /// rule is claimed already.
    pub fn claim_rule(&self, rule: Entry, now: Instant) -> bool {
        let mut state = lock(&self.state);
        if state.rules.contains_key(&rule) {
            return false;
        }
        if state.rules.len() >= self.limits.window {
            state.sweep(now);
            if state.rules.len() >= self.limits.window {
                return false;
            }
        }
        state.rules.insert(rule, now);
        true
    }

    /// Takes `n` more bytes of the budget for `entry`, fetched ahead: false (nothing taken) if
    /// that would pass the budget.
    pub fn take_bytes(&self, entry: Entry, n: u64, now: Instant) -> bool {
        let mut state = lock(&self.state);
        if state.reached.contains(&entry) {
            return true;
        }
        if state.bytes + n > self.limits.budget {
            state.sweep(now);
            if state.bytes + n > self.limits.budget {
                return false;
            }
        }
        state.bytes += n;
        state.taken.entry(entry).or_insert((0, now)).0 += n;
        true
    }

    /// The artifacts of rule `rule` are being fetched ahead: they leave the books with it.
    pub fn fetching_for(&self, rule: Entry, artifacts: Vec<Entry>) {
        let mut state = lock(&self.state);
        if state.rules.contains_key(&rule) {
            state.artifacts_of.insert(rule, artifacts);
        }
    }

    /// Dune asked for `entry`: it leaves the books, with the artifacts fetched ahead for it if
    /// it is a rule. True if it had been fetched ahead.
    pub fn used(&self, entry: &Entry) -> bool {
        let mut state = lock(&self.state);
        // Dune read it itself: handing it now would stand for an ask that already came.
        if state.near.remove(entry) {
            state.mark_handed(*entry);
        }
        if let Some(artifacts) = state.artifacts_of.remove(entry) {
            if state.reached.len() + artifacts.len() > REACHED_KEPT {
                state.reached.clear();
            }
            for artifact in artifacts {
                state.forget(&artifact);
                state.reached.insert(artifact);
            }
        }
        state.forget(entry)
    }

    /// A fetch ahead of `entry` failed or stopped: it leaves the books.
    pub fn release(&self, entry: &Entry) {
        lock(&self.state).forget(entry);
    }

    /// Marks `rules` near Dune: the hint of a rule Dune was seen to ask for names them, so
    /// Dune reads them next, and the kernel may be handed their metadata before it asks
    /// ([`Ahead::take_near`]). Only a rule Dune was seen to ask for makes rules near, never one
    /// handed: so the kernel is handed metadata at most one hint beyond the last rule Dune
    /// asked for, whatever the hints say.
    /// Returns those not near already, nor handed lately.
    pub fn near(&self, rules: &[Entry]) -> Vec<Entry> {
        let mut state = lock(&self.state);
        if state.near.len() + rules.len() > NEAR_KEPT {
            state.near.clear();
        }
        let state = &mut *state;
        let fresh = |rule: &&Entry| !state.handed.contains(*rule) && state.near.insert(**rule);
        rules.iter().filter(fresh).copied().collect()
    }

    /// Whether `rule` is near Dune ([`Ahead::near`]).
    pub fn is_near(&self, rule: &Entry) -> bool {
        lock(&self.state).near.contains(rule)
    }

    /// Whether `rule` is near Dune ([`Ahead::near`]); if so, it counts as handed from now on.
    pub fn take_near(&self, rule: &Entry) -> bool {
        let mut state = lock(&self.state);
        if !state.near.remove(rule) {
            return false;
        }
        state.mark_handed(*rule);
        true
    }

    /// Remembers what a hint says comes after `rule`: a box's, or the order this mount
    /// recorded itself.
    pub fn learn(&self, rule: Entry, next: Vec<Entry>) {
        lock(&self.state).next_of.insert(rule, next.into());
    }

    /// Whether the hint of `rule`, held here, is yet to be asked of its box: true once (a
    /// bounded memory).
    pub fn first_hint_ask(&self, rule: Entry) -> bool {
        let mut state = lock(&self.state);
        if state.hint_asked.len() >= HINT_ASKS_KEPT {
            state.hint_asked.clear();
        }
        state.hint_asked.insert(rule)
    }

    /// What a hint (a box's, or this mount's own record) said comes after `rule`, if one did.
    pub fn next_of(&self, rule: &Entry) -> Option<Arc<[Entry]>> {
        lock(&self.state).next_of.get(rule).cloned()
    }

    /// Bytes fetched ahead and not yet asked for.
    pub fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// Rules fetched ahead and not yet asked for.
    pub fn rules(&self) -> usize {
        lock(&self.state).rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn rule(n: u8) -> Entry {
        Entry {
            kind: EntryKind::Meta(MetaVersion::V5),
            key: format!("{n:02x}{}", "3".repeat(30)).parse().unwrap(),
        }
    }

    fn books(window: usize, budget: u64) -> Ahead {
        Ahead::new(Limits { window, budget })
    }

    #[test]
    fn the_window_bounds_rules_fetched_ahead_until_dune_asks_for_them() {
        let ahead = books(2, 1 << 20);
        let now = Instant::now();
        assert!(ahead.claim_rule(rule(1), now));
        assert!(!ahead.claim_rule(rule(1), now), "claimed twice");
        assert!(ahead.claim_rule(rule(2), now));
        assert!(!ahead.claim_rule(rule(3), now), "past the window");
        assert!(ahead.used(&rule(1)));
        assert!(!ahead.used(&rule(1)), "used twice");
        assert!(ahead.claim_rule(rule(3), now));
        ahead.release(&rule(2));
        assert_eq!(ahead.rules(), 1);
        assert!(!books(0, 1).enabled());
    }

    #[test]
    fn the_budget_bounds_bytes_fetched_ahead() {
        let ahead = books(8, 1000);
        let now = Instant::now();
        assert!(ahead.take_bytes(rule(1), 600, now));
        assert!(ahead.take_bytes(rule(2), 400, now));
        assert!(!ahead.take_bytes(rule(3), 1, now), "past the budget");
        assert_eq!(ahead.bytes(), 1000);
        ahead.used(&rule(1));
        assert_eq!(ahead.bytes(), 400);
        assert!(ahead.take_bytes(rule(3), 600, now));
        ahead.release(&rule(3));
        assert_eq!(ahead.bytes(), 400);
    }

    fn artifact(n: u8) -> Entry {
        Entry {
            kind: crate::dune::layout::EntryKind::File,
            key: format!("{n:02x}{}", "a".repeat(30)).parse().unwrap(),
        }
    }

    #[test]
    fn a_rule_dune_reaches_frees_the_bytes_of_its_artifacts() {
        let ahead = books(8, 1000);
        let now = Instant::now();
        assert!(ahead.claim_rule(rule(1), now));
        ahead.fetching_for(rule(1), vec![artifact(1), artifact(2)]);
        assert!(ahead.take_bytes(artifact(1), 600, now));
        assert!(ahead.take_bytes(rule(2), 300, now));
        assert!(ahead.used(&rule(1)));
        assert_eq!(ahead.bytes(), 300, "artifact 1 left with its rule");
        assert!(
            ahead.take_bytes(artifact(2), 900, now),
            "an artifact of a rule Dune reached is not ahead any more"
        );
        assert_eq!(ahead.bytes(), 300);
        assert!(!ahead.used(&artifact(1)), "gone already");
        ahead.fetching_for(rule(3), vec![artifact(3)]);
        assert!(ahead.take_bytes(artifact(3), 700, now));
        assert!(
            !ahead.used(&rule(3)) && ahead.bytes() == 1000,
            "a rule never claimed takes no artifacts with it"
        );
    }

    #[test]
    fn what_waits_unasked_too_long_frees_its_share() {
        let ahead = books(1, 100);
        let then = Instant::now();
        let later = then + AGED + Duration::from_secs(1);
        assert!(ahead.claim_rule(rule(1), then));
        assert!(ahead.take_bytes(rule(1), 100, then));
        assert!(!ahead.claim_rule(rule(2), then));
        assert!(!ahead.take_bytes(rule(2), 1, then));
        assert!(
            ahead.claim_rule(rule(2), later),
            "a wrong hint does not block for good"
        );
        assert!(ahead.take_bytes(rule(2), 100, later));
        assert_eq!(ahead.bytes(), 100);
    }

    #[test]
    fn a_full_window_is_swept_at_most_once_a_second() {
        let ahead = books(1, 100);
        let then = Instant::now();
        assert!(ahead.claim_rule(rule(1), then));
        let almost = then + AGED - SWEEP_EVERY / 2;
        assert!(!ahead.claim_rule(rule(2), almost), "full, nothing aged yet");
        assert!(
            !ahead.claim_rule(rule(2), then + AGED),
            "aged, but swept half a second ago"
        );
        assert!(
            ahead.claim_rule(rule(2), almost + SWEEP_EVERY),
            "swept again"
        );
        assert_eq!(ahead.rules(), 1);
    }

    #[test]
    fn the_hint_of_a_rule_held_here_is_asked_once() {
        let ahead = books(1, 1);
        assert!(ahead.first_hint_ask(rule(1)));
        assert!(!ahead.first_hint_ask(rule(1)));
        assert!(ahead.first_hint_ask(rule(2)));
    }

    #[test]
    fn hints_are_remembered_per_rule() {
        let ahead = books(1, 1);
        assert!(ahead.next_of(&rule(1)).is_none());
        ahead.learn(rule(1), vec![rule(2), rule(3)]);
        assert_eq!(&*ahead.next_of(&rule(1)).unwrap(), &[rule(2), rule(3)]);
    }

    #[test]
    fn rules_near_dune_are_taken_once_and_kept_bounded() {
        let ahead = books(8, 1000);
        assert_eq!(ahead.near(&[rule(1), rule(2)]), vec![rule(1), rule(2)]);
        assert_eq!(
            ahead.near(&[rule(2), rule(3)]),
            vec![rule(3)],
            "near already"
        );
        assert!(ahead.is_near(&rule(1)) && ahead.take_near(&rule(1)));
        assert!(!ahead.is_near(&rule(1)), "taken");
        assert!(!ahead.take_near(&rule(1)), "taken twice");
        assert!(!ahead.take_near(&rule(4)), "never near");
        assert_eq!(ahead.near(&[rule(1)]), vec![], "handed lately");
        ahead.near(&[rule(6)]);
        ahead.used(&rule(6));
        assert!(!ahead.take_near(&rule(6)), "Dune asked for it itself");
        assert_eq!(ahead.near(&[rule(6)]), vec![], "asked for lately");
        let many: Vec<Entry> = (0..NEAR_KEPT as u32)
            .map(|n| Entry {
                kind: EntryKind::Meta(MetaVersion::V5),
                key: format!("{n:032x}").parse().unwrap(),
            })
            .collect();
        ahead.near(&many);
        ahead.near(&[rule(5)]);
        assert!(lock(&ahead.state).near.len() <= NEAR_KEPT, "bounded");
        assert!(ahead.take_near(&rule(5)), "the latest are kept");
        for rule in &many {
            ahead.near(&[*rule]);
            ahead.take_near(rule);
        }
        assert!(lock(&ahead.state).handed.len() <= NEAR_KEPT, "bounded");
    }
}
