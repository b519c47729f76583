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
//! # While boxes are added or removed
//!
//! A config may name the table it replaces, `(previous (node ...) ...)`, checked like its own
//! (its nodes may be boxes or buckets alike):
//! while entries move to their new owners, readers ask a key's previous owner when its owner
//! misses, and [`ClusterConfig::moves`] lists the ranges whose owner changed, for `rebalance`.
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
//!
//! # Modules
//!
//! Each uses only those before it: `node_url` (a box's URL), `s3_bucket` (an S3 bucket node's
//! settings and URL), `error` (what can be wrong), `range_table` (key ranges, nodes, and the
//! partition they must make), `fields` (each form's shape and value). This module reads the file and puts the fields together into a
//! [`ClusterConfig`].

mod error;
mod fields;
mod node_url;
mod range_table;
mod s3_bucket;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sexp::{self, Sexp};
pub use super::sexp::{Pos, SyntaxError, MAX_DEPTH};
use crate::dune::key::Key;
pub use error::{ConfigError, ConfigErrorKind, LANG, LANG_VERSION, MAX_CONFIG_BYTES};
use fields::{check_lang, field, parse_node, path_arg, timeout_arg, unknown_field, Once};
pub use node_url::{NodeUrl, UrlError};
use range_table::{Claim, RangeTable};
pub use range_table::{KeyRange, Node};
pub use s3_bucket::{S3Bucket, UrlStyle, DEFAULT_REGION};

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
    /// Which of `nodes` owns each key.
    table: RangeTable,
    /// The table this one replaces, while entries move: `(previous (node ...) ...)`.
    previous: Option<Previous>,
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
                s3: None,
            }],
            table: RangeTable::single(),
            previous: None,
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
        self.table.owner_index(key)
    }

    /// The node with this URL, if the config has one: how a box started with `--node URL`
    /// learns which keys it owns.
    pub fn node_by_url(&self, url: &NodeUrl) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.url == url)
    }

    /// The nodes of the table this config replaces (its `previous` block), in the order it lists
    /// them; empty when the config names none.
    pub fn previous_nodes(&self) -> &[Node] {
        self.previous.as_ref().map_or(&[], |p| &p.nodes)
    }

    /// The position in [`ClusterConfig::previous_nodes`] of the node that owned `key` under
    /// the previous table, if the config names one.
    pub fn previous_owner_index(&self, key: &Key) -> Option<usize> {
        Some(self.previous.as_ref()?.table.owner_index(key))
    }

    /// The node that owned `key` under the previous table, if the config names one.
    pub fn previous_owner(&self, key: &Key) -> Option<&Node> {
        Some(&self.previous_nodes()[self.previous_owner_index(key)?])
    }

    /// The node of the previous table with this URL, if any: what a box that is leaving the
    /// cluster, or whose ranges change, still serves while its entries move.
    pub fn previous_node_by_url(&self, url: &NodeUrl) -> Option<&Node> {
        self.previous_nodes().iter().find(|n| &n.url == url)
    }

    /// The key ranges whose owner changes from the previous table to this one, in key order,
    /// each with its previous owner and its new one (adjacent ranges with the same two owners
    /// are one). Empty when the config names no previous table.
    pub fn moves(&self) -> Vec<Move> {
        let Some(previous) = &self.previous else {
            return Vec::new();
        };
        let mut starts: Vec<u128> = self.table.starts().to_vec();
        starts.extend_from_slice(previous.table.starts());
        starts.sort_unstable();
        starts.dedup();
        let mut moves: Vec<Move> = Vec::new();
        for (i, &first) in starts.iter().enumerate() {
            let last = starts.get(i + 1).map_or(u128::MAX, |next| next - 1);
            let (from, to) = (previous.table.owner_at(first), self.table.owner_at(first));
            if previous.nodes[from].url == self.nodes[to].url {
                continue;
            }
            match moves.last_mut() {
                Some(m)
                    if m.from == from
                        && m.to == to
                        && m.range.last.checked_add(1) == Some(first) =>
                {
                    m.range.last = last;
                }
                _ => moves.push(Move {
                    range: KeyRange { first, last },
                    from,
                    to,
                }),
            }
        }
        moves
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

const TOP_FIELDS: &str = "node, ca_file, client_cert, client_key, timeout_ms, previous";

/// The table a config replaces while entries move to their new owners.
#[derive(Clone, Debug)]
struct Previous {
    nodes: Vec<Node>,
    table: RangeTable,
}

/// A range of keys whose owner changes: `from` (an index in
/// [`ClusterConfig::previous_nodes`]) owned it, `to` (an index in [`ClusterConfig::nodes`])
/// owns it now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Move {
    /// The keys.
    pub range: KeyRange,
    /// Their previous owner.
    pub from: usize,
    /// Their owner now.
    pub to: usize,
}

