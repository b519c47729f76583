//! Which box owns which key: key ranges, the nodes that claim them, and the table they make.
//!
//! Apart because ownership is what every party consults for every key, long after the text is
//! forgotten: the table is checked once, when the config is read (every key owned exactly
//! once), and then answers [`RangeTable::owner_index`] with one binary search.

use std::fmt;

use super::error::ConfigErrorKind;
use super::node_url::NodeUrl;
use super::s3_bucket::S3Bucket;
use crate::cluster::sexp::Pos;
use crate::dune::key::Key;

/// An inclusive interval of keys, `first..=last`, never empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyRange {
    pub(super) first: u128,
    pub(super) last: u128,
}

impl KeyRange {
    /// Every key.
    pub const ALL: KeyRange = KeyRange {
        first: 0,
        last: u128::MAX,
    };

    /// The lowest key in the range.
    pub fn first(&self) -> Key {
        Key::from_bytes(self.first.to_be_bytes())
    }

    /// The highest key in the range (inclusive).
    pub fn last(&self) -> Key {
        Key::from_bytes(self.last.to_be_bytes())
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &Key) -> bool {
        (self.first..=self.last).contains(&key_value(key))
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", self.first(), self.last())
    }
}

/// The key as the number the range table orders by: its 16 bytes, big-endian, so numeric order
/// is the order of the hex spelling.
fn key_value(key: &Key) -> u128 {
    u128::from_be_bytes(*key.as_bytes())
}

/// One cache box and the keys it owns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Node {
    pub(super) url: NodeUrl,
    pub(super) ranges: Vec<KeyRange>,
    /// The bucket, if the node is an S3 bucket rather than a box (its `url` then names the
    /// bucket and prefix).
    pub(super) s3: Option<S3Bucket>,
}

impl Node {
    /// The box's base URL.
    pub fn url(&self) -> &NodeUrl {
        &self.url
    }

    /// The ranges the box owns, in the order the config lists them (at least one).
    pub fn ranges(&self) -> &[KeyRange] {
        &self.ranges
    }

    /// The bucket, if the node is an S3 bucket rather than a cache box.
    pub fn s3(&self) -> Option<&S3Bucket> {
        self.s3.as_ref()
    }

    /// Whether the box owns `key`: what a box checks before answering 421.
    pub fn owns(&self, key: &Key) -> bool {
        self.ranges.iter().any(|r| r.contains(key))
    }
}

/// One range as read, kept with where it came from until the partition is checked.
pub(super) struct Claim {
    pub(super) range: KeyRange,
    pub(super) node: usize,
    pub(super) pos: Pos,
}

/// The routing table: the partition the ranges make of the key space, as interval starts in
/// ascending order, each with its owner.
#[derive(Clone, Debug)]
pub(super) struct RangeTable {
    /// The first key of each interval of the partition, ascending; `starts[0]` is 0.
    starts: Vec<u128>,
    /// `owners[i]` is the index in the nodes of the box owning the interval at `starts[i]`.
    owners: Vec<usize>,
}

impl RangeTable {
    /// Every key owned by the first node.
    pub(super) fn single() -> RangeTable {
        RangeTable {
            starts: vec![0],
            owners: vec![0],
        }
    }

    /// The index of the node that owns `key`. A binary search: the table covers every key.
    pub(super) fn owner_index(&self, key: &Key) -> usize {
        self.owner_at(key_value(key))
    }

    /// The index of the node that owns the key of value `value`.
    pub(super) fn owner_at(&self, value: u128) -> usize {
        // `starts[0]` is 0, so at least one start is <= any key.
        let interval = self.starts.partition_point(|&start| start <= value) - 1;
        self.owners[interval]
    }

    /// The first key of each interval, ascending (the first is 0).
    pub(super) fn starts(&self) -> &[u128] {
        &self.starts
    }

