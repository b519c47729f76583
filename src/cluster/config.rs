//! The cluster config: which cache box owns which keys, and how to reach the boxes.
//!
//! The format is the 2020 `dune-distributed-cache` one, so configs written for that system load
//! unchanged (full reference: `docs/cluster-config.md`):
//!
//! ```text
//! (lang dune-distributed-cache 1.0)
//! (node (hostname http://zero:8080) (range 0x0000 0x7fff))
//! (node (hostname http://one:8080)  (range 0x8000 0xffff))
//! ```
//!
//! A range's bounds are hex *prefixes* of the key: the start is padded with `0`s and the end with
//! `f`s to 32 digits, so `(range 0x0000 0x7fff)` owns `0000…0000` through `7fff…ffff` and bounds
//! of any length from 1 to 32 digits mean what they say.
//!
//! # Stricter than 2020, by design
//!
//! The 2020 client sent a key "to the first node whose range holds it": a gap made keys silently
//! unroutable and an overlap made the order of the file matter. Both are almost always mistakes,
//! and each is expensive to find in production (a box that never gets its keys, two boxes
//! holding different halves of the same rules). So the union of the ranges must cover every key
//! *exactly once*; a config with a gap or an overlap is refused with an error naming the keys
//! and the nodes. Unknown fields are errors too, so a typo cannot pass silently, and every error
//! names its `line:column`.
//!
//! # Routing cost
//!
//! Validation leaves a table of interval starts sorted by key, each with its owner, so
//! [`ClusterConfig::owner`] is one binary search over the key read as a big-endian `u128`.
//!
//! ```
//! use dune_cachefs::cluster::config::ClusterConfig;
//! use dune_cachefs::dune::key::Key;
//!
//! let config = ClusterConfig::parse(
//!     "(lang dune-distributed-cache 1.0)
//!      (node (hostname http://zero:8080) (range 0x0 0x7))
//!      (node (hostname http://one:8080/) (range 0x8 0xf))",
//! )
//! .unwrap();
//! let key: Key = "80000000000000000000000000000000".parse().unwrap();
//! assert_eq!(config.owner(&key).url().as_str(), "http://one:8080");
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::sexp::{self, Sexp};
pub use super::sexp::{Pos, SyntaxError, MAX_DEPTH};
use crate::dune::key::Key;

/// The language a config must declare in its first form.
pub const LANG: &str = "dune-distributed-cache";

/// The only version of [`LANG`] this build reads.
pub const LANG_VERSION: &str = "1.0";

/// The largest config accepted, in bytes. A real config is a few kilobytes; the bound keeps a
/// wrong path (a log, a disk image) from being read into memory.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// How many characters of a rejected input an error quotes.
const QUOTE_LIMIT: usize = 80;

/// The validated base URL of a cache box: `http://` or `https://`, a host, an optional port and
/// path, no trailing `/`.
///
/// Normalised on parsing (scheme and host lowercased, trailing `/`s removed) so that two
/// spellings of one box compare equal: the duplicate-node check and a box finding itself in the
/// config (`--node URL`) both rely on it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeUrl(String);

/// Why a piece of text is not a node URL; carries the text so the message can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node URL {input:?}: {reason}")]
pub struct UrlError {
    /// The rejected text (truncated to 80 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl NodeUrl {
    /// The normalised URL, e.g. `http://zero:8080`; request paths are appended to it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<NodeUrl, UrlError> {
        let fail = |reason| UrlError {
            input: s.chars().take(QUOTE_LIMIT).collect(),
            reason,
        };
        let (scheme, rest) = s
            .split_once("://")
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
            })
            .ok_or_else(|| fail("a node URL starts with http:// or https://"))?;
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("a node URL may not contain whitespace"));
        }
        if s.contains(['?', '#']) {
            return Err(fail("a node URL may not have a query or a fragment"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(fail(
                "credentials do not belong in a node URL (the reverse proxy authenticates)",
            ));
        }
        let (host, port) =
            match authority.strip_prefix('[') {
                // An IPv6 literal: `[::1]` or `[::1]:8080`.
                Some(v6) => {
                    let (host, after) = v6
                        .split_once(']')
                        .ok_or_else(|| fail("an IPv6 host needs its closing `]`"))?;
                    match after {
                        "" => (host, None),
                        _ => (
                            host,
                            Some(after.strip_prefix(':').ok_or_else(|| {
                                fail("only `:port` may follow an IPv6 host's `]`")
                            })?),
                        ),
                    }
                }
                None => match authority.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                },
            };
        if host.is_empty() {
            return Err(fail("a node URL needs a host"));
        }
        if let Some(port) = port {
            let valid = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0);
            if !valid {
                return Err(fail("the port must be a number from 1 to 65535"));
            }
        }
        Ok(NodeUrl(format!(
            "{}://{}{}",
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase(),
            path.trim_end_matches('/')
        )))
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inclusive interval of keys, `first..=last`, never empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyRange {
    first: u128,
    last: u128,
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
    url: NodeUrl,
    ranges: Vec<KeyRange>,
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

    /// Whether the box owns `key`: what a box checks before answering 421.
    pub fn owns(&self, key: &Key) -> bool {
        self.ranges.iter().any(|r| r.contains(key))
    }
}

