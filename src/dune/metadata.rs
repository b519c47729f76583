//! Dune's rule metadata entries (`meta/v4`, `meta/v5`).
//!
//! A metadata entry names the targets a rule produced and the artifact holding each one:
//!
//! ```text
//! ((8:metadata <item>*)(5:files (<path> <file-key>)*))
//! ```
//!
//! where a file key is 32 lowercase hex characters (an artifact under `files/v4`) or the atom
//! `<dir>` (a directory target, Dune >= 3.18). The free `metadata` items are Dune's own business
//! (it writes none so far); we keep them intact, as [`Sexp`]s, so an entry always re-encodes to
//! the very bytes it came from ([`Metadata::to_bytes`]).
//!
//! # How strict, and why
//!
//! Metadata cannot be verified against its rule key, so parsing is the one check an entry gets
//! before a box or the store installs it; it must refuse everything Dune itself would refuse,
//! because a refused entry costs one rebuild while an installed bad one fails (or misleads) every
//! build that reads it. So:
//!
//! - exactly two sections, `metadata` then `files`: Dune's reader matches on exactly that list,
//!   so an entry with extra top-level items is an entry Dune cannot read, and is refused
//!   ([`Place::AfterFiles`]). (Dune's other metadata kind, `(value <digest>)` for action values,
//!   is never stored by current Dune releases and is refused too.)
//! - each target is exactly `(path key)`; the key parses with [`Key`]'s rules or is `<dir>`;
//! - a target path must be relative and stay inside the build directory: not empty, not
//!   absolute, no NUL byte, no `..` component. Dune never writes such paths; in a cache shared
//!   by a team, one machine must not be able to make another restore a file outside `_build`.
//!
//! # Streaming
//!
//! [`MetadataReader`] checks the shape event by event as the bytes arrive (over a csexp
//! [`Parser`]), so an HTTP server refuses a bad body at its first wrong item, with the same error
//! whatever the chunking. Its memory is bounded by [`LIMITS`]: at most 16 MiB of input, one atom
//! buffered at a time, and the parsed entry (targets cost about their encoded size; free
//! `metadata` items, kept as trees, up to about 16 bytes per input byte in the worst case).
//!
//! ```
//! use dune_cachefs::dune::metadata::{Metadata, TargetFile};
//! let bytes = b"((8:metadata)(5:files(8:target_b32:d5b73f7b5d75090e1da54099e4458db3)))";
//! let meta = Metadata::parse(bytes).unwrap();
//! assert_eq!(meta.files[0].path, b"target_b");
//! assert!(matches!(meta.files[0].file, TargetFile::Artifact(_)));
//! assert_eq!(meta.to_bytes(), bytes);
//! ```

use std::fmt;

use super::csexp::{self, CsexpError, Event, Limits, Parser, Sexp, TreeBuilder};
use super::key::{Key, KeyError};

/// The csexp limits for a metadata entry: 16 MiB in all, no atom longer than that, depth 64.
///
/// A target costs about 50 bytes plus its path, so even a rule with ten thousand targets makes
/// well under a megabyte; 16 MiB is a wide margin for real entries and a firm cap on what one
/// upload can make a box buffer. Depth 64 covers the three levels Dune uses plus anything it
/// may put in the free `metadata` items.
pub const LIMITS: Limits = Limits {
    max_atom_len: 16 << 20,
    max_depth: 64,
    max_total_len: 16 << 20,
};

/// The key atom that marks a directory target.
const DIR_ATOM: &[u8] = b"<dir>";

/// A parsed metadata entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The items after the `metadata` atom, kept intact (Dune writes none so far).
    pub metadata: Vec<Sexp>,
    /// The rule's targets, in Dune's order.
    pub files: Vec<Target>,
}

/// One target of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The target's path as Dune wrote it: relative to the build root (`meta/v4`) or to the
    /// rule's directory (`meta/v5`). Bytes, since Dune does not promise UTF-8.
    pub path: Vec<u8>,
    /// What the cache holds for it.
    pub file: TargetFile,
}

