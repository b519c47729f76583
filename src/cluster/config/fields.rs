//! Reading a config's forms: each field's shape and value, and the error naming where one is
//! wrong.
//!
//! Apart from the config itself because it is all syntax: it turns the S-expressions into
//! checked values (URLs, key ranges, paths, a timeout) and knows nothing of how they are put
//! together or what owns which key.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigErrorKind, LANG, LANG_VERSION};
use super::node_url::{NodeUrl, QUOTE_LIMIT};
use super::range_table::KeyRange;
use super::s3_bucket::{S3Bucket, UrlStyle};
use crate::cluster::sexp::{Pos, Sexp};
use crate::dune::key::Key;

const NODE_FIELDS: &str = "hostname, s3, range";
const S3_FIELDS: &str = "endpoint, bucket, region, prefix, url_style";

/// A singleton field's value and where it was given, to report a second one.
pub(super) struct Once<T> {
    field: &'static str,
    pub(super) value: Option<(T, Pos)>,
}

impl<T> Once<T> {
    pub(super) fn new(field: &'static str) -> Once<T> {
        Once { field, value: None }
    }

    pub(super) fn set(&mut self, value: T, pos: Pos) -> Result<(), ConfigErrorKind> {
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

pub(super) fn check_lang(form: &Sexp) -> Result<(), ConfigErrorKind> {
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
pub(super) fn field<'a>(
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

pub(super) fn unknown_field(
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

pub(super) fn bad_field(
    form: &Sexp,
    field: &'static str,
    expected: &'static str,
) -> ConfigErrorKind {
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

pub(super) fn path_arg(
    args: &[Sexp],
    field: &'static str,
    form: &Sexp,
) -> Result<PathBuf, ConfigErrorKind> {
    let (path, _) = one_atom(args, field, "one non-empty path", form)?;
    if path.is_empty() {
        return Err(bad_field(form, field, "one non-empty path"));
    }
    Ok(PathBuf::from(path))
}

pub(super) fn timeout_arg(args: &[Sexp], form: &Sexp) -> Result<Duration, ConfigErrorKind> {
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

/// A node as read: its URL, the bucket it is if it is one, and its ranges with their positions.
pub(super) type ParsedNode = (NodeUrl, Option<S3Bucket>, Vec<(KeyRange, Pos)>);

/// Reads a node's fields: its URL (a box's, or a bucket's), the bucket if it is one, and its
/// ranges, each with its position.
pub(super) fn parse_node(fields: &[Sexp], pos: Pos) -> Result<ParsedNode, ConfigErrorKind> {
    let mut url = Once::new("hostname");
    let mut bucket = Once::new("s3");
    let mut ranges = Vec::new();
    for form in fields {
        let (name, args, field_pos) = field(form, "a node")?;
        match name {
            "hostname" => url.set(
                url_arg(args, "hostname", "(hostname URL)", form)?,
                field_pos,
            )?,
            "s3" => bucket.set(parse_s3(args, field_pos)?, field_pos)?,
            "range" => ranges.push((parse_range(args, form)?, field_pos)),
            _ => return Err(unknown_field(name, field_pos, "a node", NODE_FIELDS)),
        }
    }
    let (url, bucket) = match (url.value, bucket.value) {
        (Some((url, _)), None) => (url, None),
        (None, Some((bucket, _))) => (bucket.node_url(), Some(bucket)),
        (None, None) => return Err(ConfigErrorKind::MissingHostname { pos }),
        (Some(_), Some((_, s3_pos))) => {
            return Err(ConfigErrorKind::BadS3 {
                pos: s3_pos,
                reason: "a node is a box (hostname) or a bucket (s3), not both".into(),
            })
        }
    };
    if ranges.is_empty() {
        return Err(ConfigErrorKind::NoRanges { pos, url });
    }
    Ok((url, bucket, ranges))
}

/// A URL field's one atom, checked.
fn url_arg(
    args: &[Sexp],
    field: &'static str,
    expected: &'static str,
    form: &Sexp,
) -> Result<NodeUrl, ConfigErrorKind> {
    let (text, url_pos) = one_atom(args, field, expected, form)?;
    text.parse::<NodeUrl>()
        .map_err(|error| ConfigErrorKind::BadUrl {
            pos: url_pos,
            error,
        })
}

/// Reads an `(s3 (endpoint URL) (bucket NAME) (region R) (prefix P) (url_style S))` form.
fn parse_s3(fields: &[Sexp], pos: Pos) -> Result<S3Bucket, ConfigErrorKind> {
    let mut endpoint = Once::new("endpoint");
    let mut bucket = Once::new("bucket");
    let mut region = Once::new("region");
    let mut prefix = Once::new("prefix");
    let mut style = Once::new("url_style");
    for form in fields {
        let (name, args, field_pos) = field(form, "an s3 node")?;
        let text = |expected| one_atom(args, "s3", expected, form).map(|(t, _)| t.to_string());
        match name {
            "endpoint" => endpoint.set(
                url_arg(args, "endpoint", "(endpoint URL)", form)?,
                field_pos,
            )?,
            "bucket" => bucket.set(text("(bucket NAME)")?, field_pos)?,
            "region" => region.set(text("(region NAME)")?, field_pos)?,
            "prefix" => prefix.set(text("(prefix PATH)")?, field_pos)?,
            "url_style" => {
                let parsed = match text("(url_style path|virtual_host)")?.as_str() {
                    "path" => UrlStyle::Path,
                    "virtual_host" => UrlStyle::VirtualHost,
                    _ => return Err(bad_field(form, "url_style", "path or virtual_host")),
                };
                style.set(parsed, field_pos)?
            }
            _ => return Err(unknown_field(name, field_pos, "an s3 node", S3_FIELDS)),
        }
    }
    let (bucket, _) = bucket.value.ok_or_else(|| ConfigErrorKind::BadS3 {
        pos,
        reason: "an s3 node needs (bucket NAME)".into(),
    })?;
    S3Bucket::new(
        endpoint.value.map(|(v, _)| v),
        bucket,
        region.value.map(|(v, _)| v),
        prefix.value.map(|(v, _)| v),
        style.value.map(|(v, _)| v),
    )
    .map_err(|reason| ConfigErrorKind::BadS3 { pos, reason })
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

#[cfg(test)]
mod tests {
    use crate::cluster::config::tests::{at, err, key, owner_url, HEADER};
    use crate::cluster::config::{ClusterConfig, ConfigErrorKind, UrlStyle};

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
             client_key, timeout_ms, previous)"
        );
        let e = err(&format!(
            "{HEADER}(node\n  (hostname http://a)\n  (rnage 0 f))"
        ));
        assert_eq!(
            e.to_string(),
            "4:3: unknown field `rnage` in a node (known: hostname, s3, range)"
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
    fn bad_node_urls_name_their_place() {
        let e = err(&format!("{HEADER}(node (hostname zero:8080) (range 0 f))"));
        assert_eq!(
            e.to_string(),
            "2:17: bad node URL \"zero:8080\": a node URL starts with http:// or https://"
        );
    }

    #[test]
    fn s3_nodes() {
        let config = ClusterConfig::parse(&format!(
            "{HEADER}
             (node (s3 (endpoint http://127.0.0.1:8333/) (bucket cache) (region eu-west-1)
                       (prefix /team/a/)) (range 0 7))
             (node (s3 (bucket other)) (range 8 f))"
        ))
        .unwrap();
        let bucket = config.nodes()[0].s3().expect("an s3 node");
        assert_eq!(bucket.endpoint().as_str(), "http://127.0.0.1:8333");
        assert_eq!(
            (bucket.bucket(), bucket.region(), bucket.prefix()),
            ("cache", "eu-west-1", "team/a")
        );
        assert_eq!(bucket.style(), UrlStyle::Path);
        assert_eq!(
            owner_url(&config, "00000000000000000000000000000000"),
            "http://127.0.0.1:8333/cache/team/a"
        );
        assert_eq!(
            owner_url(&config, "80000000000000000000000000000000"),
            "https://other.s3.us-east-1.amazonaws.com"
        );
        assert!(config.nodes()[1].s3().is_some());

        for (node, want) in [
            (
                "(node (hostname http://a) (s3 (bucket abc)) (range 0 f))",
                "3:27: bad s3 node: a node is a box (hostname) or a bucket (s3), not both",
            ),
            (
                "(node (s3 (endpoint http://a)) (range 0 f))",
                "3:7: bad s3 node: an s3 node needs (bucket NAME)",
            ),
            (
                "(node (s3 (bucket Cache)) (range 0 f))",
                "3:7: bad s3 node: bucket name \"Cache\" must be 3 to 63 lowercase letters, \
                 digits, `.` or `-`, beginning and ending with a letter or digit",
            ),
            (
                "(node (s3 (bucket abc) (acl private)) (range 0 f))",
                "3:24: unknown field `acl` in an s3 node (known: endpoint, bucket, region, \
                 prefix, url_style)",
            ),
            (
                "(node (s3 (bucket abc) (url_style dns)) (range 0 f))",
                "3:24: malformed `url_style`: expected path or virtual_host, found \
                 (url_style dns)",
            ),
            (
                "(node (s3 (bucket abc) (bucket abd)) (range 0 f))",
                "3:24: `bucket` is given twice (first at 3:11)",
            ),
            (
                "(node (s3 (bucket abc)))",
                "3:1: node https://abc.s3.us-east-1.amazonaws.com has no (range LO HI)",
            ),
        ] {
            let e = err(&format!("{HEADER}\n{node}"));
            assert_eq!(e.to_string(), want, "{node}");
        }
        let e = err(&format!(
            "{HEADER}(node (s3 (bucket abc)) (range 0 7))(node (s3 (bucket abc)) (range 8 f))"
        ));
        assert!(matches!(e, ConfigErrorKind::DuplicateNode { .. }), "{e:?}");
    }
}
