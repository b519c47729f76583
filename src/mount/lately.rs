//! What was learnt of rules lately, in bounded memory for a mount that runs for weeks: two
//! generations of at most `KEPT` rules each. When the newer is full it becomes the older, and
//! the older is dropped, so the `KEPT` rules learnt last are always known and at most twice
//! that are held. (Clearing everything at a bound, the simpler way, forgets what the build
//! under way learnt a moment ago.)

use std::collections::HashMap;

use crate::dune::layout::Entry;

/// What was learnt of each of the rules learnt last (see the module's docs).
pub struct Lately<V, const KEPT: usize> {
    newer: HashMap<Entry, V>,
    older: HashMap<Entry, V>,
}

impl<V, const KEPT: usize> Default for Lately<V, KEPT> {
    fn default() -> Self {
        Lately {
            newer: HashMap::new(),
            older: HashMap::new(),
        }
    }
}

impl<V, const KEPT: usize> Lately<V, KEPT> {
    /// Learns `value` of `rule`, replacing what was learnt of it before.
    pub fn insert(&mut self, rule: Entry, value: V) {
        if self.newer.len() >= KEPT && !self.newer.contains_key(&rule) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.older.remove(&rule);
        self.newer.insert(rule, value);
    }

    /// What was learnt of `rule` last, if it is still known.
    pub fn get(&self, rule: &Entry) -> Option<&V> {
        self.newer.get(rule).or_else(|| self.older.get(rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn held<V, const KEPT: usize>(lately: &Lately<V, KEPT>) -> usize {
        lately.newer.len() + lately.older.len()
    }

    fn rule(n: usize) -> Entry {
        Entry {
            kind: EntryKind::Meta(MetaVersion::V5),
            key: format!("{n:032x}").parse().unwrap(),
        }
    }

    #[test]
    fn the_rules_learnt_last_are_kept_and_the_oldest_forgotten() {
        let mut lately = Lately::<usize, 4>::default();
        assert_eq!(held(&lately), 0);
        for n in 0..=4 {
            lately.insert(rule(n), n);
        }
        // The first generation filled and is kept whole as the older one.
        assert_eq!(lately.get(&rule(0)), Some(&0));
        for n in 5..=8 {
            lately.insert(rule(n), n);
        }
        assert_eq!(lately.get(&rule(0)), None, "the oldest is forgotten");
        for n in 4..=8 {
            assert_eq!(lately.get(&rule(n)), Some(&n));
        }
        assert!(held(&lately) <= 8);
    }

    #[test]
    fn learning_a_rule_again_replaces_what_was_learnt_of_it() {
        let mut lately = Lately::<&str, 2>::default();
        lately.insert(rule(1), "first");
        lately.insert(rule(2), "second");
        lately.insert(rule(3), "third"); // rules 1 and 2 are the older generation now
        lately.insert(rule(1), "again");
        assert_eq!(lately.get(&rule(1)), Some(&"again"));
        assert_eq!(held(&lately), 3, "rule 1 is held once");
    }
}
