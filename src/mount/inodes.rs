//! The inode table: one stable number per path for the life of the mount.
//!
//! Keyed by [`Node`] (and so by path), never by content: two names are never the same inode, which
//! is what macOS needs (see [`policy`](super::policy)) and harmless on Linux. Numbers are never
//! reused, so a number the kernel still holds cannot come to mean another path. The table only
//! grows; an entry costs a few dozen bytes, so 100 000 entries cost a few megabytes.
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

struct Slot {
    node: Node,
    remote: Option<RemoteAttr>,
    installed: Option<FileAttr>,
}

struct Table {
    /// Slot `i` is inode `i + 1`.
    slots: Vec<Slot>,
    by_node: HashMap<Node, u64>,
}

/// The table, shared by all FUSE threads and workers.
pub struct Inodes {
    table: RwLock<Table>,
}

impl Default for Inodes {
    fn default() -> Inodes {
        let root = Slot {
            node: Node::Root,
            remote: None,
            installed: None,
        };
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
        table.slots.push(Slot {
            node: node.clone(),
            remote: None,
            installed: None,
        });
        let ino = table.slots.len() as u64;
        table.by_node.insert(node.clone(), ino);
        ino
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
