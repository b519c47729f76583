//! What each path of the mount is, decided without a mount: the FUSE layer asks these functions
//! and only carries out the answer.
//!
//! ```text
//! /                         Root: Dune's db/ directory
//! /files/  /meta/           Top
//! /files/v4/  /meta/v4/ ..  Kind        (always present)
//! /files/v4/<hh>/           Shard       (all 256, always present)
//! /files/v4/<hh>/<key>      Entry       (present if local or on its owning box)
//! /.dune-cachefs-status     Status      (counters, JSON)
//! /<anything else>          Scratch     (Dune's own files in db/: beacon, promoting.*, temp/, ...)
//! ```
//!
//! A name that cannot be an entry (not 32 lowercase hex characters, or in the wrong shard) is
//! answered "absent" at once: no store lookup, no network request.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::dune::key::{Key, Shard};
use crate::dune::layout::{Entry, EntryKind, MetaVersion};
use crate::store::TEMP_DIR;
use crate::upload::background::JOURNAL_DIR;

/// The name of the status file in the mount's root.
pub const STATUS_FILE: &str = ".dune-cachefs-status";

/// The two top-level directories of Dune's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Top {
    /// `files/`
    Files,
    /// `meta/`
    Meta,
}

impl Top {
    /// The directory's name.
    pub fn name(self) -> &'static str {
        match self {
            Top::Files => "files",
            Top::Meta => "meta",
        }
    }

    /// The kinds of entry below it, with their directory names.
    pub fn kinds(self) -> &'static [(&'static str, EntryKind)] {
        match self {
            Top::Files => &[("v4", EntryKind::File)],
            Top::Meta => &[
                ("v4", EntryKind::Meta(MetaVersion::V4)),
                ("v5", EntryKind::Meta(MetaVersion::V5)),
            ],
        }
    }
}

/// One node of the mount's tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The mount's root (Dune's `db/`).
    Root,
    /// `files/` or `meta/`.
    Top(Top),
    /// `files/v4/`, `meta/v4/`, `meta/v5/`.
    Kind(EntryKind),
    /// One of the 256 shard directories of a kind.
    Shard(EntryKind, Shard),
    /// A cache entry.
    Entry(Entry),
    /// An artifact shown as a symbolic link to its store file (`--reads links`): a number of
    /// its own, apart from the artifact shown as a file, as the kernel may hold both at once.
    Link(Entry),
    /// The status file, by the lookup that found it: always 0 but with `--reads links`, where
    /// each lookup gets a number of its own (see `links`).
    Status(u64),
    /// A real file or directory of the store outside the entry directories, by its path
    /// relative to the store's root: Dune's scratch files.
    Scratch(PathBuf),
}

/// What a name inside a directory refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Child {
    /// A node that always exists.
    Fixed(Node),
    /// A cache entry: present if the store or its owning box holds it.
    Entry(Entry),
    /// A real path in the store, relative to its root: present if it exists there.
    Scratch(PathBuf),
    /// Nothing can be there.
    Absent,
}

/// Resolves `name` inside `parent`.
pub fn child(parent: &Node, name: &OsStr) -> Child {
    let Some(name) = name.to_str() else {
        return match parent {
            Node::Root => scratch_child(Path::new(""), name),
            Node::Scratch(dir) => scratch_child(dir, name),
            _ => Child::Absent,
        };
    };
    match parent {
        Node::Root => match name {
            "files" => Child::Fixed(Node::Top(Top::Files)),
            "meta" => Child::Fixed(Node::Top(Top::Meta)),
            STATUS_FILE => Child::Fixed(Node::Status(0)),
            _ => scratch_child(Path::new(""), OsStr::new(name)),
        },
        Node::Top(top) => top
            .kinds()
            .iter()
            .find(|(dir, _)| *dir == name)
            .map_or(Child::Absent, |(_, kind)| Child::Fixed(Node::Kind(*kind))),
        Node::Kind(kind) => {
            Shard::from_name(name).map_or(Child::Absent, |s| Child::Fixed(Node::Shard(*kind, s)))
        }
        Node::Shard(kind, shard) => match name.parse::<Key>() {
            Ok(key) if key.shard() == *shard => Child::Entry(Entry { kind: *kind, key }),
            _ => Child::Absent,
        },
        Node::Scratch(dir) => scratch_child(dir, OsStr::new(name)),
        Node::Entry(_) | Node::Link(_) | Node::Status(_) => Child::Absent,
    }
}

/// A scratch name, unless it is one the mount keeps for itself (the store's temp directory).
fn scratch_child(dir: &Path, name: &OsStr) -> Child {
    if dir.as_os_str().is_empty() && (name == TEMP_DIR || name == JOURNAL_DIR) {
        Child::Absent
    } else {
        Child::Scratch(dir.join(name))
    }
}

