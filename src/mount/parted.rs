//! A hash map from inode numbers, in parts that each grow, shrink and are rebuilt on their own.
//!
//! The inode table holds up to a few hundred thousand numbers, and the kernel's lookups and
//! forgets make it churn all the time. One hash map of that size costs memory three ways:
//! it doubles in one step (holding the old and the new array at once, tens of MB); it doubles
//! again, for nothing, when the marks that removals leave behind fill it (the hash map grows
//! instead of cleaning up in place as soon as more than half of it is in use); and once such an
//! array was freed, the C allocator keeps later ones of that size in its own heaps and does not
//! give their memory back. In [`PARTS`] parts, each step moves a part (a few hundred KB); a
//! part filled by removal marks is rebuilt at the size its numbers need; and a part mostly
//! emptied gives memory back.
//!
//! Costs: every operation O(1), but a part's growth, rebuild or shrink, which is a pass over
//! that part after inserts or removals in proportion to its size.

use std::collections::HashMap;

/// How many parts: a number's lowest bits choose its part (natural numbers are hashes, and
/// counter numbers go up by one, so both spread evenly).
pub const PARTS: usize = 64;

/// A part's capacity below which it is never shrunk nor rebuilt (either costs a pass over it).
const SMALL: usize = 64;

/// The map.
pub struct Parted<V> {
    parts: Vec<HashMap<u64, V>>,
    len: usize,
}

impl<V> Default for Parted<V> {
    fn default() -> Parted<V> {
        Parted {
            parts: (0..PARTS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }
}

impl<V> Parted<V> {
    fn part(&self, key: u64) -> &HashMap<u64, V> {
        &self.parts[key as usize % PARTS]
    }

    fn part_mut(&mut self, key: u64) -> &mut HashMap<u64, V> {
        &mut self.parts[key as usize % PARTS]
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// How many entries its parts have room for (a pass over the parts).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.parts.iter().map(HashMap::capacity).sum()
    }

    /// The value of `key`.
    pub fn get(&self, key: &u64) -> Option<&V> {
        self.part(*key).get(key)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        self.part_mut(*key).get_mut(key)
    }

    /// Whether it holds `key`.
    pub fn contains_key(&self, key: &u64) -> bool {
        self.part(*key).contains_key(key)
    }

    /// Inserts `value` as `key`. A part whose room is used up (by entries, or by removal
    /// marks) is rebuilt first with a quarter more room than its entries need, where the hash
    /// map alone would double it as soon as more than half of it is in use.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let part = self.part_mut(key);
        let len = part.len();
        if len >= SMALL && len == part.capacity() {
            let mut rebuilt = HashMap::with_capacity(len + len / 4);
            rebuilt.extend(part.drain());
            *part = rebuilt;
        }
        let old = part.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; its part gives memory back once an eighth or less of it is in use (the
    /// pass this costs is spread over the removals that emptied it).
    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let part = self.part_mut(*key);
        let removed = part.remove(key)?;
        if part.capacity() > SMALL && part.len() < part.capacity() / 8 {
            part.shrink_to(part.len() * 2);
        }
        self.len -= 1;
        Some(removed)
    }

    /// Every entry, part after part.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.parts.iter().flat_map(HashMap::iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_a_map() {
        let mut map = Parted::default();
        for key in 0..10_000u64 {
            assert_eq!(map.insert(key * 7, key), None);
        }
        assert_eq!(map.insert(7, 100), Some(1));
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.get(&7), Some(&100));
        *map.get_mut(&14).unwrap() += 1;
        assert_eq!(map.get(&14), Some(&3));
        assert!(map.contains_key(&0) && !map.contains_key(&1));
        assert_eq!(map.iter().count(), 10_000);
        assert_eq!(map.remove(&7), Some(100));
        assert_eq!(map.remove(&7), None);
        assert_eq!(map.len(), 9_999);
    }

    #[test]
    fn churn_at_a_steady_size_does_not_grow_it() {
        // What the kernel's lookups and forgets do to the inode table near its bound.
        let mut map = Parted::default();
        let steady = 20_000u64;
        for key in 0..steady {
            map.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), ());
        }
        let room = map.capacity();
        for key in steady..steady * 20 {
            map.remove(&(key - steady).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            map.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), ());
        }
        assert_eq!(map.len(), steady as usize);
        assert!(
            map.capacity() <= room * 3 / 2,
            "{} after {room}",
            map.capacity()
        );
    }

    #[test]
    fn it_gives_memory_back_when_mostly_emptied() {
        let mut map = Parted::default();
        for key in 0..20_000u64 {
            map.insert(key, ());
        }
        let grown = map.capacity();
        for key in 0..19_990u64 {
            map.remove(&key);
        }
        assert_eq!(map.len(), 10);
        assert!(map.capacity() < grown / 8, "{} of {grown}", map.capacity());
    }
}