/// What a target is in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetFile {
    /// A file, stored as the artifact with this key under `files/v4`.
    Artifact(Key),
    /// A directory target (`<dir>`, Dune >= 3.18): its files are listed as their own targets.
    Dir,
}

impl Metadata {
    /// Parses a whole entry (see [`MetadataReader`] to parse one as it streams).
    pub fn parse(bytes: &[u8]) -> Result<Metadata, MetadataError> {
        let mut reader = MetadataReader::new();
        reader.feed(bytes)?;
        reader.finish()
    }

    /// The canonical encoding; for every value [`Metadata::parse`] returns, exactly the bytes
    /// it was parsed from.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"((");
        csexp::write_atom(&mut out, b"metadata");
        for item in &self.metadata {
            item.write_to(&mut out);
        }
        out.extend_from_slice(b")(");
        csexp::write_atom(&mut out, b"files");
        for target in &self.files {
            out.push(b'(');
            csexp::write_atom(&mut out, &target.path);
            match target.file {
                TargetFile::Artifact(key) => csexp::write_atom(&mut out, &key.to_hex()),
                TargetFile::Dir => csexp::write_atom(&mut out, DIR_ATOM),
            }
            out.push(b')');
        }
        out.extend_from_slice(b"))");
        out
    }

    /// The keys of the artifacts this entry names (directory targets have none), in order: what
    /// must be present under `files/v4` for the entry to be usable.
    pub fn artifact_keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.files.iter().filter_map(|target| match target.file {
            TargetFile::Artifact(key) => Some(key),
            TargetFile::Dir => None,
        })
    }
}

/// Where in an entry a shape error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The entry as a whole (its outer list).
    Entry,
    /// The first section, `(metadata ...)`.
    MetadataSection,
    /// The second section, `(files ...)`.
    FilesSection,
    /// The target at this index (from 0) of the `files` section.
    FilesEntry(usize),
    /// What follows the `files` section.
    AfterFiles,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Entry => f.write_str("metadata entry"),
            Place::MetadataSection => f.write_str("(metadata ...) section"),
            Place::FilesSection => f.write_str("(files ...) section"),
            Place::FilesEntry(index) => write!(f, "files entry {index}"),
            Place::AfterFiles => f.write_str("after the (files ...) section"),
        }
    }
}

/// What a shape error found instead of what it expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// An atom; its bytes as lossy UTF-8, cut to 80 characters so a hostile atom cannot flood a
    /// log.
    Atom(String),
    /// The start of a list.
    List,
    /// The end of the enclosing list.
    End,
}

impl Found {
    fn of(event: Event<'_>) -> Found {
        match event {
            Event::Open => Found::List,
            Event::Close => Found::End,
            Event::Atom(atom) => Found::Atom(shown(atom)),
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Atom(text) => write!(f, "the atom {text:?}"),
            Found::List => f.write_str("a list"),
            Found::End => f.write_str("the end of the list"),
        }
    }
}

/// Bytes as an error message shows them: lossy UTF-8, at most 80 characters.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(80).collect()
}

/// Why some bytes are not a metadata entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Not one canonical S-expression within [`LIMITS`]. (The csexp error is part of this
    /// message rather than its `source()`, so a report of the chain says it once.)
    #[error("not a canonical S-expression: {0}")]
    Csexp(CsexpError),
    /// A csexp, but not shaped like an entry.
    #[error("{place}: expected {expected}, found {found}")]
    Shape {
        /// Where.
        place: Place,
        /// What the entry's shape requires there.
        expected: &'static str,
        /// What was there instead.
        found: Found,
    },
    /// A target's key atom is neither a key nor `<dir>`.
    #[error("files entry {entry}: {error}")]
    Key {
        /// The target's index in the `files` section.
        entry: usize,
        /// Why the atom is not a key.
        error: KeyError,
    },
    /// A target's path could lead outside the build directory.
    #[error("files entry {entry}: path {path:?} is refused: {reason}")]
    Path {
        /// The target's index in the `files` section.
        entry: usize,
        /// The path, as lossy UTF-8 cut to 80 characters.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl From<CsexpError> for MetadataError {
    fn from(err: CsexpError) -> MetadataError {
        MetadataError::Csexp(err)
    }
}

