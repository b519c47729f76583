//! Where entries live in a Dune `db/` directory, and what a path inside one means.
//!
//! ```text
//! db/files/v4/<hh>/<key>   artifacts (both key eras)
//! db/meta/v4/<hh>/<key>    rule metadata, Dune 2.8-2.9
//! db/meta/v5/<hh>/<key>    rule metadata, Dune 3.x
//! ```
//!
//! The store, the box (whose root is itself a `db/` layout) and the mount all map between paths
//! and [`Entry`] values here, so there is one definition of "this path is a cache entry" and
//! everything else under `db/` (Dune's scratch files) is simply "not an entry".

use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::key::{Key, Shard};

/// The two rule-metadata formats Dune has shipped; each has its own directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum MetaVersion {
    /// `meta/v4`: Dune 2.8-2.9, target paths relative to the build root.
    V4,
    /// `meta/v5`: Dune 3.x, target names relative to the rule's directory.
    V5,
}

/// The kinds of cache entry: artifacts are content-addressed and verifiable, metadata is not.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum EntryKind {
    /// An artifact under `files/v4`, verified against its key.
    File,
    /// Rule metadata under `meta/v4` or `meta/v5`, parsed but never verifiable against its key.
    Meta(MetaVersion),
}

impl EntryKind {
    /// Every kind, in the order a full walk or an upload visits them: artifacts before the
    /// metadata that names them.
    pub const ALL: [EntryKind; 3] = [
        EntryKind::File,
        EntryKind::Meta(MetaVersion::V4),
        EntryKind::Meta(MetaVersion::V5),
    ];

    /// The kind's directory relative to `db/`, e.g. `files/v4`; also the box's URL prefix.
    pub fn dir(self) -> &'static str {
        match self {
            EntryKind::File => "files/v4",
            EntryKind::Meta(MetaVersion::V4) => "meta/v4",
            EntryKind::Meta(MetaVersion::V5) => "meta/v5",
        }
    }

    /// The kind whose directory is `dir` (as returned by [`EntryKind::dir`]).
    pub fn from_dir(dir: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.dir() == dir)
    }

    /// The kind named by the two path components under `db/` (`files`,`v4` / `meta`,`v5`).
    pub fn from_components(top: &str, version: &str) -> Option<EntryKind> {
        match (top, version) {
            ("files", "v4") => Some(EntryKind::File),
            ("meta", "v4") => Some(EntryKind::Meta(MetaVersion::V4)),
            ("meta", "v5") => Some(EntryKind::Meta(MetaVersion::V5)),
            _ => None,
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// One cache entry: a kind and a key. Its path follows from it, so it is the unit every layer
/// passes around.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Entry {
    /// Artifact or metadata (and which version).
    pub kind: EntryKind,
    /// The file key or rule key.
    pub key: Key,
}

impl Entry {
    /// The entry's path relative to `db/`: `<kind dir>/<hh>/<key>`, allocated once at its final
    /// size (a box builds one per request).
    pub fn relative_path(&self) -> PathBuf {
        let hex = self.key.to_hex();
        let key = std::str::from_utf8(&hex).expect("hex is ASCII");
        let mut p = PathBuf::with_capacity(self.kind.dir().len() + "/hh/".len() + key.len());
        p.push(self.kind.dir());
        p.push(&key[..2]);
        p.push(key);
        p
    }

    /// Reads a path relative to `db/` as an entry. Returns `None` for anything that is not
    /// exactly `<kind dir>/<hh>/<key>` with `<hh>` matching the key: Dune's scratch files, stray
    /// names, `..` tricks and misfiled keys are all "not an entry".
    pub fn from_relative_path(path: &Path) -> Option<Entry> {
        let mut parts = Vec::with_capacity(4);
        for c in path.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?),
                _ => return None,
            }
        }
        let [top, version, shard, key] = parts[..] else {
            return None;
        };
        let kind = EntryKind::from_components(top, version)?;
        let key: Key = key.parse().ok()?;
        (Shard::from_name(shard)? == key.shard()).then_some(Entry { kind, key })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.dir(), self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_round_trip_for_every_kind() {
        let key: Key = "ab23456789abcdef0123456789abcdef".parse().unwrap();
        for kind in EntryKind::ALL {
            let e = Entry { kind, key };
            let p = e.relative_path();
            assert_eq!(
                p,
                Path::new(kind.dir()).join("ab").join(key.to_string()),
                "{kind}"
            );
            assert_eq!(Entry::from_relative_path(&p), Some(e));
            assert_eq!(EntryKind::from_dir(kind.dir()), Some(kind));
        }
    }

    #[test]
    fn non_entries_are_rejected() {
        for bad in [
            "files/v4/ab",
            "files/v3/ab/ab23456789abcdef0123456789abcdef",
            "meta/v6/ab/ab23456789abcdef0123456789abcdef",
            "files/v4/cd/ab23456789abcdef0123456789abcdef",
            "files/v4/ab/ab23456789abcdef0123456789abcdef/x",
            "/files/v4/ab/ab23456789abcdef0123456789abcdef",
            "files/v4/../ab/ab23456789abcdef0123456789abcdef",
            "temp/v4/ab/ab23456789abcdef0123456789abcdef",
            "files/v4/ab/AB23456789abcdef0123456789abcdef",
        ] {
            assert_eq!(Entry::from_relative_path(Path::new(bad)), None, "{bad}");
        }
    }
}