/// The fixed children of a directory node, for `readdir` (shards, entries and scratch files are
/// listed from the store and the boxes).
pub fn fixed_children(dir: &Node) -> Vec<(String, Node)> {
    match dir {
        Node::Root => vec![
            ("files".into(), Node::Top(Top::Files)),
            ("meta".into(), Node::Top(Top::Meta)),
            (STATUS_FILE.into(), Node::Status(0)),
        ],
        _ => Vec::new(),
    }
}

/// Whether a real name in the store's root is shown as scratch: not the names the mount presents
/// itself, and not its temp directory.
pub fn is_scratch_name(name: &OsStr) -> bool {
    !matches!(
        name.to_str(),
        Some("files" | "meta" | STATUS_FILE | TEMP_DIR | JOURNAL_DIR)
    )
}

/// The directory holding `node` (the root's parent is the root, as FUSE expects for `..`).
pub fn parent(node: &Node) -> Node {
    match node {
        Node::Root | Node::Top(_) | Node::Status(_) => Node::Root,
        Node::Kind(kind) => Node::Top(match kind {
            EntryKind::File => Top::Files,
            EntryKind::Meta(_) => Top::Meta,
        }),
        Node::Shard(kind, _) => Node::Kind(*kind),
        Node::Entry(entry) | Node::Link(entry) => Node::Shard(entry.kind, entry.key.shard()),
        Node::Scratch(path) => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => Node::Scratch(dir.to_path_buf()),
            _ => Node::Root,
        },
    }
}

/// Whether a node is a directory.
pub fn is_dir(node: &Node) -> bool {
    matches!(
        node,
        Node::Root | Node::Top(_) | Node::Kind(_) | Node::Shard(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ab23456789abcdef0123456789abcdef";

    fn walk(path: &str) -> Child {
        let mut node = Node::Root;
        let mut last = Child::Fixed(Node::Root);
        for part in path.split('/') {
            last = child(&node, OsStr::new(part));
            node = match &last {
                Child::Fixed(n) => n.clone(),
                Child::Entry(e) => Node::Entry(*e),
                Child::Scratch(p) => Node::Scratch(p.clone()),
                Child::Absent => return Child::Absent,
            };
        }
        last
    }

    #[test]
    fn dune_layout_paths() {
        let key: Key = KEY.parse().unwrap();
        assert_eq!(
            walk(&format!("files/v4/ab/{KEY}")),
            Child::Entry(Entry {
                kind: EntryKind::File,
                key
            })
        );
        assert_eq!(
            walk(&format!("meta/v5/ab/{KEY}")),
            Child::Entry(Entry {
                kind: EntryKind::Meta(MetaVersion::V5),
                key
            })
        );
        assert_eq!(
            walk("meta/v4/0f"),
            Child::Fixed(Node::Shard(EntryKind::Meta(MetaVersion::V4), Shard(0x0f)))
        );
        assert_eq!(walk(STATUS_FILE), Child::Fixed(Node::Status(0)));
        assert_eq!(
            walk("promoting.abc.12/x"),
            Child::Scratch(PathBuf::from("promoting.abc.12/x"))
        );
        assert_eq!(walk("beacon"), Child::Scratch(PathBuf::from("beacon")));
    }

    #[test]
    fn names_that_cannot_be_entries_are_absent_at_once() {
        for path in [
            "files/v3",
            "files/v4/AB",
            "files/v4/abc",
            "files/v4/ab/AB23456789abcdef0123456789abcdef",
            "files/v4/ab/cd23456789abcdef0123456789abcdef",
            "files/v4/ab/ab23456789abcdef0123456789abcde",
            "files/v4/ab/._ab23456789abcdef0123456789abcdef",
            "meta/v6",
            "files/x",
            TEMP_DIR,
        ] {
            assert_eq!(walk(path), Child::Absent, "{path}");
        }
        let key_path = format!("files/v4/ab/{KEY}/x");
        assert_eq!(walk(&key_path), Child::Absent);
    }

    #[test]
    fn fixed_children_list_the_layout() {
        assert!(fixed_children(&Node::Kind(EntryKind::File)).is_empty());
        let root: Vec<String> = fixed_children(&Node::Root)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(root, ["files", "meta", STATUS_FILE]);
        assert!(!is_scratch_name(OsStr::new(TEMP_DIR)));
        assert_eq!(
            parent(&Node::Kind(EntryKind::Meta(MetaVersion::V5))),
            Node::Top(Top::Meta)
        );
        assert_eq!(
            parent(&Node::Scratch(PathBuf::from("a/b"))),
            Node::Scratch(PathBuf::from("a"))
        );
        assert_eq!(parent(&Node::Scratch(PathBuf::from("a"))), Node::Root);
        assert!(is_scratch_name(OsStr::new("beacon")));
    }
}