/// Why a target path is refused, if it is: see the module docs.
fn path_problem(path: &[u8]) -> Option<&'static str> {
    if path.is_empty() {
        Some("it is empty")
    } else if path[0] == b'/' {
        Some("it is absolute")
    } else if path.contains(&0) {
        Some("it contains a NUL byte")
    } else if path.split(|&b| b == b'/').any(|part| part == b"..") {
        Some("it has a '..' component")
    } else {
        None
    }
}

fn file_of_atom(entry: usize, atom: &[u8]) -> Result<TargetFile, MetadataError> {
    if atom == DIR_ATOM {
        return Ok(TargetFile::Dir);
    }
    String::from_utf8_lossy(atom)
        .parse()
        .map(TargetFile::Artifact)
        .map_err(|error| MetadataError::Key { entry, error })
}

/// Where the shape check is, between two events.
enum Stage {
    /// Expecting the entry's outer `(`.
    Start,
    /// Expecting `(metadata`.
    ExpectMetadata,
    /// Expecting the atom `metadata`.
    MetadataName,
    /// Inside `(metadata ...)`: collecting items until its `)`.
    MetadataItems,
    /// Expecting `(files`.
    ExpectFiles,
    /// Expecting the atom `files`.
    FilesName,
    /// Inside `(files ...)`: expecting a target's `(` or the section's `)`.
    Entries,
    /// Inside a target: expecting its path.
    EntryPath,
    /// Expecting the key of the target with this path.
    EntryKey(Vec<u8>),
    /// Expecting the `)` that ends this target.
    EntryEnd(Target),
    /// Expecting the entry's closing `)`.
    ExpectEnd,
    /// The entry is complete.
    Done,
}

/// The shape check: consumes csexp events, builds the entry, refuses the first misplaced event.
struct Shape {
    stage: Stage,
    items: TreeBuilder,
    metadata: Vec<Sexp>,
    files: Vec<Target>,
}

impl Shape {
    fn event(&mut self, event: Event<'_>) -> Result<(), MetadataError> {
        let entry = self.files.len();
        let error = |place, expected| MetadataError::Shape {
            place,
            expected,
            found: Found::of(event),
        };
        self.stage = match (std::mem::replace(&mut self.stage, Stage::Done), event) {
            (Stage::Start, Event::Open) => Stage::ExpectMetadata,
            (Stage::Start, _) => {
                return Err(error(Place::Entry, "a list ((metadata ...) (files ...))"));
            }
            (Stage::ExpectMetadata, Event::Open) => Stage::MetadataName,
            (Stage::ExpectMetadata, _) => {
                return Err(error(Place::MetadataSection, "a list (metadata ...)"));
            }
            (Stage::MetadataName, Event::Atom(b"metadata")) => Stage::MetadataItems,
            (Stage::MetadataName, _) => {
                return Err(error(Place::MetadataSection, "the atom \"metadata\""));
            }
            (Stage::MetadataItems, Event::Close) if self.items.is_idle() => Stage::ExpectFiles,
            (Stage::MetadataItems, event) => {
                if let Some(item) = self.items.push(event) {
                    self.metadata.push(item);
                }
                Stage::MetadataItems
            }
            (Stage::ExpectFiles, Event::Open) => Stage::FilesName,
            (Stage::ExpectFiles, _) => {
                return Err(error(Place::FilesSection, "a list (files ...)"));
            }
            (Stage::FilesName, Event::Atom(b"files")) => Stage::Entries,
            (Stage::FilesName, _) => {
                return Err(error(Place::FilesSection, "the atom \"files\""));
            }
            (Stage::Entries, Event::Open) => Stage::EntryPath,
            (Stage::Entries, Event::Close) => Stage::ExpectEnd,
            (Stage::Entries, _) => {
                return Err(error(Place::FilesEntry(entry), "a list (path key)"));
            }
            (Stage::EntryPath, Event::Atom(path)) => match path_problem(path) {
                None => Stage::EntryKey(path.to_vec()),
                Some(reason) => {
                    return Err(MetadataError::Path {
                        entry,
                        path: shown(path),
                        reason,
                    });
                }
            },
            (Stage::EntryPath, _) => {
                return Err(error(Place::FilesEntry(entry), "a path atom"));
            }
            (Stage::EntryKey(path), Event::Atom(key)) => Stage::EntryEnd(Target {
                path,
                file: file_of_atom(entry, key)?,
            }),
            (Stage::EntryKey(_), _) => {
                return Err(error(
                    Place::FilesEntry(entry),
                    "a key atom (32 hex characters or <dir>)",
                ));
            }
            (Stage::EntryEnd(target), Event::Close) => {
                self.files.push(target);
                Stage::Entries
            }
            (Stage::EntryEnd(_), _) => {
                return Err(error(
                    Place::FilesEntry(entry),
                    "the end of the list (path key)",
                ));
            }
            (Stage::ExpectEnd, Event::Close) => Stage::Done,
            (Stage::ExpectEnd | Stage::Done, _) => {
                return Err(error(Place::AfterFiles, "the end of the entry"));
            }
        };
        Ok(())
    }
}

