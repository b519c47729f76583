//! What a request that opens or changes the tree means, decided without a mount: the FUSE layer
//! resolves the names ([`tree`]), asks these functions, and carries out the answer.
//!
//! The rules: entries are immutable (no write open, no truncate, no owner change, no unlink; a
//! `chmod` or `touch`, which Dune does to entries it restores, is accepted and changes nothing);
//! an entry comes into being only by Dune renaming or linking one of its scratch files into the
//! layout, which installs it (verified) rather than moving the file; an entry never gains a
//! second, writable name (EXDEV makes callers copy instead); the layout's directories always exist
//! (EEXIST) and cannot be removed or renamed (EACCES); a name the platform policy forbids cannot
//! be created.

use std::path::PathBuf;

use fuser::Errno;

use super::tree::{self, Child, Node};
use crate::dune::layout::Entry;

/// What a rename does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rename {
    /// A scratch path moves to another.
    Scratch {
        /// The scratch path, relative to the store's root.
        from: PathBuf,
        /// Its new path, likewise.
        to: PathBuf,
    },
    /// A scratch file becomes an entry: installed from it, then the scratch file goes.
    Install {
        /// The scratch file, relative to the store's root.
        from: PathBuf,
        /// The entry it becomes.
        entry: Entry,
    },
}

/// What `rename(from, to)` does, or the errno that refuses it. `flags` are the rename's flags
/// (none are supported); `refused_name` says whether the platform policy forbids `to`'s name.
pub fn rename(from: Child, to: Child, flags: u32, refused_name: bool) -> Result<Rename, Errno> {
    if flags != 0 {
        return Err(Errno::EINVAL);
    }
    match (from, to) {
        (Child::Scratch(from), Child::Scratch(to)) if !refused_name => {
            Ok(Rename::Scratch { from, to })
        }
        (Child::Scratch(from), Child::Entry(entry)) => Ok(Rename::Install { from, entry }),
        (Child::Absent, _) => Err(Errno::ENOENT),
        _ => Err(Errno::EACCES),
    }
}

/// What a hard link does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A scratch file becomes an entry too (installed from a copy; the scratch file stays).
    Install {
        /// The scratch file, relative to the store's root.
        from: PathBuf,
        /// The entry it becomes.
        entry: Entry,
    },
    /// A scratch file gets a second scratch name.
    Scratch {
        /// The scratch file, relative to the store's root.
        from: PathBuf,
        /// Its second name, likewise.
        to: PathBuf,
    },
}

/// What `link(source, target)` does, or the errno that refuses it.
pub fn link(source: Node, target: Child, refused_name: bool) -> Result<Link, Errno> {
    match (source, target) {
        (Node::Scratch(from), Child::Entry(entry)) => Ok(Link::Install { from, entry }),
        (Node::Scratch(from), Child::Scratch(to)) if !refused_name => {
            Ok(Link::Scratch { from, to })
        }
        // An entry must never gain a second, writable name: callers fall back to copying.
        (Node::Entry(_) | Node::Link(_), _) => Err(Errno::EXDEV),
        _ => Err(Errno::EACCES),
    }
}

/// Where a new scratch name goes (relative to the store's root): the one check every way of
/// creating a name shares (`create`, `mkdir`, `symlink`). A layout directory already exists
/// (EEXIST: Dune makes sure a shard directory exists before renaming into it); entries and
/// names the platform policy forbids cannot be created (EACCES).
pub fn create(child: Child, refused_name: bool) -> Result<PathBuf, Errno> {
    match child {
        Child::Scratch(relative) if !refused_name => Ok(relative),
        Child::Fixed(_) => Err(Errno::EEXIST),
        _ => Err(Errno::EACCES),
    }
}

/// What `unlink` or `rmdir` of `child` removes: only scratch paths (trim the store with
/// `dune-cachefs trim` instead).
pub fn remove(child: Child) -> Result<PathBuf, Errno> {
    match child {
        Child::Scratch(relative) => Ok(relative),
        Child::Absent => Err(Errno::ENOENT),
        _ => Err(Errno::EACCES),
    }
}

/// What a `setattr` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetAttr {
    /// Applied to the scratch file at this path.
    Scratch(PathBuf),
    /// Accepted, changing nothing: the node is answered as it is.
    Unchanged,
}

/// Which attributes a `setattr` asks to change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The mode.
    pub mode: bool,
    /// The owner or the group.
    pub owner: bool,
    /// The size (a truncate).
    pub size: bool,
}

