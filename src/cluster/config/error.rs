//! What can be wrong with a cluster config, and the limits and language the messages name.
//!
//! Apart because every step of reading a config (the text, its fields, the partition of the
//! keys) reports through these types: they sit below all of them and depend on none.

use std::fmt;
use std::path::{Path, PathBuf};

use super::node_url::{NodeUrl, UrlError};
use crate::cluster::sexp::{Pos, SyntaxError};
use crate::dune::key::Key;

/// The language a config must declare in its first form.
pub const LANG: &str = "dune-distributed-cache";

/// The only version of [`LANG`] this build reads.
pub const LANG_VERSION: &str = "1.0";

/// The largest config accepted, in bytes. A real config is a few kilobytes; the bound keeps a
/// wrong path (a log, a disk image) from being read into memory.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Why a cluster config was refused: what is wrong, and in which file when it came from one.
///
/// The kind is boxed so that a `Result` carrying this error stays small on the success path.
#[derive(Debug)]
pub struct ConfigError {
    pub(super) path: Option<PathBuf>,
    pub(super) kind: Box<ConfigErrorKind>,
}

impl ConfigError {
    /// The config file, when the text came from [`ClusterConfig::load`](super::ClusterConfig::load).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What is wrong with the config.
    pub fn kind(&self) -> &ConfigErrorKind {
        &self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "cluster config {}: {}", path.display(), self.kind),
            None => write!(f, "cluster config: {}", self.kind),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.kind())
    }
}

/// What is wrong with a cluster config. Each case carries the position (`line:column`) and the
/// offending text, so the message points at the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read it")]
    Read {
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is bigger than [`MAX_CONFIG_BYTES`].
    #[error("it is {size} bytes; a cluster config may be at most {limit} bytes")]
    TooLarge {
        /// The size found (at least; reading stops past the limit).
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The file is not UTF-8 text.
    #[error("{pos}: not UTF-8 text")]
    NotUtf8 {
        /// Where the first invalid byte is.
        pos: Pos,
    },
    /// The text is not well-formed S-expressions.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// The config has no forms at all.
    #[error("empty config: the first form must be (lang {LANG} {LANG_VERSION})")]
    Empty,
    /// The first form is not a `lang` declaration of this format.
    #[error("{pos}: the first form must be (lang {LANG} {LANG_VERSION}), found {found}")]
    NotLang {
        /// Where the first form is.
        pos: Pos,
        /// The form found, abbreviated.
        found: String,
    },
    /// The config declares a version of the format this build does not read.
    #[error("{pos}: unsupported {LANG} version {version:?} (this build reads {LANG_VERSION})")]
    UnsupportedVersion {
        /// Where the version is.
        pos: Pos,
        /// The version declared.
        version: String,
    },
    /// Something other than a `(field ...)` form where fields are expected.
    #[error("{pos}: expected a (field ...) form in {within}, found {found}")]
    NotAField {
        /// Where it is.
        pos: Pos,
        /// `the config` or `a node`.
        within: &'static str,
        /// What was found, abbreviated.
        found: String,
    },
    /// A field this format does not have: a typo, or a config for a newer build.
    #[error("{pos}: unknown field `{field}` in {within} (known: {known})")]
    UnknownField {
        /// Where the field is.
        pos: Pos,
        /// Its name (truncated).
        field: String,
        /// `the config` or `a node`.
        within: &'static str,
        /// The fields allowed there.
        known: &'static str,
    },
    /// A field that may appear once appears again.
    #[error("{pos}: `{field}` is given twice (first at {first})")]
    DuplicateField {
        /// Where the second one is.
        pos: Pos,
        /// The field.
        field: &'static str,
        /// Where the first one is.
        first: Pos,
    },
    /// A known field whose arguments have the wrong shape.
    #[error("{pos}: malformed `{field}`: expected {expected}, found {found}")]
    BadField {
        /// Where the field is.
        pos: Pos,
        /// The field.
        field: &'static str,
        /// The shape it must have, e.g. `(range LO HI)`.
        expected: &'static str,
        /// What was found, abbreviated.
        found: String,
    },
    /// A node URL that is not an `http://` or `https://` URL with a host.
    #[error("{pos}: {error}")]
    BadUrl {
        /// Where the URL is.
        pos: Pos,
        /// What is wrong with it.
        error: UrlError,
    },
    /// A range bound that is not 1 to 32 hex digits (after an optional `0x`).
    #[error("{pos}: bad range bound {bound:?}: {reason}")]
    BadBound {
        /// Where the bound is.
        pos: Pos,
        /// The bound as written (truncated).
        bound: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A range whose padded start is above its padded end.
    #[error("{pos}: empty range: start {lo} (key {first}) is above end {hi} (key {last})")]
    EmptyRange {
        /// Where the range is.
        pos: Pos,
        /// The start as written.
        lo: String,
        /// The end as written.
        hi: String,
        /// The start padded with `0`s.
        first: Key,
        /// The end padded with `f`s.
        last: Key,
    },
    /// A `timeout_ms` that is not a positive whole number.
    #[error("{pos}: timeout_ms must be a whole number of milliseconds above 0, found {found:?}")]
    BadTimeout {
        /// Where the value is.
        pos: Pos,
        /// The value as written (truncated).
        found: String,
    },
    /// One half of the client identity without the other.
    #[error("{pos}: `{given}` is given without `{missing}`: a client identity needs both")]
    HalfIdentity {
        /// Where the given half is.
        pos: Pos,
        /// The field given.
        given: &'static str,
        /// The field missing.
        missing: &'static str,
    },
    /// A node without `(hostname URL)`.
    #[error("{pos}: node has no (hostname URL) and no (s3 ...)")]
    MissingHostname {
        /// Where the node is.
        pos: Pos,
    },
    /// An `(s3 ...)` node that does not name a usable bucket.
    #[error("{pos}: bad s3 node: {reason}")]
    BadS3 {
        /// Where the `s3` form is.
        pos: Pos,
        /// What is wrong, in words.
        reason: String,
    },
    /// A node without any `(range LO HI)`.
    #[error("{pos}: node {url} has no (range LO HI)")]
    NoRanges {
        /// Where the node is.
        pos: Pos,
        /// Its URL.
        url: NodeUrl,
    },
    /// Two nodes with the same (normalised) URL.
    #[error("{pos}: node {url} is listed twice (first at {first})")]
    DuplicateNode {
        /// Where the second node is.
        pos: Pos,
        /// The URL they share.
        url: NodeUrl,
        /// Where the first node is.
        first: Pos,
    },
    /// Keys no node owns.
    #[error("no node owns keys {first} to {last}")]
    Gap {
        /// The first unowned key.
        first: Key,
        /// The last unowned key of this gap.
        last: Key,
    },
    /// Keys two ranges claim.
    #[error(
        "keys {first} to {last} are owned twice: by {url_a} (range at {pos_a}) \
         and by {url_b} (range at {pos_b})"
    )]
    Overlap {
        /// The first key claimed twice.
        first: Key,
        /// The last key of this overlap.
        last: Key,
        /// One claiming node.
        url_a: NodeUrl,
        /// Where its range is.
        pos_a: Pos,
        /// The other claiming node (the same node when it lists overlapping ranges).
        url_b: NodeUrl,
        /// Where its range is.
        pos_b: Pos,
    },
    /// Something is wrong inside the `(previous ...)` block: the table a transition replaces
    /// must be a valid table of its own.
    #[error("in the previous table at {pos}: {inner}")]
    InPrevious {
        /// Where the `previous` block starts.
        pos: Pos,
        /// What is wrong inside it.
        inner: Box<ConfigErrorKind>,
    },
}