/// Nodes as they are read, with what checking their partition of the keys needs.
#[derive(Default)]
struct NodeList {
    nodes: Vec<Node>,
    positions: Vec<Pos>,
    claims: Vec<Claim>,
}

impl NodeList {
    /// Reads one `(node ...)` form's fields.
    fn add(&mut self, args: &[Sexp], pos: Pos) -> Result<(), ConfigErrorKind> {
        let (url, s3, ranges) = parse_node(args, pos)?;
        if let Some(i) = self.nodes.iter().position(|n| n.url == url) {
            return Err(ConfigErrorKind::DuplicateNode {
                pos,
                url,
                first: self.positions[i],
            });
        }
        self.claims.extend(ranges.iter().map(|&(range, pos)| Claim {
            range,
            node: self.nodes.len(),
            pos,
        }));
        self.nodes.push(Node {
            url,
            ranges: ranges.into_iter().map(|(r, _)| r).collect(),
            s3,
        });
        self.positions.push(pos);
        Ok(())
    }

    /// The nodes and their table, once every key is checked to have exactly one owner.
    fn into_table(self) -> Result<(Vec<Node>, RangeTable), ConfigErrorKind> {
        let table = RangeTable::partition(&self.nodes, self.claims)?;
        Ok((self.nodes, table))
    }
}

/// Reads a `(previous (node ...) ...)` block: a whole table of its own, checked like the
/// config's.
fn parse_previous(forms: &[Sexp], pos: Pos) -> Result<Previous, ConfigErrorKind> {
    const WITHIN: &str = "the previous table";
    let mut nodes = NodeList::default();
    for form in forms {
        let (name, args, field_pos) = field(form, WITHIN)?;
        match name {
            "node" => nodes.add(args, field_pos)?,
            _ => return Err(unknown_field(name, field_pos, WITHIN, "node")),
        }
    }
    let (nodes, table) = nodes
        .into_table()
        .map_err(|inner| ConfigErrorKind::InPrevious {
            pos,
            inner: Box::new(inner),
        })?;
    Ok(Previous { nodes, table })
}