/// What a `setattr` of `node` asking for `changes` does. Times and an entry's mode may be set
/// and change nothing (Dune touches and chmods the entries it restores); an entry's size
/// cannot change (EACCES), nor can anything's owner or a directory's mode (EPERM).
pub fn set_attr(node: Node, changes: Changes) -> Result<SetAttr, Errno> {
    if let Node::Scratch(relative) = node {
        return Ok(SetAttr::Scratch(relative));
    }
    if changes.size {
        return Err(Errno::EACCES);
    }
    if changes.owner || (changes.mode && tree::is_dir(&node)) {
        return Err(Errno::EPERM);
    }
    Ok(SetAttr::Unchanged)
}

/// What an `open` of a file opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Open {
    /// An entry, for reading: from the store, or fetched first.
    Entry(Entry),
    /// A scratch file, as asked.
    Scratch(PathBuf),
}

/// What opening `node` (for writing if `writing`) opens, or the errno that refuses it. Entries
/// are read-only, for root too (whom the kernel's mode check does not stop, and who would
/// otherwise get a handle that fails every write with EBADF). The status file is a link, which
/// the kernel follows rather than opens.
pub fn open(node: Node, writing: bool) -> Result<Open, Errno> {
    match node {
        Node::Entry(_) if writing => Err(Errno::EACCES),
        Node::Entry(entry) => Ok(Open::Entry(entry)),
        Node::Status(_) | Node::Link(_) => Err(Errno::ELOOP),
        Node::Scratch(relative) => Ok(Open::Scratch(relative)),
        _ => Err(Errno::EISDIR),
    }
}