/// Reads one metadata entry from chunks of input, checking its shape as the bytes arrive.
///
/// Errors do not depend on the chunking. After an error the reader stays failed: every later
/// call returns the same error.
pub struct MetadataReader {
    parser: Parser,
    shape: Shape,
    failed: Option<MetadataError>,
}

impl MetadataReader {
    /// A reader at the start of an entry, with the [`LIMITS`] for metadata.
    pub fn new() -> MetadataReader {
        MetadataReader {
            parser: Parser::new(LIMITS),
            shape: Shape {
                stage: Stage::Start,
                items: TreeBuilder::default(),
                metadata: Vec::new(),
                files: Vec::new(),
            },
            failed: None,
        }
    }

    /// Parses and checks the next chunk of the entry.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), MetadataError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let MetadataReader { parser, shape, .. } = self;
        let mut shape_error = None;
        let parsed = parser.feed(chunk, &mut |event| {
            if shape_error.is_none() {
                shape_error = shape.event(event).err();
            }
        });
        // A shape error came from an event the parser emitted before wherever it stopped, so it
        // is the first error in the input.
        let result = match shape_error {
            Some(err) => Err(err),
            None => parsed.map_err(MetadataError::from),
        };
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Ends the input and returns the entry.
    pub fn finish(self) -> Result<Metadata, MetadataError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        self.parser.finish()?;
        match self.shape.stage {
            Stage::Done => Ok(Metadata {
                metadata: self.shape.metadata,
                files: self.shape.files,
            }),
            // A finished parser has seen the outer list close, which only `ExpectEnd` accepts;
            // this arm keeps the reader total rather than trusting that.
            _ => Err(MetadataError::Shape {
                place: Place::Entry,
                expected: "a complete entry",
                found: Found::End,
            }),
        }
    }
}

impl Default for MetadataReader {
    fn default() -> MetadataReader {
        MetadataReader::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V4: &[u8] =
        b"((8:metadata)(5:files(53:.aliases/default/all-00000000000000000000000000000000\
32:acb63fbb6dc230c163646604a888be96)))";
    const V5: &[u8] = b"((8:metadata)(5:files(8:target_b32:d5b73f7b5d75090e1da54099e4458db3)))";

    fn key(hex: &str) -> Key {
        hex.parse().unwrap()
    }

    fn err(bytes: &[u8]) -> MetadataError {
        Metadata::parse(bytes).unwrap_err()
    }

    fn parse_chunked(bytes: &[u8], cuts: &[usize]) -> Result<Metadata, MetadataError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.extend([0, bytes.len()]);
        cuts.sort_unstable();
        let mut reader = MetadataReader::new();
        for pair in cuts.windows(2) {
            reader.feed(&bytes[pair[0]..pair[1]])?;
        }
        reader.finish()
    }