/// The client certificate and key presented to the reverse proxy in front of the boxes, for
/// proxies that authenticate clients by TLS certificate.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClientIdentity {
    /// The PEM certificate (chain) file, from `(client_cert PATH)`.
    pub cert: PathBuf,
    /// The PEM private key file, from `(client_key PATH)`.
    pub key: PathBuf,
}

/// A validated cluster config: every key has exactly one owner.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    nodes: Vec<Node>,
    /// The first key of each interval of the partition, ascending; `starts[0]` is 0.
    starts: Vec<u128>,
    /// `owners[i]` is the index in `nodes` of the box owning the interval at `starts[i]`.
    owners: Vec<usize>,
    ca_file: Option<PathBuf>,
    client_identity: Option<ClientIdentity>,
    timeout: Option<Duration>,
}

impl ClusterConfig {
    /// A one-box cluster: `url` owns every key, with no TLS or timeout settings.
    pub fn single(url: NodeUrl) -> ClusterConfig {
        ClusterConfig {
            nodes: vec![Node {
                url,
                ranges: vec![KeyRange::ALL],
            }],
            starts: vec![0],
            owners: vec![0],
            ca_file: None,
            client_identity: None,
            timeout: None,
        }
    }

    /// Parses and validates config text. Paths in it are returned as written (see
    /// [`ClusterConfig::load`] for how a file's relative paths are resolved).
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        parse_text(text).map_err(|kind| ConfigError {
            path: None,
            kind: Box::new(kind),
        })
    }

    /// Reads, parses and validates the config file at `path`; errors carry the path.
    ///
    /// Relative `ca_file`, `client_cert` and `client_key` paths are resolved against the
    /// config's own directory, so a config can ship next to its certificates.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let in_file = |kind| ConfigError {
            path: Some(path.to_owned()),
            kind: Box::new(kind),
        };
        let text = read_bounded(path).map_err(in_file)?;
        let mut config = parse_text(&text).map_err(in_file)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: &mut PathBuf| *p = base.join(&*p);
        if let Some(ca) = &mut config.ca_file {
            resolve(ca);
        }
        if let Some(id) = &mut config.client_identity {
            resolve(&mut id.cert);
            resolve(&mut id.key);
        }
        Ok(config)
    }

    /// Every node, in the order the config lists them.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The one node that owns `key`. A binary search: the table was checked to cover every key.
    pub fn owner(&self, key: &Key) -> &Node {
        &self.nodes[self.owner_index(key)]
    }

    /// The position in [`ClusterConfig::nodes`] of the node that owns `key`, for callers that
    /// keep per-node state (one client per box) in the same order.
    pub fn owner_index(&self, key: &Key) -> usize {
        let value = key_value(key);
        // `starts[0]` is 0, so at least one start is <= any key.
        let interval = self.starts.partition_point(|&start| start <= value) - 1;
        self.owners[interval]
    }

    /// The node with this URL, if the config has one: how a box started with `--node URL`
    /// learns which keys it owns.
    pub fn node_by_url(&self, url: &NodeUrl) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.url == url)
    }

    /// The CA certificate file to trust for `https://` nodes, from `(ca_file PATH)`; `None`
    /// means the system's trust store.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate and key for `https://` nodes, from `(client_cert PATH)` and
    /// `(client_key PATH)` (always given together).
    pub fn client_identity(&self) -> Option<&ClientIdentity> {
        self.client_identity.as_ref()
    }

    /// The deadline for one request to a box, from `(timeout_ms N)`; `None` means the client's
    /// own default.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Why a cluster config was refused: what is wrong, and in which file when it came from one.