/// Whether `node` can be opened as a directory (ENOTDIR otherwise).
pub fn open_dir(node: &Node) -> Result<(), Errno> {
    if tree::is_dir(node) || matches!(node, Node::Scratch(_)) {
        Ok(())
    } else {
        Err(Errno::ENOTDIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};
    use crate::mount::tree::Top;

    fn entry() -> Entry {
        Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        }
    }

    fn scratch(path: &str) -> PathBuf {
        PathBuf::from(path)
    }

    fn fixed() -> Node {
        Node::Kind(EntryKind::Meta(MetaVersion::V5))
    }

    #[test]
    fn renames() {
        let s = |p: &str| Child::Scratch(scratch(p));
        type Case = (Child, Child, u32, bool, Result<Rename, Errno>);
        let cases: Vec<Case> = vec![
            (
                s("a"),
                s("b"),
                0,
                false,
                Ok(Rename::Scratch {
                    from: scratch("a"),
                    to: scratch("b"),
                }),
            ),
            (s("a"), s("b"), 0, true, Err(Errno::EACCES)),
            (s("a"), s("b"), 1, false, Err(Errno::EINVAL)),
            (
                s("a"),
                Child::Entry(entry()),
                0,
                false,
                Ok(Rename::Install {
                    from: scratch("a"),
                    entry: entry(),
                }),
            ),
            // The policy's names are about scratch names, not entries.
            (
                s("a"),
                Child::Entry(entry()),
                0,
                true,
                Ok(Rename::Install {
                    from: scratch("a"),
                    entry: entry(),
                }),
            ),
            (Child::Absent, s("b"), 0, false, Err(Errno::ENOENT)),
            (Child::Entry(entry()), s("b"), 0, false, Err(Errno::EACCES)),
            (
                Child::Entry(entry()),
                Child::Entry(entry()),
                0,
                false,
                Err(Errno::EACCES),
            ),
            (Child::Fixed(fixed()), s("b"), 0, false, Err(Errno::EACCES)),
            (s("a"), Child::Fixed(fixed()), 0, false, Err(Errno::EACCES)),
            (s("a"), Child::Absent, 0, false, Err(Errno::EACCES)),
        ];
        for (from, to, flags, refused, want) in cases {
            let got = rename(from.clone(), to.clone(), flags, refused);
            assert_eq!(
                got, want,
                "rename {from:?} -> {to:?} flags {flags} refused {refused}"
            );
        }
    }

    #[test]
    fn links() {
        let cases: Vec<(Node, Child, bool, Result<Link, Errno>)> = vec![
            (
                Node::Scratch(scratch("a")),
                Child::Entry(entry()),
                false,
                Ok(Link::Install {
                    from: scratch("a"),
                    entry: entry(),
                }),
            ),
            (
                Node::Scratch(scratch("a")),
                Child::Scratch(scratch("b")),
                false,
                Ok(Link::Scratch {
                    from: scratch("a"),
                    to: scratch("b"),
                }),
            ),
            (
                Node::Scratch(scratch("a")),
                Child::Scratch(scratch("b")),
                true,
                Err(Errno::EACCES),
            ),
            (
                Node::Entry(entry()),
                Child::Scratch(scratch("b")),
                false,
                Err(Errno::EXDEV),
            ),
            (
                Node::Entry(entry()),
                Child::Entry(entry()),
                false,
                Err(Errno::EXDEV),
            ),
            (
                Node::Status(0),
                Child::Scratch(scratch("b")),
                false,
                Err(Errno::EACCES),
            ),
            (
                Node::Scratch(scratch("a")),
                Child::Fixed(fixed()),
                false,
                Err(Errno::EACCES),
            ),
        ];
        for (source, target, refused, want) in cases {
            let got = link(source.clone(), target.clone(), refused);
            assert_eq!(got, want, "link {source:?} -> {target:?} refused {refused}");
        }
    }

    #[test]
    fn creating_and_removing_names() {
        assert_eq!(
            create(Child::Scratch(scratch("t")), false),
            Ok(scratch("t"))
        );
        assert_eq!(
            create(Child::Scratch(scratch("t")), true),
            Err(Errno::EACCES)
        );
        assert_eq!(create(Child::Fixed(fixed()), false), Err(Errno::EEXIST));
        assert_eq!(create(Child::Entry(entry()), false), Err(Errno::EACCES));
        assert_eq!(create(Child::Absent, false), Err(Errno::EACCES));
        assert_eq!(remove(Child::Scratch(scratch("t"))), Ok(scratch("t")));
        assert_eq!(remove(Child::Absent), Err(Errno::ENOENT));
        assert_eq!(remove(Child::Entry(entry())), Err(Errno::EACCES));
        assert_eq!(remove(Child::Fixed(fixed())), Err(Errno::EACCES));
    }

    #[test]
    fn setattr_rules() {
        let none = Changes::default();
        let mode = Changes { mode: true, ..none };
        let owner = Changes {
            owner: true,
            ..none
        };
        let size = Changes { size: true, ..none };
        let cases: Vec<(Node, Changes, Result<SetAttr, Errno>)> = vec![
            (
                Node::Scratch(scratch("s")),
                size,
                Ok(SetAttr::Scratch(scratch("s"))),
            ),
            (
                Node::Scratch(scratch("s")),
                owner,
                Ok(SetAttr::Scratch(scratch("s"))),
            ),
            (Node::Entry(entry()), none, Ok(SetAttr::Unchanged)),
            (Node::Entry(entry()), mode, Ok(SetAttr::Unchanged)),
            (Node::Entry(entry()), size, Err(Errno::EACCES)),
            (Node::Entry(entry()), owner, Err(Errno::EPERM)),
            (
                Node::Entry(entry()),
                Changes {
                    size: true,
                    owner: true,
                    mode: true,
                },
                Err(Errno::EACCES),
            ),
            (Node::Top(Top::Files), mode, Err(Errno::EPERM)),
            (Node::Root, none, Ok(SetAttr::Unchanged)),
            (Node::Status(0), mode, Ok(SetAttr::Unchanged)),
        ];
        for (node, changes, want) in cases {
            assert_eq!(
                set_attr(node.clone(), changes),
                want,
                "{node:?} {changes:?}"
            );
        }
    }

    #[test]
    fn opens() {
        assert_eq!(open(Node::Entry(entry()), false), Ok(Open::Entry(entry())));
        assert_eq!(open(Node::Entry(entry()), true), Err(Errno::EACCES));
        assert_eq!(open(Node::Status(0), false), Err(Errno::ELOOP));
        assert_eq!(open(Node::Status(0), true), Err(Errno::ELOOP));
        assert_eq!(
            open(Node::Scratch(scratch("s")), true),
            Ok(Open::Scratch(scratch("s")))
        );
        assert_eq!(open(Node::Root, false), Err(Errno::EISDIR));
        assert_eq!(open(fixed(), false), Err(Errno::EISDIR));
        assert_eq!(open_dir(&Node::Root), Ok(()));
        assert_eq!(open_dir(&Node::Scratch(scratch("temp"))), Ok(()));
        assert_eq!(open_dir(&Node::Entry(entry())), Err(Errno::ENOTDIR));
        assert_eq!(open_dir(&Node::Status(0)), Err(Errno::ENOTDIR));
    }
}