fn parse_text(text: &str) -> Result<ClusterConfig, ConfigErrorKind> {
    check_size(text.len())?;
    let forms = sexp::parse(text)?;
    let (lang, rest) = forms.split_first().ok_or(ConfigErrorKind::Empty)?;
    check_lang(lang)?;

    let mut nodes = NodeList::default();
    let mut previous = Once::new("previous");
    let mut ca_file = Once::new("ca_file");
    let mut client_cert = Once::new("client_cert");
    let mut client_key = Once::new("client_key");
    let mut timeout = Once::new("timeout_ms");
    for form in rest {
        let (name, args, pos) = field(form, "the config")?;
        match name {
            "node" => nodes.add(args, pos)?,
            "previous" => previous.set(parse_previous(args, pos)?, pos)?,
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
    let (nodes, table) = nodes.into_table()?;
    Ok(ClusterConfig {
        nodes,
        table,
        previous: previous.value.map(|(v, _)| v),
        ca_file: ca_file.value.map(|(v, _)| v),
        client_identity,
        timeout: timeout.value.map(|(v, _)| v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn key(s: &str) -> Key {
        s.parse().unwrap()
    }

    pub(super) fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    pub(super) fn url(s: &str) -> NodeUrl {
        s.parse().unwrap()
    }

    pub(super) fn owner_url<'a>(config: &'a ClusterConfig, k: &str) -> &'a str {
        config.owner(&key(k)).url().as_str()
    }

    pub(super) fn err(text: &str) -> ConfigErrorKind {
        *ClusterConfig::parse(text).unwrap_err().kind
    }

    pub(super) const HEADER: &str = "(lang dune-distributed-cache 1.0)\n";

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

    /// Three boxes grow to four: the new box takes the top half of the last one's keys.
    const GROWN: &str = "(lang dune-distributed-cache 1.0)
        (node (hostname http://a) (range 0x00 0x54))
        (node (hostname http://b) (range 0x55 0xa9))
        (node (hostname http://c) (range 0xaa 0xd4))
        (node (hostname http://d) (range 0xd5 0xff))
        (previous
          (node (hostname http://a) (range 0x00 0x54))
          (node (hostname http://b) (range 0x55 0xa9))
          (node (hostname http://c) (range 0xaa 0xff)))";

    #[test]
    fn a_previous_table_names_each_keys_former_owner() {
        let config = ClusterConfig::parse(GROWN).unwrap();
        assert_eq!(config.nodes().len(), 4);
        assert_eq!(config.previous_nodes().len(), 3);
        let k = "e0000000000000000000000000000000";
        assert_eq!(owner_url(&config, k), "http://d");
        assert_eq!(
            config.previous_owner(&key(k)).unwrap().url().as_str(),
            "http://c"
        );
        assert!(config.previous_node_by_url(&url("http://d")).is_none());
        assert_eq!(
            config
                .previous_node_by_url(&url("http://c"))
                .unwrap()
                .ranges(),
            &[KeyRange {
                first: 0xaa << 120,
                last: u128::MAX
            }]
        );
        // Only the keys whose owner changed move.
        assert_eq!(
            config.moves(),
            vec![Move {
                range: KeyRange {
                    first: 0xd5 << 120,
                    last: u128::MAX
                },
                from: 2,
                to: 3
            }]
        );
        let plain = ClusterConfig::parse(
            "(lang dune-distributed-cache 1.0) (node (hostname http://a) (range 0 f))",
        )
        .unwrap();
        assert!(plain.previous_nodes().is_empty());
        assert!(plain.previous_owner(&key(k)).is_none());
        assert!(plain.moves().is_empty());
    }

    #[test]
    fn shrinking_moves_a_leaving_nodes_keys_to_both_neighbours() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (node (hostname http://a) (range 0x00 0x7f))
             (node (hostname http://c) (range 0x80 0xff))
             (previous
               (node (hostname http://a) (range 0x00 0x54))
               (node (hostname http://b) (range 0x55 0xa9))
               (node (hostname http://c) (range 0xaa 0xff)))"
        ))
        .unwrap();
        let moves: Vec<(String, String, String)> = config
            .moves()
            .iter()
            .map(|m| {
                (
                    m.range.to_string(),
                    config.previous_nodes()[m.from].url().to_string(),
                    config.nodes()[m.to].url().to_string(),
                )
            })
            .collect();
        let range = |a: &str, b: &str| format!("{a:0<32} to {b:f<32}");
        assert_eq!(
            moves,
            vec![
                (range("55", "7f"), "http://b".into(), "http://a".into()),
                (range("80", "a9"), "http://b".into(), "http://c".into()),
            ]
        );
    }

    #[test]
    fn a_bucket_may_be_a_previous_owner() {
        let bucket = "(s3 (endpoint http://127.0.0.1:8333) (bucket cache))";
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (node {bucket} (range 0x00 0x7f))
             (node (hostname http://box) (range 0x80 0xff))
             (previous (node {bucket} (range 0 f)))"
        ))
        .unwrap();
        let previous = config
            .previous_owner(&key("90000000000000000000000000000000"))
            .unwrap();
        assert!(previous.s3().is_some());
        assert_eq!(previous.url(), config.nodes()[0].url());
        assert_eq!(
            config.moves(),
            vec![Move {
                range: KeyRange {
                    first: 0x80 << 120,
                    last: u128::MAX
                },
                from: 0,
                to: 1
            }]
        );
    }

    #[test]
    fn a_previous_table_is_checked_like_the_config() {
        let nodes = "(node (hostname http://a) (range 0 f))\n";
        let e = err(&format!(
            "{HEADER}{nodes}(previous\n (node (hostname http://a) (range 0 7)))"
        ));
        assert_eq!(
            e.to_string(),
            "in the previous table at 3:1: no node owns keys 80000000000000000000000000000000 \
             to ffffffffffffffffffffffffffffffff"
        );
        let e = err(&format!(
            "{HEADER}{nodes}(previous (nod (hostname http://a)))"
        ));
        assert_eq!(
            e.to_string(),
            "3:11: unknown field `nod` in the previous table (known: node)"
        );
        let e = err(&format!(
            "{HEADER}{nodes}(previous {nodes})\n(previous {nodes})"
        ));
        assert!(
            matches!(
                e,
                ConfigErrorKind::DuplicateField {
                    field: "previous",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = err(&format!("{HEADER}{nodes}(previous)"));
        assert!(matches!(e, ConfigErrorKind::InPrevious { .. }), "{e:?}");
    }
}