///
/// The kind is boxed so that a `Result` carrying this error stays small on the success path.
#[derive(Debug)]
pub struct ConfigError {
    path: Option<PathBuf>,
    kind: Box<ConfigErrorKind>,
}

impl ConfigError {
    /// The config file, when the text came from [`ClusterConfig::load`].
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
    #[error("{pos}: node has no (hostname URL)")]
    MissingHostname {
        /// Where the node is.
        pos: Pos,
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
}

/// Reads at most [`MAX_CONFIG_BYTES`] (plus one, to tell "too large" apart) as UTF-8 text.
fn read_bounded(path: &Path) -> Result<String, ConfigErrorKind> {
    let file = std::fs::File::open(path).map_err(|source| ConfigErrorKind::Read { source })?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigErrorKind::Read { source })?;
    check_size(bytes.len())?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Lossless: `valid` is exactly the valid prefix.
        let prefix = String::from_utf8_lossy(valid);
        ConfigErrorKind::NotUtf8 {
            pos: end_pos(&prefix),
        }
    })
}

fn check_size(len: usize) -> Result<(), ConfigErrorKind> {
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigErrorKind::TooLarge {
            size: len as u64,
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(())
}

/// The position just after `text`.
fn end_pos(text: &str) -> Pos {
    let last_line = text.rsplit('\n').next().unwrap_or("");
    Pos {
        line: text.matches('\n').count() + 1,
        column: last_line.chars().count() + 1,
    }
}

const TOP_FIELDS: &str = "node, ca_file, client_cert, client_key, timeout_ms";
const NODE_FIELDS: &str = "hostname, range";

/// One range as read, kept with where it came from until the partition is checked.
struct Claim {
    range: KeyRange,
    node: usize,
    pos: Pos,
}

/// A singleton field's value and where it was given, to report a second one.
struct Once<T> {
    field: &'static str,
    value: Option<(T, Pos)>,
}

impl<T> Once<T> {
    fn new(field: &'static str) -> Once<T> {
        Once { field, value: None }
    }

    fn set(&mut self, value: T, pos: Pos) -> Result<(), ConfigErrorKind> {
        if let Some((_, first)) = self.value {
            return Err(ConfigErrorKind::DuplicateField {
                pos,
                field: self.field,
                first,
            });
        }
        self.value = Some((value, pos));
        Ok(())
    }
}

fn parse_text(text: &str) -> Result<ClusterConfig, ConfigErrorKind> {
    check_size(text.len())?;
    let forms = sexp::parse(text)?;
    let (lang, rest) = forms.split_first().ok_or(ConfigErrorKind::Empty)?;
    check_lang(lang)?;

    let mut nodes: Vec<Node> = Vec::new();
    let mut node_pos: Vec<Pos> = Vec::new();
    let mut claims = Vec::new();
    let mut ca_file = Once::new("ca_file");
    let mut client_cert = Once::new("client_cert");
    let mut client_key = Once::new("client_key");
    let mut timeout = Once::new("timeout_ms");
    for form in rest {
        let (name, args, pos) = field(form, "the config")?;
        match name {
            "node" => {
                let (url, ranges) = parse_node(args, pos)?;
                if let Some(i) = nodes.iter().position(|n| n.url == url) {
                    return Err(ConfigErrorKind::DuplicateNode {
                        pos,
                        url,
                        first: node_pos[i],
                    });
                }
                claims.extend(ranges.iter().map(|&(range, pos)| Claim {
                    range,
                    node: nodes.len(),
                    pos,
                }));
                nodes.push(Node {
                    url,
                    ranges: ranges.into_iter().map(|(r, _)| r).collect(),
                });
                node_pos.push(pos);
            }
            "ca_file" => ca_file.set(path_arg(args, "ca_file", form)?, pos)?,
            "client_cert" => client_cert.set(path_arg(args, "client_cert", form)?, pos)?,
            "client_key" => client_key.set(path_arg(args, "client_key", form)?, pos)?,
            "timeout_ms" => timeout.set(timeout_arg(args, form)?, pos)?,
            _ => return Err(unknown_field(name, pos, "the config", TOP_FIELDS)),
        }
    }
    let client_identity = match (client_cert.value, client_key.value) {
        (Some((cert, _)), Some((key, _))) => Some(ClientIdentity { cert, key }),
        (None, None) => None,
        (Some((_, pos)), None) => {
            return Err(ConfigErrorKind::HalfIdentity {
                pos,
                given: "client_cert",
                missing: "client_key",
            })
        }
        (None, Some((_, pos))) => {
            return Err(ConfigErrorKind::HalfIdentity {
                pos,
                given: "client_key",
                missing: "client_cert",
            })
        }
    };
    let (starts, owners) = partition(&nodes, claims)?;
    Ok(ClusterConfig {
        nodes,
        starts,
        owners,
        ca_file: ca_file.value.map(|(v, _)| v),
        client_identity,
        timeout: timeout.value.map(|(v, _)| v),
    })
}

fn check_lang(form: &Sexp) -> Result<(), ConfigErrorKind> {
    let not_lang = || ConfigErrorKind::NotLang {
        pos: form.pos(),
        found: form.abbreviated(QUOTE_LIMIT),
    };
    let items = form.as_list().ok_or_else(not_lang)?;
    let [keyword, lang, version] = items else {
        return Err(not_lang());
    };
    if keyword.as_atom() != Some("lang") || lang.as_atom() != Some(LANG) {
        return Err(not_lang());
    }
    match version.as_atom() {
        Some(LANG_VERSION) => Ok(()),
        _ => Err(ConfigErrorKind::UnsupportedVersion {
            pos: version.pos(),
            version: version.abbreviated(QUOTE_LIMIT),
        }),
    }
}

/// Splits a `(name args...)` form.
fn field<'a>(
    form: &'a Sexp,
    within: &'static str,
) -> Result<(&'a str, &'a [Sexp], Pos), ConfigErrorKind> {
    let not_a_field = || ConfigErrorKind::NotAField {
        pos: form.pos(),
        within,
        found: form.abbreviated(QUOTE_LIMIT),
    };
    let items = form.as_list().ok_or_else(not_a_field)?;
    let (name, args) = items.split_first().ok_or_else(not_a_field)?;
    let name = name.as_atom().ok_or_else(not_a_field)?;
    Ok((name, args, form.pos()))
}

