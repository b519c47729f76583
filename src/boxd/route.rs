//! What a request path means to a box: a pure function from the raw path to a [`Route`], so the
//! rules that keep a box inside its root are tested without a server.
//!
//! Only exact forms are accepted (see `docs/protocol.md`). No path from a request is ever joined to
//! the box's root: an entry's file path is rebuilt from its parsed [`Entry`], so `..`, `%2e%2e`,
//! doubled slashes and the like cannot reach the filesystem; they are refused with 400.

use crate::dune::key::{Key, Shard};
use crate::dune::layout::{Entry, EntryKind};

/// What a request path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// One entry: `/<kind dir>/<hh>/<key>`.
    Entry(Entry),
    /// The hint of a rule's metadata entry: `/_hints/meta/<v>/<hh>/<key>`.
    Hint(Entry),
    /// A shard listing: `/<kind dir>/<hh>/`.
    Listing(EntryKind, Shard),
    /// The shards of a kind holding entries: `/<kind dir>/`.
    Shards(EntryKind),
    /// `/_status`.
    Status,
    /// `/metrics`: the counters in the Prometheus text format.
    Metrics,
    /// `/_collisions`.
    Collisions,
    /// `/_trim`.
    Trim,
    /// `/_drop`: remove what the box does not own.
    Drop,
}

/// Why a path is refused (HTTP 400), in words for the answer's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPath(pub String);

/// Longest path worth reading: every valid one is far shorter, so a longer one is refused before
/// any work is done on it.
const MAX_PATH: usize = 128;

/// Parses the path (and query) of a request URI.
pub fn parse(path: &str, query: Option<&str>) -> Result<Route, BadPath> {
    let bad = |why: &str| Err(BadPath(why.to_string()));
    if path.len() > MAX_PATH {
        return bad("path too long");
    }
    if query.is_some() {
        return bad("no request takes a query string");
    }
    if let Some(rest) = path.strip_prefix("/_hints/") {
        return match parse(&format!("/{rest}"), None)? {
            Route::Entry(entry) if entry.kind != EntryKind::File => Ok(Route::Hint(entry)),
            _ => bad("expected /_hints/meta/v4|v5/<hh>/<key>"),
        };
    }
    match path {
        "/_status" => return Ok(Route::Status),
        "/metrics" => return Ok(Route::Metrics),
        "/_collisions" => return Ok(Route::Collisions),
        "/_trim" => return Ok(Route::Trim),
        "/_drop" => return Ok(Route::Drop),
        _ => {}
    }
    let Some(rest) = path.strip_prefix('/') else {
        return bad("path must start with /");
    };
    let mut parts = rest.split('/');
    let (Some(top), Some(version), Some(shard), last, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return bad(
            "expected /files/v4/<hh>/<key>, /meta/v4|v5/<hh>/<key>, or a listing (<kind>/ or <hh>/)",
        );
    };
    let Some(last) = last else {
        // `/<kind dir>/` splits into three parts, the last one empty.
        if !shard.is_empty() {
            return bad("expected /files/v4/<hh>/<key>, /meta/v4|v5/<hh>/<key>, or a listing (<kind>/ or <hh>/)");
        }
        return EntryKind::from_components(top, version)
            .map(Route::Shards)
            .ok_or_else(|| {
                BadPath("unknown entry kind: expected files/v4, meta/v4 or meta/v5".into())
            });
    };
    let Some(kind) = EntryKind::from_components(top, version) else {
        return bad("unknown entry kind: expected files/v4, meta/v4 or meta/v5");
    };
    let Some(shard) = Shard::from_name(shard) else {
        return bad("a shard is two lowercase hex characters");
    };
    if last.is_empty() {
        return Ok(Route::Listing(kind, shard));
    }
    let key: Key = match last.parse() {
        Ok(key) => key,
        Err(e) => return Err(BadPath(e.to_string())),
    };
    if key.shard() != shard {
        return Err(BadPath(format!(
            "key {key} does not belong in shard {shard}"
        )));
    }
    Ok(Route::Entry(Entry { kind, key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    const KEY: &str = "ab23456789abcdef0123456789abcdef";

    #[test]
    fn entries_listings_and_service_paths() {
        let key: Key = KEY.parse().unwrap();
        assert_eq!(
            parse(&format!("/files/v4/ab/{KEY}"), None),
            Ok(Route::Entry(Entry {
                kind: EntryKind::File,
                key
            }))
        );
        assert_eq!(
            parse(&format!("/meta/v5/ab/{KEY}"), None),
            Ok(Route::Entry(Entry {
                kind: EntryKind::Meta(MetaVersion::V5),
                key
            }))
        );
        assert_eq!(
            parse("/meta/v4/0f/", None),
            Ok(Route::Listing(
                EntryKind::Meta(MetaVersion::V4),
                Shard(0x0f)
            ))
        );
        assert_eq!(
            parse("/files/v4/", None),
            Ok(Route::Shards(EntryKind::File))
        );
        assert_eq!(parse("/_status", None), Ok(Route::Status));
        assert_eq!(parse("/metrics", None), Ok(Route::Metrics));
        assert_eq!(parse("/_collisions", None), Ok(Route::Collisions));
        assert_eq!(parse("/_trim", None), Ok(Route::Trim));
        assert_eq!(parse("/_drop", None), Ok(Route::Drop));
        assert_eq!(
            parse(&format!("/_hints/meta/v4/ab/{KEY}"), None),
            Ok(Route::Hint(Entry {
                kind: EntryKind::Meta(MetaVersion::V4),
                key
            }))
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for path in [
            "",
            "/",
            "files/v4/ab/ab23456789abcdef0123456789abcdef",
            "/files/v4/ab",
            "/files/v4",
            "/files/v9/",
            "/files/v4/ab/ab23456789abcdef0123456789abcdef/",
            "/files/v4//ab23456789abcdef0123456789abcdef",
            "/files/v4/cd/ab23456789abcdef0123456789abcdef",
            "/files/v4/ab/AB23456789abcdef0123456789abcdef",
            "/files/v4/ab/../../../../etc/passwd",
            "/files/v4/ab/..%2f..%2fetc%2fpasswd",
            "/files/v4/%61b/ab23456789abcdef0123456789abcdef",
            "/files/v3/ab/ab23456789abcdef0123456789abcdef",
            "/meta/v6/ab/ab23456789abcdef0123456789abcdef",
            "/.dune-cachefs-tmp/ab/ab23456789abcdef0123456789abcdef",
            "/_hints/files/v4/ab/ab23456789abcdef0123456789abcdef",
            "/_hints/meta/v4/ab/",
            "/_hints/meta/v4/",
            "/_hints/meta/v4/cd/ab23456789abcdef0123456789abcdef",
            "/_hints/_hints/meta/v4/ab/ab23456789abcdef0123456789abcdef",
            "/_hints/_status",
            "/_status/",
            "/metrics/",
            "/_metrics",
            "/files/v4/ab/ab23456789abcdef0123456789abcdef0000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse(path, None).is_err(), "{path:?} must be refused");
        }
        assert!(parse(&format!("/files/v4/ab/{KEY}"), Some("x=1")).is_err());
    }
}