    /// The real entries quoted in `docs/dune-cache.md` are the ones tested here, and parse
    /// and re-encode to themselves.
    #[test]
    fn the_documented_examples_are_these() {
        let examples: Vec<(&str, &[u8])> = super::super::documented("metadata-examples")
            .into_iter()
            .map(|line| {
                let (dir, entry) = line.split_once(' ').expect("a dir and an entry");
                (dir, entry.as_bytes())
            })
            .collect();
        assert_eq!(examples, [("meta/v4", V4), ("meta/v5", V5)]);
        for (_, entry) in examples {
            assert_eq!(Metadata::parse(entry).unwrap().to_bytes(), entry);
        }
    }

    #[test]
    fn dune_2_9_example_round_trips() {
        let meta = Metadata::parse(V4).unwrap();
        assert_eq!(
            meta,
            Metadata {
                metadata: vec![],
                files: vec![Target {
                    path: b".aliases/default/all-00000000000000000000000000000000".to_vec(),
                    file: TargetFile::Artifact(key("acb63fbb6dc230c163646604a888be96")),
                }],
            }
        );
        assert_eq!(meta.to_bytes(), V4);
        assert_eq!(
            meta.artifact_keys().collect::<Vec<_>>(),
            [key("acb63fbb6dc230c163646604a888be96")]
        );
    }

    #[test]
    fn dune_3_20_example_round_trips() {
        let meta = Metadata::parse(V5).unwrap();
        assert_eq!(meta.files.len(), 1);
        assert_eq!(meta.files[0].path, b"target_b");
        assert_eq!(
            meta.files[0].file,
            TargetFile::Artifact(key("d5b73f7b5d75090e1da54099e4458db3"))
        );
        assert_eq!(meta.to_bytes(), V5);
    }

    #[test]
    fn directory_targets() {
        let bytes = b"((8:metadata)(5:files(3:out5:<dir>)(9:out/a.txt32:d5b73f7b5d75090e1da54099e4458db3)))";
        let meta = Metadata::parse(bytes).unwrap();
        assert_eq!(meta.files[0].file, TargetFile::Dir);
        assert_eq!(meta.files[1].path, b"out/a.txt");
        assert_eq!(meta.artifact_keys().count(), 1);
        assert_eq!(meta.to_bytes(), bytes);
    }

    #[test]
    fn empty_files_section() {
        let bytes = b"((8:metadata)(5:files))";
        let meta = Metadata::parse(bytes).unwrap();
        assert!(meta.files.is_empty());
        assert_eq!(meta.to_bytes(), bytes);
    }

    #[test]
    fn extra_metadata_items_are_kept_intact() {
        let bytes = b"((8:metadata(3:foo3:bar)3:baz()((0:)))(5:files(1:a32:d5b73f7b5d75090e1da54099e4458db3)))";
        let meta = Metadata::parse(bytes).unwrap();
        assert_eq!(meta.metadata.len(), 4);
        assert_eq!(meta.metadata[0].to_string(), "(foo bar)");
        assert_eq!(meta.metadata[1], Sexp::Atom(b"baz".to_vec()));
        assert_eq!(meta.metadata[2], Sexp::List(vec![]));
        assert_eq!(meta.metadata[3].to_string(), "((\"\"))");
        assert_eq!(meta.to_bytes(), bytes);
    }

