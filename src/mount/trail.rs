//! The order in which Dune asks for rules, recorded to publish as hints ([`crate::hints`]): for
//! each rule, the next [`MAX_NEXT`] distinct rules Dune looked up or stored after it. Plain
//! bookkeeping, tested without a mount; [`remote`](super::remote) publishes what it yields, and
//! follows it itself.
//!
//! The mount follows every rule's recorded order, whether or not it publishes it: the next build
//! on this machine warms the kernel by it ([`warming`](super::warming)). Without it a warm
//! machine would follow only the hints of rules it fetched after a box had them, and a machine
//! that built a revision first, or whose hints the box already had when it fetched, would learn
//! none: its kernel, whose pages the host reclaims between builds, would go unwarmed.
//!
//! Only rules this mount stored or fetched get a hint published: a rule held here already was
//! restored without the network, and a warm machine publishing every build's order would only
//! load the boxes. Nor is a hint published again when the box's own hint for the rule already
//! names the same rules (in any order: Dune's parallel jobs shuffle neighbours from one build to
//! the next), so a machine that restored a build with good hints sends nothing back.
//!
//! Some rules are read with no request the mount could see: the kernel was handed their metadata
//! because a hint said Dune reads them next ([`Asked::Handed`]). Where Dune read them in the order
//! recorded is not known, so an order that includes one is neither published nor followed: what
//! the boxes know is only ever what some mount saw Dune do, and a wrong hint cannot confirm
//! itself.

use std::collections::VecDeque;

use super::lately::Lately;
use crate::dune::layout::Entry;
use crate::hints::MAX_NEXT;

/// How many rules' box hints are remembered for comparison at least, and twice that at most
/// (about 370 bytes each: up to 25 MiB).
const HEARD_KEPT: usize = 32_768;

/// The recent rules and what the boxes said of them.
#[derive(Default)]
pub struct Trail {
    /// The last rules asked for, oldest first, and how: at most one more than a hint names.
    recent: VecDeque<(Entry, Asked)>,
    /// The boxes' hints, sorted, by rule.
    heard: Lately<Vec<Entry>, HEARD_KEPT>,
}

impl Trail {
    /// Notes what a box's hint says comes after `rule`.
    pub fn heard(&mut self, rule: Entry, mut next: Vec<Entry>) {
        next.sort_unstable();
        self.heard.insert(rule, next);
    }

    /// Records that Dune asked for `rule`, or that the kernel was handed it. Returns the oldest
    /// recent rule and the rules that came after it, once there are [`MAX_NEXT`] of them,
    /// unless one of them was handed.
    pub fn record(&mut self, rule: Entry, asked: Asked) -> Option<Followed> {
        if self.recent.iter().any(|(recent, _)| *recent == rule) {
            return None;
        }
        self.recent.push_back((rule, asked));
        if self.recent.len() <= MAX_NEXT {
            return None;
        }
        let (oldest, asked) = self.recent.pop_front()?;
        let handed = |asked: &Asked| *asked == Asked::Handed;
        if handed(&asked) || self.recent.iter().any(|(_, asked)| handed(asked)) {
            return None;
        }
        let next: Vec<Entry> = self.recent.iter().map(|(rule, _)| *rule).collect();
        let publish = asked == Asked::Networked && {
            let mut sorted = next.clone();
            sorted.sort_unstable();
            self.heard.get(&oldest) != Some(&sorted)
        };
        Some(Followed {
            rule: oldest,
            next,
            publish,
        })
    }
}

/// How a rule came to be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Dune asked for it, and this mount fetched or stored it.
    Networked,
    /// Dune asked for it, and it was held here already.
    Held,
    /// The kernel was handed its metadata before Dune asked: if Dune read it, it did so
    /// without a request.
    Handed,
}

/// A rule and the rules Dune asked for after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Followed {
    /// The rule.
    pub rule: Entry,
    /// The [`MAX_NEXT`] distinct rules asked for after it, in order.
    pub next: Vec<Entry>,
    /// Whether to publish it as the rule's hint: the rule was networked and its box does not
    /// already say the same.
    pub publish: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn rule(n: u8) -> Entry {
        Entry {
            kind: EntryKind::Meta(MetaVersion::V4),
            key: format!("{n:02x}{}", "9".repeat(30)).parse().unwrap(),
        }
    }

    #[test]
    fn each_rule_gets_the_rules_that_came_next() {
        let mut trail = Trail::default();
        let mut followed = Vec::new();
        for n in 0..(MAX_NEXT as u8 + 3) {
            followed.extend(trail.record(rule(n), Asked::Networked));
            // Asked for again while recent: nothing new.
            assert_eq!(trail.record(rule(n), Asked::Networked), None);
        }
        let firsts: Vec<Entry> = followed.iter().map(|f| f.rule).collect();
        assert_eq!(firsts, vec![rule(0), rule(1), rule(2)]);
        assert!(followed.iter().all(|f| f.publish));
        let want: Vec<Entry> = (1..=MAX_NEXT as u8).map(rule).collect();
        assert_eq!(followed[0].next, want);
    }

    #[test]
    fn rules_held_here_are_followed_but_get_no_hint_published() {
        let mut trail = Trail::default();
        let followed: Vec<Followed> = (0..(MAX_NEXT as u8 * 2))
            .filter_map(|n| {
                let asked = if n % 2 == 0 {
                    Asked::Networked
                } else {
                    Asked::Held
                };
                trail.record(rule(n), asked)
            })
            .collect();
        assert_eq!(followed.len(), MAX_NEXT);
        for f in followed {
            assert_eq!(f.publish, f.rule.key.as_bytes()[0] % 2 == 0, "{}", f.rule);
            assert_eq!(
                f.next.len(),
                MAX_NEXT,
                "its successors include rules held here"
            );
        }
    }

    #[test]
    fn a_hint_the_box_already_has_is_not_published_again() {
        let mut trail = Trail::default();
        let mut heard: Vec<Entry> = (1..=MAX_NEXT as u8).map(rule).collect();
        heard.reverse();
        trail.heard(rule(0), heard);
        trail.heard(rule(1), vec![rule(2)]);
        let mut followed = Vec::new();
        for n in 0..(MAX_NEXT as u8 + 2) {
            followed.extend(trail.record(rule(n), Asked::Networked));
        }
        let published: Vec<Entry> = followed
            .iter()
            .filter(|f| f.publish)
            .map(|f| f.rule)
            .collect();
        assert_eq!(
            published,
            vec![rule(1)],
            "only rule 1, whose box hint differs"
        );
        assert_eq!(followed.len(), 2, "both are followed here");
    }

    #[test]
    fn an_order_that_includes_a_rule_handed_ahead_is_neither_published_nor_followed() {
        let mut trail = Trail::default();
        let handed = MAX_NEXT as u8 + 2;
        let followed: Vec<Entry> = (0..(MAX_NEXT as u8 * 3))
            .filter_map(|n| {
                let asked = if n == handed {
                    Asked::Handed
                } else {
                    Asked::Networked
                };
                trail.record(rule(n), asked)
            })
            .map(|f| f.rule)
            .collect();
        // Rule n is followed by rules n+1 ..= n+MAX_NEXT: those whose order includes the
        // handed rule, and the handed rule's own, are left out.
        let want: Vec<Entry> = (0..(MAX_NEXT as u8 * 2))
            .filter(|n| !(handed - MAX_NEXT as u8..=handed).contains(n))
            .map(rule)
            .collect();
        assert_eq!(followed, want);
    }
}