fn unknown_field(
    name: &str,
    pos: Pos,
    within: &'static str,
    known: &'static str,
) -> ConfigErrorKind {
    ConfigErrorKind::UnknownField {
        pos,
        field: name.chars().take(QUOTE_LIMIT).collect(),
        within,
        known,
    }
}

fn bad_field(form: &Sexp, field: &'static str, expected: &'static str) -> ConfigErrorKind {
    ConfigErrorKind::BadField {
        pos: form.pos(),
        field,
        expected,
        found: form.abbreviated(QUOTE_LIMIT),
    }
}

/// The single atom argument of a field.
fn one_atom<'a>(
    args: &'a [Sexp],
    field: &'static str,
    expected: &'static str,
    form: &Sexp,
) -> Result<(&'a str, Pos), ConfigErrorKind> {
    match args {
        [arg] => arg
            .as_atom()
            .map(|text| (text, arg.pos()))
            .ok_or_else(|| bad_field(form, field, expected)),
        _ => Err(bad_field(form, field, expected)),
    }
}

fn path_arg(args: &[Sexp], field: &'static str, form: &Sexp) -> Result<PathBuf, ConfigErrorKind> {
    let (path, _) = one_atom(args, field, "one non-empty path", form)?;
    if path.is_empty() {
        return Err(bad_field(form, field, "one non-empty path"));
    }
    Ok(PathBuf::from(path))
}

fn timeout_arg(args: &[Sexp], form: &Sexp) -> Result<Duration, ConfigErrorKind> {
    let (text, pos) = one_atom(args, "timeout_ms", "(timeout_ms MILLISECONDS)", form)?;
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| ConfigErrorKind::BadTimeout {
            pos,
            found: text.chars().take(QUOTE_LIMIT).collect(),
        })
}