    /// Checks that the claims cover every key exactly once, and builds the table; `nodes` are
    /// the claims' nodes, named when two overlap.
    pub(super) fn partition(
        nodes: &[Node],
        mut claims: Vec<Claim>,
    ) -> Result<RangeTable, ConfigErrorKind> {
        claims.sort_by_key(|c| (c.range.first, c.range.last));
        let key = |v: u128| Key::from_bytes(v.to_be_bytes());
        let mut starts = Vec::with_capacity(claims.len());
        let mut owners = Vec::with_capacity(claims.len());
        // The lowest key not owned yet; `None` once every key up to the top is owned.
        let mut next = Some(0u128);
        for (i, claim) in claims.iter().enumerate() {
            let range = claim.range;
            match next {
                Some(n) if range.first > n => {
                    return Err(ConfigErrorKind::Gap {
                        first: key(n),
                        last: key(range.first - 1),
                    })
                }
                Some(n) if range.first == n => {}
                // The claim starts below `next`, so it is not the first one (`next` starts at 0)
                // and the claim before it, which owns up to `next - 1`, overlaps it.
                _ => {
                    let previous = &claims[i - 1];
                    return Err(ConfigErrorKind::Overlap {
                        first: key(range.first),
                        last: key(range.last.min(previous.range.last)),
                        url_a: nodes[previous.node].url.clone(),
                        pos_a: previous.pos,
                        url_b: nodes[claim.node].url.clone(),
                        pos_b: claim.pos,
                    });
                }
            }
            starts.push(range.first);
            owners.push(claim.node);
            next = range.last.checked_add(1);
        }
        match next {
            Some(n) => Err(ConfigErrorKind::Gap {
                first: key(n),
                last: key(u128::MAX),
            }),
            None => Ok(RangeTable { starts, owners }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::tests::{err, key, owner_url, url, HEADER};
    use crate::cluster::config::{ClusterConfig, ConfigErrorKind};

    use proptest::prelude::*;

    #[test]
    fn three_nodes_split_at_exact_boundaries() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             ; listed out of key order on purpose
             (node (hostname http://two:8080) (range 0xc000 0xffff))
             (node (hostname http://zero:8080) (range 0x0000 0x7fff))
             (node (hostname https://one.example/cache/) (range 0x8000 0xbfff))"
        ))
        .unwrap();
        let cases = [
            ("00000000000000000000000000000000", "http://zero:8080"),
            ("7fffffffffffffffffffffffffffffff", "http://zero:8080"),
            (
                "80000000000000000000000000000000",
                "https://one.example/cache",
            ),
            (
                "bfffffffffffffffffffffffffffffff",
                "https://one.example/cache",
            ),
            ("c0000000000000000000000000000000", "http://two:8080"),
            ("ffffffffffffffffffffffffffffffff", "http://two:8080"),
        ];
        for (k, want) in cases {
            assert_eq!(owner_url(&config, k), want, "{k}");
        }
        let one = config
            .node_by_url(&url("HTTPS://One.Example/cache"))
            .unwrap();
        assert!(one.owns(&key("80000000000000000000000000000000")));
        assert!(!one.owns(&key("7fffffffffffffffffffffffffffffff")));
        assert_eq!(config.node_by_url(&url("http://three:8080")), None);
    }

    #[test]
    fn a_node_may_own_several_ranges() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (node (hostname http://a) (range 0x00 0x3f) (range 0x80 0xbf))
             (node (hostname http://b) (range 0x40 0x7f) (range 0xc0 0xff))"
        ))
        .unwrap();
        let a = config.node_by_url(&url("http://a")).unwrap();
        assert_eq!(a.ranges().len(), 2);
        for (k, want) in [
            ("3fffffffffffffffffffffffffffffff", "http://a"),
            ("40000000000000000000000000000000", "http://b"),
            ("80000000000000000000000000000000", "http://a"),
            ("c0000000000000000000000000000000", "http://b"),
        ] {
            assert_eq!(owner_url(&config, k), want, "{k}");
        }
    }

    #[test]
    fn gaps_are_named() {
        let cases = [
            (
                "(node (hostname http://a) (range 0x1 0xf))",
                "no node owns keys 00000000000000000000000000000000 to 0fffffffffffffffffffffffffffffff",
            ),
            (
                "(node (hostname http://a) (range 0x0 0x7)) (node (hostname http://b) (range 0x9 0xf))",
                "no node owns keys 80000000000000000000000000000000 to 8fffffffffffffffffffffffffffffff",
            ),
            (
                "(node (hostname http://a) (range 0x0 0xfe))",
                "no node owns keys ff000000000000000000000000000000 to ffffffffffffffffffffffffffffffff",
            ),
            (
                "",
                "no node owns keys 00000000000000000000000000000000 to ffffffffffffffffffffffffffffffff",
            ),
        ];
        for (nodes, want) in cases {
            let e = err(&format!("{HEADER}{nodes}"));
            assert!(matches!(e, ConfigErrorKind::Gap { .. }), "{nodes}: {e:?}");
            assert_eq!(e.to_string(), want, "{nodes}");
        }
    }

    #[test]
    fn overlaps_name_both_nodes_and_the_keys() {
        let e = err(&format!(
            "{HEADER}(node (hostname http://a) (range 0x0 0x8))\n(node (hostname http://b) (range 0x8 0xf))"
        ));
        assert_eq!(
            e.to_string(),
            "keys 80000000000000000000000000000000 to 8fffffffffffffffffffffffffffffff are owned \
             twice: by http://a (range at 2:27) and by http://b (range at 3:27)"
        );
        // A range nested inside another, and a range repeated within one node.
        let e = err(&format!(
            "{HEADER}(node (hostname http://a) (range 0 f))(node (hostname http://b) (range 4 5))"
        ));
        assert!(
            matches!(&e, ConfigErrorKind::Overlap { first, last, url_b, .. }
                if *first == key("40000000000000000000000000000000")
                && *last == key("5fffffffffffffffffffffffffffffff")
                && url_b.as_str() == "http://b"),
            "{e:?}"
        );
        let e = err(&format!(
            "{HEADER}(node (hostname http://a) (range 0 f) (range 0 f))"
        ));
        assert!(
            matches!(&e, ConfigErrorKind::Overlap { url_a, url_b, .. } if url_a == url_b),
            "{e:?}"
        );
    }

    /// A random partition of the key space: sorted distinct cut points, each piece given to one
    /// of up to `nodes` nodes, written with bounds of varying lengths where the cut allows it.
    fn partition_text(cuts: &[u128], owners: &[usize]) -> String {
        let mut text = String::from(HEADER);
        let node_count = owners.iter().max().map_or(0, |m| m + 1);
        let mut starts = vec![0u128];
        starts.extend(cuts);
        for node in 0..node_count {
            text.push_str(&format!("(node (hostname http://n{node})"));
            for (i, &start) in starts.iter().enumerate() {
                if owners[i] != node {
                    continue;
                }
                let end = starts.get(i + 1).map_or(u128::MAX, |next| next - 1);
                text.push_str(&format!(
                    " (range 0x{} {})",
                    shortest(start, '0'),
                    shortest(end, 'f')
                ));
            }
            text.push_str(")\n");
        }
        text
    }

    /// The shortest hex prefix that pads back to `value` with `pad`.
    fn shortest(value: u128, pad: char) -> String {
        let full = format!("{value:032x}");
        let trimmed = full.trim_end_matches(pad);
        if trimmed.is_empty() {
            pad.to_string()
        } else {
            trimmed.to_string()
        }
    }

    fn linear_owner(config: &ClusterConfig, k: &Key) -> Vec<usize> {
        (0..config.nodes().len())
            .filter(|&i| config.nodes()[i].owns(k))
            .collect()
    }

    /// Cut points that are often round (so short bounds get exercised) and sometimes arbitrary.
    fn cut_strategy() -> impl Strategy<Value = u128> {
        prop_oneof![
            (1u128..16).prop_map(|v| v << 124),
            (1u128..65536).prop_map(|v| v << 112),
            1u128..=u128::MAX,
        ]
    }

    proptest! {
        #[test]
        fn every_key_has_exactly_one_owner(
            cuts in proptest::collection::btree_set(cut_strategy(), 0..12),
            owner_seed in proptest::collection::vec(0usize..5, 13),
            keys in proptest::collection::vec(any::<u128>(), 1..64),
        ) {
            let cuts: Vec<u128> = cuts.into_iter().collect();
            let pieces = cuts.len() + 1;
            // Every node owns at least one piece: renumber the owners densely.
            let mut owners: Vec<usize> = owner_seed[..pieces].to_vec();
            let mut used: Vec<usize> = owners.clone();
            used.sort_unstable();
            used.dedup();
            for o in &mut owners {
                *o = used.binary_search(o).unwrap();
            }
            let config = ClusterConfig::parse(&partition_text(&cuts, &owners)).unwrap();
            let mut probes: Vec<u128> = keys;
            for &c in &cuts {
                probes.extend([c - 1, c]);
            }
            probes.extend([0, u128::MAX]);
            for value in probes {
                let k = Key::from_bytes(value.to_be_bytes());
                let linear = linear_owner(&config, &k);
                prop_assert_eq!(linear.len(), 1, "key {}", k);
                prop_assert_eq!(config.owner(&k), &config.nodes()[linear[0]]);
            }
        }

        #[test]
        fn removing_a_range_leaves_a_gap_adding_one_makes_an_overlap(
            cuts in proptest::collection::btree_set(cut_strategy(), 1..8),
            victim in any::<proptest::sample::Index>(),
        ) {
            let cuts: Vec<u128> = cuts.into_iter().collect();
            let owners: Vec<usize> = (0..=cuts.len()).collect();
            let text = partition_text(&cuts, &owners);
            let lines: Vec<&str> = text.lines().collect();
            // Line 0 is the lang form; each later line is one node with one range.
            let drop = 1 + victim.index(lines.len() - 1);
            let without: Vec<&str> = lines.iter().enumerate()
                .filter(|&(i, _)| i != drop).map(|(_, l)| *l).collect();
            let e = ClusterConfig::parse(&without.join("\n")).unwrap_err();
            prop_assert!(matches!(e.kind(), ConfigErrorKind::Gap { .. }), "{}", e);
            let with_extra = format!("{text}(node (hostname http://extra) (range 0 0))");
            let e = ClusterConfig::parse(&with_extra).unwrap_err();
            prop_assert!(matches!(e.kind(), ConfigErrorKind::Overlap { .. }), "{}", e);
        }
    }
}