    #[test]
    fn shape_errors_say_where_what_was_expected_and_what_was_found() {
        let cases: [(&[u8], &str); 12] = [
            (
                b"8:metadata",
                "metadata entry: expected a list ((metadata ...) (files ...)), found the atom \"metadata\"",
            ),
            (
                b"()",
                "(metadata ...) section: expected a list (metadata ...), found the end of the list",
            ),
            (
                b"(8:metadata)",
                "(metadata ...) section: expected a list (metadata ...), found the atom \"metadata\"",
            ),
            (
                b"((5:files)(8:metadata))",
                "(metadata ...) section: expected the atom \"metadata\", found the atom \"files\"",
            ),
            (
                b"((8:metadata))",
                "(files ...) section: expected a list (files ...), found the end of the list",
            ),
            (
                b"((8:metadata)(5:value32:d5b73f7b5d75090e1da54099e4458db3))",
                "(files ...) section: expected the atom \"files\", found the atom \"value\"",
            ),
            (
                b"((8:metadata)(5:files(1:a1:b)(1:c1:d)))",
                "files entry 0: malformed key \"b\": a key is exactly 32 lowercase hex characters",
            ),
            (
                b"((8:metadata)(5:files(1:a5:<dir>)(1:b5:<dir>)(1:c5:<dir>)3:xyz))",
                "files entry 3: expected a list (path key), found the atom \"xyz\"",
            ),
            (
                b"((8:metadata)(5:files()))",
                "files entry 0: expected a path atom, found the end of the list",
            ),
            (
                b"((8:metadata)(5:files(1:a)))",
                "files entry 0: expected a key atom (32 hex characters or <dir>), found the end of the list",
            ),
            (
                b"((8:metadata)(5:files(1:a5:<dir>1:x)))",
                "files entry 0: expected the end of the list (path key), found the atom \"x\"",
            ),
            (
                b"((8:metadata)(5:files)())",
                "after the (files ...) section: expected the end of the entry, found a list",
            ),
        ];
        for (bytes, message) in cases {
            assert_eq!(
                err(bytes).to_string(),
                message,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn structured_shape_error() {
        assert_eq!(
            err(b"((8:metadata)(5:files(2:ab)3:xyz))"),
            MetadataError::Shape {
                place: Place::FilesEntry(0),
                expected: "a key atom (32 hex characters or <dir>)",
                found: Found::End,
            }
        );
        assert_eq!(
            err(b"((8:metadata)(5:files((1:a)5:<dir>)))"),
            MetadataError::Shape {
                place: Place::FilesEntry(0),
                expected: "a path atom",
                found: Found::List,
            }
        );
    }

    #[test]
    fn malformed_keys() {
        for bad in [
            &b"D5B73F7B5D75090E1DA54099E4458DB3"[..],
            b"d5b73f7b5d75090e1da54099e4458db",
            b"<DIR>",
            b"\xff5b73f7b5d75090e1da54099e4458db3",
        ] {
            let mut bytes = b"((8:metadata)(5:files(1:a".to_vec();
            csexp::write_atom(&mut bytes, bad);
            bytes.extend_from_slice(b")))");
            let error = err(&bytes);
            assert!(
                matches!(&error, MetadataError::Key { entry: 0, .. }),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("files entry 0: malformed key"),
                "{error}"
            );
        }
    }

    #[test]
    fn paths_outside_the_build_directory_are_refused() {
        for (path, reason) in [
            (&b""[..], "it is empty"),
            (b"/etc/passwd", "it is absolute"),
            (b"a\0b", "it contains a NUL byte"),
            (b"..", "it has a '..' component"),
            (b"a/../../b", "it has a '..' component"),
            (b"a/..", "it has a '..' component"),
        ] {
            let mut bytes = b"((8:metadata)(5:files".to_vec();
            bytes.push(b'(');
            csexp::write_atom(&mut bytes, path);
            bytes.extend_from_slice(b"5:<dir>)))");
            assert_eq!(
                err(&bytes),
                MetadataError::Path {
                    entry: 0,
                    path: String::from_utf8_lossy(path).into_owned(),
                    reason
                }
            );
        }
        for fine in [&b"a..b"[..], b"..a/b", b"./a", b".aliases/x"] {
            assert_eq!(
                path_problem(fine),
                None,
                "{}",
                String::from_utf8_lossy(fine)
            );
        }
    }

    #[test]
    fn csexp_errors_are_wrapped() {
        let error = err(b"((8:metadata)(5:files(01:a");
        assert_eq!(
            error,
            MetadataError::Csexp(CsexpError::LeadingZero { offset: 22 })
        );
        assert!(error
            .to_string()
            .starts_with("not a canonical S-expression: atom length at offset 22"));
        assert_eq!(err(b""), MetadataError::Csexp(CsexpError::Empty));
        assert!(matches!(
            err(b"((8:metadata)(5:files)"),
            MetadataError::Csexp(CsexpError::UnclosedList { open: 1, .. })
        ));
    }

    #[test]
    fn entries_over_the_size_limit_are_refused() {
        let mut bytes = b"((8:metadata".to_vec();
        csexp::write_atom(&mut bytes, &vec![b'x'; 16 << 20]);
        bytes.extend_from_slice(b")(5:files))");
        assert_eq!(
            err(&bytes),
            MetadataError::Csexp(CsexpError::TooLarge {
                offset: 16 << 20,
                limit: 16 << 20
            })
        );
    }

    #[test]
    fn a_shape_error_is_reported_before_a_later_csexp_error_in_the_same_chunk() {
        let bytes = b"((8:metadata)(5:files1:x ";
        let shape = MetadataError::Shape {
            place: Place::FilesEntry(0),
            expected: "a list (path key)",
            found: Found::Atom("x".into()),
        };
        assert_eq!(err(bytes), shape);
        let mut reader = MetadataReader::new();
        assert_eq!(reader.feed(bytes), Err(shape.clone()));
        assert_eq!(reader.feed(b"()"), Err(shape.clone()));
        assert_eq!(reader.finish(), Err(shape));
    }

    fn arb_path() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            6 => b'a'..=b'z',
            2 => Just(b'.'),
            2 => Just(b'/'),
            1 => Just(b'-'),
            1 => 0x80u8..=0xff,
        ];
        prop::collection::vec(byte, 1..24)
            .prop_filter("a refused path", |p| path_problem(p).is_none())
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        let file = prop_oneof![
            4 => any::<[u8; 16]>().prop_map(|b| TargetFile::Artifact(Key::from_bytes(b))),
            1 => Just(TargetFile::Dir),
        ];
        (arb_path(), file).prop_map(|(path, file)| Target { path, file })
    }

    fn arb_item() -> impl Strategy<Value = Sexp> {
        let leaf = prop::collection::vec(any::<u8>(), 0..8).prop_map(Sexp::Atom);
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(Sexp::List)
        })
    }

    fn arb_metadata() -> impl Strategy<Value = Metadata> {
        (
            prop::collection::vec(arb_item(), 0..3),
            prop::collection::vec(arb_target(), 0..6),
        )
            .prop_map(|(metadata, files)| Metadata { metadata, files })
    }

    proptest! {
        #[test]
        fn write_then_parse_is_identity(meta in arb_metadata(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let bytes = meta.to_bytes();
            prop_assert_eq!(&Metadata::parse(&bytes).unwrap(), &meta);
            prop_assert_eq!(&parse_chunked(&bytes, &cuts).unwrap(), &meta);
        }

        #[test]
        fn damaged_entries_fail_the_same_way_whatever_the_chunking(
            meta in arb_metadata(),
            at in any::<usize>(),
            byte in any::<u8>(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut bytes = meta.to_bytes();
            let at = at % bytes.len();
            bytes[at] = byte;
            let whole = Metadata::parse(&bytes);
            prop_assert_eq!(&parse_chunked(&bytes, &cuts), &whole);
            let every_byte: Vec<usize> = (0..bytes.len()).collect();
            prop_assert_eq!(&parse_chunked(&bytes, &every_byte), &whole);
            if let Ok(parsed) = whole {
                prop_assert_eq!(parsed.to_bytes(), bytes);
            }
        }
    }
}