/// Reads a node's fields: its URL and its ranges, each with its position.
fn parse_node(
    fields: &[Sexp],
    pos: Pos,
) -> Result<(NodeUrl, Vec<(KeyRange, Pos)>), ConfigErrorKind> {
    let mut url = Once::new("hostname");
    let mut ranges = Vec::new();
    for form in fields {
        let (name, args, field_pos) = field(form, "a node")?;
        match name {
            "hostname" => {
                let (text, url_pos) = one_atom(args, "hostname", "(hostname URL)", form)?;
                let parsed = text
                    .parse::<NodeUrl>()
                    .map_err(|error| ConfigErrorKind::BadUrl {
                        pos: url_pos,
                        error,
                    })?;
                url.set(parsed, field_pos)?;
            }
            "range" => ranges.push((parse_range(args, form)?, field_pos)),
            _ => return Err(unknown_field(name, field_pos, "a node", NODE_FIELDS)),
        }
    }
    let (url, _) = url.value.ok_or(ConfigErrorKind::MissingHostname { pos })?;
    if ranges.is_empty() {
        return Err(ConfigErrorKind::NoRanges { pos, url });
    }
    Ok((url, ranges))
}

fn parse_range(args: &[Sexp], form: &Sexp) -> Result<KeyRange, ConfigErrorKind> {
    const SHAPE: &str = "(range LO HI) with two hex prefixes";
    let [lo, hi] = args else {
        return Err(bad_field(form, "range", SHAPE));
    };
    let (Some(lo_text), Some(hi_text)) = (lo.as_atom(), hi.as_atom()) else {
        return Err(bad_field(form, "range", SHAPE));
    };
    let first = parse_bound(lo_text, b'0', lo.pos())?;
    let last = parse_bound(hi_text, b'f', hi.pos())?;
    if first > last {
        return Err(ConfigErrorKind::EmptyRange {
            pos: form.pos(),
            lo: lo_text.chars().take(QUOTE_LIMIT).collect(),
            hi: hi_text.chars().take(QUOTE_LIMIT).collect(),
            first: Key::from_bytes(first.to_be_bytes()),
            last: Key::from_bytes(last.to_be_bytes()),
        });
    }
    Ok(KeyRange { first, last })
}

/// A hex prefix (optionally `0x`), padded to 32 digits with `pad`, as a key value.
fn parse_bound(text: &str, pad: u8, pos: Pos) -> Result<u128, ConfigErrorKind> {
    let fail = |reason| ConfigErrorKind::BadBound {
        pos,
        bound: text.chars().take(QUOTE_LIMIT).collect(),
        reason,
    };
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() {
        return Err(fail("a bound needs at least one hex digit"));
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail(
            "only hex digits 0-9 and a-f may follow the optional 0x",
        ));
    }
    if digits.len() > 32 {
        return Err(fail("a key has 32 hex digits; a bound may not have more"));
    }
    let mut padded = [pad; 32];
    padded[..digits.len()].copy_from_slice(digits.as_bytes());
    let padded = std::str::from_utf8(&padded).expect("ASCII hex digits");
    Ok(u128::from_str_radix(padded, 16).expect("32 hex digits fit in a u128"))
}

