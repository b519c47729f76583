//! Hints: for a rule's metadata entry, the rules Dune asked for next.
//!
//! Dune restores rules one after another, each waiting for its metadata and then its artifacts,
//! and it asks for them in nearly the same order on every machine that builds the same revision.
//! So a mount records that order and publishes, for each rule key, the keys of the rules that
//! came next; a box keeps the hint of each rule key it owns and sends it with the rule's
//! metadata. A mount that fetches a rule's metadata then fetches the next rules' metadata (and
//! their artifacts) ahead of Dune, and a cold machine stops paying one round trip per rule.
//!
//! Hints are advice, never trusted: everything fetched ahead is verified like any fetch, and a
//! wrong, stale or hostile hint costs bandwidth only. This module is the hint's format, shared
//! by the box, the client and the mount (see `docs/protocol.md`): the next rules as
//! `<kind dir>/<key>` items (`meta/v5/0123…`), one per line in a `PUT` body, space-separated in
//! the `X-Dune-Cachefs-Next` header of a metadata answer, at most [`MAX_NEXT`] of them.

use crate::dune::layout::{Entry, EntryKind};

/// The most rules a hint names. Enough lookahead to cover a round trip at Dune's pace, small
/// enough that a hint fits a header and a hostile one costs little.
pub const MAX_NEXT: usize = 16;

/// The largest hint body a box accepts: [`MAX_NEXT`] items of 41 bytes and a newline, and slack.
pub const MAX_BODY: usize = 1024;

/// Why a hint body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a hint: {0}")]
pub struct BadHint(String);

/// One item of a hint: a rule's metadata entry, or `None` if it is not one.
fn item(text: &str) -> Option<Entry> {
    let (dir, key) = text.rsplit_once('/')?;
    let kind = EntryKind::from_dir(dir)?;
    (kind != EntryKind::File).then_some(Entry {
        kind,
        key: key.parse().ok()?,
    })
}

/// Parses a hint strictly (a box storing one): at most [`MAX_NEXT`] metadata entries, one per
/// line, nothing else.
pub fn parse_body(body: &[u8]) -> Result<Vec<Entry>, BadHint> {
    if body.len() > MAX_BODY {
        return Err(BadHint(format!("{} bytes, over {MAX_BODY}", body.len())));
    }
    let text = std::str::from_utf8(body).map_err(|_| BadHint("not UTF-8".into()))?;
    let next: Vec<Entry> = text
        .lines()
        .map(|line| item(line).ok_or_else(|| BadHint(format!("{line:?} is no metadata entry"))))
        .collect::<Result<_, _>>()?;
    if next.len() > MAX_NEXT {
        return Err(BadHint(format!("{} rules, over {MAX_NEXT}", next.len())));
    }
    Ok(next)
}

/// Reads a hint leniently (a client reading a box's header or body, which may lie): the first
/// [`MAX_NEXT`] well-formed metadata entries, anything else skipped.
pub fn parse_lenient(value: &str) -> Vec<Entry> {
    value
        .split_ascii_whitespace()
        .filter_map(item)
        .take(MAX_NEXT)
        .collect()
}

/// A hint's body: one item per line.
pub fn body(next: &[Entry]) -> String {
    next.iter().map(|entry| format!("{entry}\n")).collect()
}

/// A hint's header value: items separated by spaces.
pub fn header(next: &[Entry]) -> String {
    let items: Vec<String> = next.iter().map(Entry::to_string).collect();
    items.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    fn meta(version: MetaVersion, n: u8) -> Entry {
        Entry {
            kind: EntryKind::Meta(version),
            key: format!("{n:02x}{}", "7".repeat(30)).parse().unwrap(),
        }
    }

    #[test]
    fn bodies_and_headers_round_trip() {
        let next = vec![meta(MetaVersion::V4, 1), meta(MetaVersion::V5, 0xfe)];
        assert_eq!(parse_body(body(&next).as_bytes()), Ok(next.clone()));
        assert_eq!(parse_lenient(&header(&next)), next);
        assert_eq!(parse_body(b""), Ok(Vec::new()));
        assert_eq!(parse_lenient(""), Vec::new());
    }

    #[test]
    fn a_box_refuses_what_is_not_a_hint() {
        let good = body(&[meta(MetaVersion::V4, 1)]);
        let artifact = format!("files/v4/{}\n", "a".repeat(32));
        let too_many = body(
            &(0..=MAX_NEXT as u8)
                .map(|n| meta(MetaVersion::V5, n))
                .collect::<Vec<_>>(),
        );
        for bad in [
            artifact.as_bytes(),
            b"meta/v4/xyz\n",
            b"meta/v9/0123456789abcdef0123456789abcdef\n",
            &[0xff, 0xfe],
            too_many.as_bytes(),
            &vec![b'\n'; MAX_BODY + 1],
            format!("{good}junk\n").as_bytes(),
        ] {
            assert!(
                parse_body(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_client_keeps_what_it_can_use_of_a_lying_header() {
        let a = meta(MetaVersion::V4, 1);
        let b = meta(MetaVersion::V5, 2);
        let value = format!("junk {a} files/v4/{} {b} meta/v4/short", "a".repeat(32));
        assert_eq!(parse_lenient(&value), vec![a, b]);
        let long: String = (0..100)
            .map(|n| format!("{} ", meta(MetaVersion::V5, n)))
            .collect();
        assert_eq!(parse_lenient(&long).len(), MAX_NEXT);
    }
}
