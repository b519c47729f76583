//! The inode table: one stable number per path for the life of the mount.
//!
//! Keyed by [`Node`] (and so by path), never by content: two names are never the same inode, which
//! is what macOS needs (see [`policy`](super::policy)) and harmless on Linux. Numbers are never
//! reused, so a number the kernel still holds cannot come to mean another path. The table only
//! grows; an entry costs a few dozen bytes, so 100 000 entries cost a few megabytes.
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
//! (A metadata entry's attributes are never kept: its value can change.)

use std::collections::HashMap;
use std::sync::RwLock;

use fuser::FileAttr;

use super::tree::Node;

/// The root's inode number (FUSE's fixed value).
pub const ROOT: u64 = 1;

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

struct Slot {
    node: Node,
    remote: Option<RemoteAttr>,
    installed: Option<FileAttr>,
    /// For a metadata entry: the value this number stands for, once one was seen.
    value: Option<Value>,
}

impl Slot {
    fn new(node: Node) -> Slot {
        Slot {
            node,
            remote: None,
            installed: None,
            value: None,
        }
    }
}

struct Table {
    /// Slot `i` is inode `i + 1`.
    slots: Vec<Slot>,
    by_node: HashMap<Node, u64>,
}

impl Table {
    /// Gives `node` a new number, which its path now resolves to.
    fn assign(table: &mut Table, node: &Node) -> u64 {
        table.slots.push(Slot::new(node.clone()));
        let ino = table.slots.len() as u64;
        table.by_node.insert(node.clone(), ino);
        ino
    }
}

/// The table, shared by all FUSE threads and workers.
pub struct Inodes {
    table: RwLock<Table>,
}

impl Default for Inodes {
    fn default() -> Inodes {
        let root = Slot::new(Node::Root);
        Inodes {
            table: RwLock::new(Table {
                slots: vec![root],
                by_node: HashMap::from([(Node::Root, ROOT)]),
            }),
        }
    }
}

impl Inodes {
    /// The number of `node`, assigning the next one on first sight.
    pub fn ino_of(&self, node: &Node) -> u64 {
        if let Some(ino) = self.read().by_node.get(node) {
            return *ino;
        }
        let mut table = self.write();
        if let Some(ino) = table.by_node.get(node) {
            return *ino;
        }
        Table::assign(&mut table, node)
    }

    /// The number standing for `node`, a metadata entry, holding `value` now: its number if that
    /// stands for this value (or for none yet, which it then does); else a new number, the old
    /// one keeping its old value.
    pub fn ino_for_value(&self, node: &Node, value: Value) -> u64 {
        let mut table = self.write();
        let ino = match table.by_node.get(node) {
            Some(ino) => *ino,
            None => Table::assign(&mut table, node),
        };
        let slot = &mut table.slots[ino as usize - 1];
        match slot.value {
            Some(held) if held != value => {
                let fresh = Table::assign(&mut table, node);
                table.slots[fresh as usize - 1].value = Some(value);
                fresh
            }
            _ => {
                slot.value = Some(value);
                ino
            }
        }
    }

    /// Whether inode `ino` stands for `value` (one that stood for no value yet now does).
    pub fn holds_value(&self, ino: u64, value: Value) -> bool {
        let Some(index) = ino.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        let mut table = self.write();
        let Some(slot) = table.slots.get_mut(index) else {
            return false;
        };
        *slot.value.get_or_insert(value) == value
    }

    /// The value inode `ino` stands for, if it is a metadata entry's and one was seen.
    pub fn value(&self, ino: u64) -> Option<Value> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.read().slots.get(index).and_then(|s| s.value)
    }

    /// The node numbered `ino`, if any.
    pub fn node(&self, ino: u64) -> Option<Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.read().slots.get(index).map(|s| s.node.clone())
    }

    /// What a box reported about inode `ino`.
    pub fn remote(&self, ino: u64) -> Option<RemoteAttr> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.read().slots.get(index).and_then(|s| s.remote)
    }

    /// The number and remote attributes of `node`, if a box reported on it; assigns nothing.
    pub fn known_remote(&self, node: &Node) -> Option<(u64, RemoteAttr)> {
        let table = self.read();
        let ino = *table.by_node.get(node)?;
        table.slots[ino as usize - 1].remote.map(|r| (ino, r))
    }

    /// Assigns (if needed) the number of `node` and records what a box reported about it.
    pub fn set_remote(&self, node: &Node, remote: RemoteAttr) -> u64 {
        let ino = self.ino_of(node);
        if let Some(slot) = self.write().slots.get_mut(ino as usize - 1) {
            slot.remote = Some(remote);
        }
        ino
    }

    /// The attributes recorded for inode `ino` when it was last found installed.
    pub fn installed(&self, ino: u64) -> Option<FileAttr> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.read().slots.get(index).and_then(|s| s.installed)
    }

    /// Records the attributes of inode `ino`, an installed artifact. Artifacts never change
    /// under their key, so these stay true (a trimmed artifact that comes back has the same
    /// bytes). Never call this for metadata, whose value can change.
    pub fn set_installed(&self, ino: u64, attr: FileAttr) {
        let Some(index) = ino.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
            return;
        };
        if let Some(slot) = self.write().slots.get_mut(index) {
            slot.installed = Some(attr);
        }
    }

    /// Makes the number of `from` refer to `to`, as the kernel expects after a rename: it keeps
    /// the renamed file's number under its new name. For a directory, everything below it moves
    /// too. Numbers of nodes that were never looked up need no change.
    pub fn retarget(&self, from: &Node, to: &Node) {
        let mut table = self.write();
        let moved: Vec<(u64, Node)> = match (from, to) {
            (Node::Scratch(old), Node::Scratch(new)) => table
                .by_node
                .iter()
                .filter_map(|(node, ino)| match node {
                    Node::Scratch(p) => p
                        .strip_prefix(old)
                        .ok()
                        .map(|rest| (*ino, Node::Scratch(new.join(rest)))),
                    _ => None,
                })
                .collect(),
            _ => table
                .by_node
                .get(from)
                .map(|ino| vec![(*ino, to.clone())])
                .unwrap_or_default(),
        };
        for (ino, node) in moved {
            let slot = &mut table.slots[ino as usize - 1];
            let old = std::mem::replace(&mut slot.node, node.clone());
            table.by_node.remove(&old);
            table.by_node.insert(node, ino);
        }
    }

    /// How many numbers are assigned (for the status file).
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
}
