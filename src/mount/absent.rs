//! The short-lived memory of "the owning box does not hold this key": a build probing many
//! missing keys costs one request per key, not one per probe. Bounded ([`CAPACITY`]) and O(1)
//! per insert and look-up: the oldest memories go first, from a queue in insertion order, never
//! by scanning them all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::dune::layout::Entry;

/// How many absent keys are remembered at most (about 50 bytes each).
pub const CAPACITY: usize = 100_000;

/// Keys known absent, and since when.
pub struct Absent {
    ttl: Duration,
    since: HashMap<Entry, Instant>,
    /// The same keys in insertion order (a key remembered again is queued again; the older
    /// copy is skipped when it comes out).
    order: VecDeque<(Entry, Instant)>,
}

impl Absent {
    /// An empty memory whose items hold for `ttl`.
    pub fn new(ttl: Duration) -> Absent {
        Absent {
            ttl,
            since: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers that `entry` was found absent at `now`.
    pub fn insert(&mut self, entry: Entry, now: Instant) {
        self.since.insert(entry, now);
        self.order.push_back((entry, now));
        // Each insert drops at most two old items: amortised O(1), and the queue stays within
        // twice the map.
        for _ in 0..2 {
            let expired = self
                .order
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) >= self.ttl);
            if !expired && self.since.len() <= CAPACITY && self.order.len() <= 2 * CAPACITY {
                break;
            }
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.since.get(&old) == Some(&at) {
                self.since.remove(&old);
            }
        }
    }

    /// Whether `entry` was found absent less than the TTL before `now`.
    pub fn holds(&mut self, entry: &Entry, now: Instant) -> bool {
        match self.since.get(entry) {
            Some(at) if now.duration_since(*at) < self.ttl => true,
            Some(_) => {
                self.since.remove(entry);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::EntryKind;

    fn entry(n: u32) -> Entry {
        Entry {
            kind: EntryKind::File,
            key: format!("{n:08x}{}", "0".repeat(24)).parse().unwrap(),
        }
    }

    #[test]
    fn absent_keys_are_remembered_for_the_ttl() {
        let mut absent = Absent::new(Duration::from_secs(10));
        let t0 = Instant::now();
        absent.insert(entry(1), t0);
        assert!(absent.holds(&entry(1), t0 + Duration::from_secs(9)));
        assert!(!absent.holds(&entry(2), t0));
        assert!(!absent.holds(&entry(1), t0 + Duration::from_secs(10)));
        // Remembered again: the fresh time counts, not the first.
        absent.insert(entry(3), t0);
        absent.insert(entry(3), t0 + Duration::from_secs(5));
        assert!(absent.holds(&entry(3), t0 + Duration::from_secs(12)));
    }

    #[test]
    fn the_memory_stays_bounded_without_scans() {
        let mut absent = Absent::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        for n in 0..(CAPACITY as u32 + 1000) {
            absent.insert(entry(n), t0);
        }
        assert!(absent.since.len() <= CAPACITY + 1, "{}", absent.since.len());
        assert!(
            absent.holds(&entry(CAPACITY as u32 + 999), t0),
            "the newest are kept"
        );
        assert!(!absent.holds(&entry(0), t0), "the oldest went first");
        // Expired ones leave as new ones come, whatever the count.
        let later = t0 + Duration::from_secs(3601);
        for n in 0..10 {
            absent.insert(entry(1_000_000 + n), later);
        }
        assert!(absent.order.len() < 2 * CAPACITY + 1000);
    }
}