/// Checks that the claims cover every key exactly once, and builds the routing table: interval
/// starts in ascending order, each with its owner's index.
fn partition(
    nodes: &[Node],
    mut claims: Vec<Claim>,
) -> Result<(Vec<u128>, Vec<usize>), ConfigErrorKind> {
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
        None => Ok((starts, owners)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn key(s: &str) -> Key {
        s.parse().unwrap()
    }

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    fn url(s: &str) -> NodeUrl {
        s.parse().unwrap()
    }

    fn owner_url<'a>(config: &'a ClusterConfig, k: &str) -> &'a str {
        config.owner(&key(k)).url().as_str()
    }

    fn err(text: &str) -> ConfigErrorKind {
        *ClusterConfig::parse(text).unwrap_err().kind
    }

    const HEADER: &str = "(lang dune-distributed-cache 1.0)\n";

    #[test]
    fn the_2020_example() {
        let config = ClusterConfig::parse(
            "(lang dune-distributed-cache 1.0)\n(node (hostname http://zero:8080) (range 0x0000 0xffff))\n",
        )
        .unwrap();
        assert_eq!(config.nodes().len(), 1);
        let node = &config.nodes()[0];
        assert_eq!(node.url().as_str(), "http://zero:8080");
        assert_eq!(node.ranges(), &[KeyRange::ALL]);
        for k in [
            "00000000000000000000000000000000",
            "5ef8de0800908475d94747fef67940ed",
            "ffffffffffffffffffffffffffffffff",
        ] {
            assert_eq!(owner_url(&config, k), "http://zero:8080");
            assert!(node.owns(&key(k)));
        }
        assert_eq!(config.ca_file(), None);
        assert_eq!(config.client_identity(), None);
        assert_eq!(config.timeout(), None);
    }

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
    fn bounds_of_different_lengths_are_prefixes() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (node (hostname http://a) (range 0x0 0x7))
             (node (hostname http://b) (range 0x8 0xbf))
             (node (hostname http://c) (range C0 0XFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF))"
        ))
        .unwrap();
        let cases = [
            ("7fffffffffffffffffffffffffffffff", "http://a"),
            ("80000000000000000000000000000000", "http://b"),
            ("bfffffffffffffffffffffffffffffff", "http://b"),
            ("c0000000000000000000000000000000", "http://c"),
        ];
        for (k, want) in cases {
            assert_eq!(owner_url(&config, k), want, "{k}");
        }
        let b = &config.nodes()[1].ranges()[0];
        assert_eq!(b.first(), key("80000000000000000000000000000000"));
        assert_eq!(b.last(), key("bfffffffffffffffffffffffffffffff"));
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
    fn optional_fields() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (ca_file \"/etc/dune cache/ca.pem\")
             (client_cert certs/me.pem)
             (client_key certs/me.key)
             (timeout_ms 2500)
             (node (hostname https://a) (range 0 f))"
        ))
        .unwrap();
        assert_eq!(config.ca_file(), Some(Path::new("/etc/dune cache/ca.pem")));
        assert_eq!(
            config.client_identity(),
            Some(&ClientIdentity {
                cert: "certs/me.pem".into(),
                key: "certs/me.key".into()
            })
        );
        assert_eq!(config.timeout(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn load_names_the_file_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.sexp");
        std::fs::write(
            &path,
            format!(
                "{HEADER}(ca_file ca.pem)(client_cert /abs/me.pem)(client_key me.key)\n\
                 (node (hostname http://a) (range 0 f))"
            ),
        )
        .unwrap();
        let config = ClusterConfig::load(&path).unwrap();
        assert_eq!(config.ca_file(), Some(dir.path().join("ca.pem").as_path()));
        let id = config.client_identity().unwrap();
        assert_eq!(id.cert, Path::new("/abs/me.pem"));
        assert_eq!(id.key, dir.path().join("me.key"));

        std::fs::write(
            &path,
            format!("{HEADER}(node (hostname http://a) (range 0 7))"),
        )
        .unwrap();
        let e = ClusterConfig::load(&path).unwrap_err();
        assert_eq!(e.path(), Some(path.as_path()));
        assert_eq!(
            e.to_string(),
            format!(
                "cluster config {}: no node owns keys 80000000000000000000000000000000 \
                 to ffffffffffffffffffffffffffffffff",
                path.display()
            )
        );

        let missing = dir.path().join("absent");
        let e = ClusterConfig::load(&missing).unwrap_err();
        assert!(matches!(e.kind(), ConfigErrorKind::Read { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn load_refuses_big_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES + 1]).unwrap();
        let e = ClusterConfig::load(&path).unwrap_err();
        assert!(matches!(e.kind(), ConfigErrorKind::TooLarge { .. }), "{e}");
        std::fs::write(&path, b"(lang\n  dune-\xffdistributed-cache 1.0)").unwrap();
        let e = ClusterConfig::load(&path).unwrap_err();
        assert!(
            matches!(e.kind(), ConfigErrorKind::NotUtf8 { pos } if *pos == at(2, 8)),
            "{e}"
        );
        assert!(matches!(
            err(&" ".repeat(MAX_CONFIG_BYTES + 1)),
            ConfigErrorKind::TooLarge { .. }
        ));
    }

    #[test]
    fn single_owns_everything() {
        let config = ClusterConfig::single(url("http://solo:8080/"));
        assert_eq!(
            owner_url(&config, "00000000000000000000000000000000"),
            "http://solo:8080"
        );
        assert_eq!(
            owner_url(&config, "ffffffffffffffffffffffffffffffff"),
            "http://solo:8080"
        );
        assert!(config.node_by_url(&url("http://solo:8080")).is_some());
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

    #[test]
    fn lang_must_come_first() {
        assert!(matches!(err(""), ConfigErrorKind::Empty));
        assert!(matches!(err("; only a comment\n"), ConfigErrorKind::Empty));
        let e = err("(node (hostname http://a) (range 0 f))");
        assert_eq!(
            e.to_string(),
            "1:1: the first form must be (lang dune-distributed-cache 1.0), found \
             (node (hostname http://a) (range 0 f))"
        );
        assert!(matches!(
            err("(lang dune 3.0)"),
            ConfigErrorKind::NotLang { .. }
        ));
        let e = err("(lang dune-distributed-cache 2.0)");
        assert_eq!(
            e.to_string(),
            "1:30: unsupported dune-distributed-cache version \"2.0\" (this build reads 1.0)"
        );
        let e = err(&format!("{HEADER}(lang dune-distributed-cache 1.0)"));
        assert!(matches!(e, ConfigErrorKind::UnknownField { .. }), "{e:?}");
    }

    #[test]
    fn unknown_fields_are_named_with_their_place() {
        let e = err(&format!("{HEADER}(nodes (hostname http://a) (range 0 f))"));
        assert_eq!(
            e.to_string(),
            "2:1: unknown field `nodes` in the config (known: node, ca_file, client_cert, \
             client_key, timeout_ms)"
        );
        let e = err(&format!(
            "{HEADER}(node\n  (hostname http://a)\n  (rnage 0 f))"
        ));
        assert_eq!(
            e.to_string(),
            "4:3: unknown field `rnage` in a node (known: hostname, range)"
        );
        let e = err(&format!("{HEADER}node"));
        assert!(
            matches!(e, ConfigErrorKind::NotAField { pos, .. } if pos == at(2, 1)),
            "{e:?}"
        );
        let e = err(&format!("{HEADER}(node (hostname http://a) ())"));
        assert!(matches!(e, ConfigErrorKind::NotAField { .. }), "{e:?}");
    }

    #[test]
    fn malformed_fields() {
        let cases = [
            "(node (hostname) (range 0 f))",
            "(node (hostname http://a http://b) (range 0 f))",
            "(node (hostname (http://a)) (range 0 f))",
            "(node (hostname http://a) (range 0))",
            "(node (hostname http://a) (range 0 f f))",
            "(node (hostname http://a) (range (0) f))",
            "(ca_file)",
            "(ca_file \"\")",
            "(timeout_ms)",
        ];
        for nodes in cases {
            let e = err(&format!("{HEADER}{nodes}"));
            assert!(
                matches!(e, ConfigErrorKind::BadField { .. }),
                "{nodes}: {e:?}"
            );
        }
        for bad in ["0", "-5", "1.5", "+7", "99999999999999999999", "ten"] {
            let e = err(&format!("{HEADER}(timeout_ms {bad})"));
            assert!(
                matches!(e, ConfigErrorKind::BadTimeout { .. }),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn bad_bounds() {
        let cases = [
            ("0xg000", "only hex digits"),
            ("0x", "at least one hex digit"),
            ("-1", "only hex digits"),
            ("0x000000000000000000000000000000000", "may not have more"),
        ];
        for (bound, reason) in cases {
            let e = err(&format!(
                "{HEADER}(node (hostname http://a) (range {bound} f))"
            ));
            assert!(
                matches!(&e, ConfigErrorKind::BadBound { pos, bound: b, .. }
                    if *pos == at(2, 34) && b == bound),
                "{bound}: {e:?}"
            );
            assert!(e.to_string().contains(reason), "{bound}: {e}");
        }
    }

    #[test]
    fn start_above_end_is_refused() {
        let e = err(&format!(
            "{HEADER}(node (hostname http://a) (range 0x8 0x7f))"
        ));
        assert_eq!(
            e.to_string(),
            "2:27: empty range: start 0x8 (key 80000000000000000000000000000000) is above end \
             0x7f (key 7fffffffffffffffffffffffffffffff)"
        );
        // Prefixes compare after padding: `0x80 .. 0x8` is the non-empty 80…0 to 8f…f.
        let config = ClusterConfig::parse(&format!(
            "{HEADER}(node (hostname http://a) (range 0x0 0x7f) (range 0x80 0x8) (range 0x9 0xf))"
        ))
        .unwrap();
        assert_eq!(
            owner_url(&config, "8fffffffffffffffffffffffffffffff"),
            "http://a"
        );
    }

    #[test]
    fn node_shape_errors() {
        let e = err(&format!("{HEADER}(node (range 0 f))"));
        assert!(
            matches!(e, ConfigErrorKind::MissingHostname { pos } if pos == at(2, 1)),
            "{e:?}"
        );
        let e = err(&format!("{HEADER}(node (hostname http://a))"));
        assert_eq!(e.to_string(), "2:1: node http://a has no (range LO HI)");
        let e = err(&format!(
            "{HEADER}(node (hostname http://a) (hostname http://b) (range 0 f))"
        ));
        assert_eq!(
            e.to_string(),
            "2:27: `hostname` is given twice (first at 2:7)"
        );
        let e = err(&format!(
            "{HEADER}(node (hostname http://a:80/) (range 0 7))\n(node (hostname HTTP://A:80) (range 8 f))"
        ));
        assert_eq!(
            e.to_string(),
            "3:1: node http://a:80 is listed twice (first at 2:1)"
        );
    }

    #[test]
    fn global_field_errors() {
        let e = err(&format!("{HEADER}(timeout_ms 5)\n(timeout_ms 6)"));
        assert!(
            matches!(e, ConfigErrorKind::DuplicateField { field: "timeout_ms", pos, first }
                if pos == at(3, 1) && first == at(2, 1)),
            "{e:?}"
        );
        let e = err(&format!(
            "{HEADER}(client_key k.pem)(node (hostname https://a) (range 0 f))"
        ));
        assert_eq!(
            e.to_string(),
            "2:1: `client_key` is given without `client_cert`: a client identity needs both"
        );
        let e = err(&format!("{HEADER}(client_cert c.pem)"));
        assert!(matches!(
            e,
            ConfigErrorKind::HalfIdentity {
                given: "client_cert",
                ..
            }
        ));
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = err(&format!("{HEADER}(node (hostname \"http://a) (range 0 f))"));
        assert_eq!(
            e.to_string(),
            "2:17: unterminated string (a quoted atom must end on the line it starts on)"
        );
        let e = err(&format!(
            "{HEADER}(node (hostname http://a)\n  (range 0 f)\n"
        ));
        assert_eq!(
            e.to_string(),
            "2:1: unterminated list: this `(` is never closed"
        );
        assert_eq!(
            ClusterConfig::parse(&format!("{HEADER})"))
                .unwrap_err()
                .to_string(),
            "cluster config: 2:1: unexpected `)` with no `(` to close"
        );
    }

    #[test]
    fn node_urls() {
        for (input, want) in [
            ("http://zero:8080", "http://zero:8080"),
            ("http://zero:8080/", "http://zero:8080"),
            ("HTTPS://Box.Example//", "https://box.example"),
            ("https://proxy/Dune/Cache/", "https://proxy/Dune/Cache"),
            ("http://[::1]:8080/", "http://[::1]:8080"),
            ("http://10.0.0.1", "http://10.0.0.1"),
        ] {
            assert_eq!(url(input).as_str(), want, "{input}");
        }
        for (input, reason) in [
            ("zero:8080", "starts with http"),
            ("ftp://zero", "starts with http"),
            ("http://", "needs a host"),
            ("http:///x", "needs a host"),
            ("http://:8080", "needs a host"),
            ("http://a:0", "port"),
            ("http://a:99999", "port"),
            ("http://a:", "port"),
            ("http://a:8o", "port"),
            ("http://a b", "whitespace"),
            ("http://a/?x=1", "query"),
            ("http://a/#top", "query"),
            ("http://user:pw@a", "credentials"),
            ("http://[::1", "closing"),
            ("http://[::1]x", "only `:port`"),
        ] {
            let e = input.parse::<NodeUrl>().unwrap_err();
            assert!(e.reason.contains(reason), "{input}: {e}");
            assert_eq!(e.input, input);
        }
        let e = err(&format!("{HEADER}(node (hostname zero:8080) (range 0 f))"));
        assert_eq!(
            e.to_string(),
            "2:17: bad node URL \"zero:8080\": a node URL starts with http:// or https://"
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
