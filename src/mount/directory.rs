//! What a directory of the layout lists, composed from the store's and the boxes' answers: plain
//! functions, tested without a mount.
//!
//! A listing shows what any machine of the team stored: the union of the local store and every
//! box that owns keys there. An entry held locally is listed as such (its attributes come from
//! the store file); one only a box holds is listed with what the box said (its size and
//! executable bit), so the lookups that follow a listing need no request of their own.

use std::collections::{BTreeMap, BTreeSet};

use super::inodes::RemoteAttr;
use crate::cluster::client::ListedEntry;
use crate::dune::key::{Key, Shard};

/// A shard's keys: the store's (`None`: held locally) and the boxes' (with what the box said),
/// each key once, the store's copy first, in key order.
pub fn shard_keys(local: Vec<Key>, listed: Vec<ListedEntry>) -> BTreeMap<Key, Option<RemoteAttr>> {
    let mut keys: BTreeMap<Key, Option<RemoteAttr>> =
        local.into_iter().map(|key| (key, None)).collect();
    for listed in listed {
        keys.entry(listed.key).or_insert(Some(RemoteAttr {
            size: listed.size,
            executable: listed.executable,
        }));
    }
    keys
}

/// A kind's shards: those holding entries in the store or on any box, each once, in order.
/// (Every shard can be looked up; only non-empty ones are listed, as in a real cache.)
pub fn kind_shards(local: Vec<Shard>, listed: Vec<Shard>) -> BTreeSet<Shard> {
    local.into_iter().chain(listed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(first: u8) -> Key {
        format!("{first:02x}{}", "0".repeat(30)).parse().unwrap()
    }

    fn listed(first: u8, size: u64, executable: bool) -> ListedEntry {
        ListedEntry {
            key: key(first),
            size,
            executable,
        }
    }

    #[test]
    fn a_shard_lists_the_union_with_the_local_copy_first() {
        let keys = shard_keys(
            vec![key(3), key(1)],
            vec![
                listed(1, 10, true),
                listed(2, 20, false),
                listed(2, 21, true),
            ],
        );
        let shown: Vec<_> = keys.into_iter().collect();
        assert_eq!(
            shown,
            vec![
                (key(1), None),
                (
                    key(2),
                    Some(RemoteAttr {
                        size: 20,
                        executable: false
                    })
                ),
                (key(3), None),
            ]
        );
        assert!(shard_keys(Vec::new(), Vec::new()).is_empty());
    }

    #[test]
    fn a_kind_lists_each_non_empty_shard_once() {
        let s = |n: u8| key(n).shard();
        let shards = kind_shards(vec![s(5), s(1)], vec![s(1), s(9)]);
        assert_eq!(
            shards.into_iter().collect::<Vec<_>>(),
            vec![s(1), s(5), s(9)]
        );
    }
}
