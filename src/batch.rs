//! Batches: many entries asked of one box in one request (`POST /_batch`), the format shared by
//! the box and the client (see `docs/protocol.md`).
//!
//! A mount fetching ahead of Dune asks a box for thousands of small entries, one rule's metadata
//! or artifact at a time. Each `GET` costs both sides far more than its bytes: the request and
//! the answer's head, a wake-up of a fetch thread and of a box thread, and on loopback the
//! other side's TCP processing too. A batch pays that once for up to [`MAX_ITEMS`] entries. Its
//! answer is the entries one after another, each behind a one-line head that echoes the entry
//! asked for, so the client checks every item against its request, and verifies every entry's
//! bytes as it verifies any fetch: a box that lies in a batch is caught as one that lies to a
//! `GET`.

use crate::dune::layout::Entry;

/// The most entries one batch asks for.
pub const MAX_ITEMS: usize = 64;

/// The largest batch request body a box accepts: [`MAX_ITEMS`] items of 41 bytes and a newline,
/// and slack.
pub const MAX_BODY: usize = 3072;

/// The longest item head a client reads: an item, a status, a size, the executable bit and a
/// hint of [`crate::hints::MAX_NEXT`] items, and slack.
pub const MAX_HEAD: usize = 1024;

/// Why a batch request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a batch: {0}")]
pub struct BadBatch(String);

/// A batch request's body: one entry per line.
pub fn request(entries: &[Entry]) -> String {
    entries.iter().map(|entry| format!("{entry}\n")).collect()
}

/// Parses a batch request strictly (a box answering one): 1 to [`MAX_ITEMS`] entries, one per
/// line, nothing else.
pub fn parse_request(body: &[u8]) -> Result<Vec<Entry>, BadBatch> {
    match crate::dune::layout::parse_item_lines(body, MAX_BODY, MAX_ITEMS, |_| true) {
        Ok(entries) if entries.is_empty() => Err(BadBatch("no entries".into())),
        Ok(entries) => Ok(entries),
        Err(why) => Err(BadBatch(why)),
    }
}

/// What the head of one item of a batch answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemHead {
    /// The box holds the entry: its bytes follow the head. The hint of a rule's metadata is read
    /// leniently, as the `X-Dune-Cachefs-Next` header is; metadata has no executable bit.
    Held {
        /// The entry's size.
        size: u64,
        /// Whether an artifact is executable, as the box claims it.
        executable: Option<bool>,
        /// The rules the hint says come next.
        next: Vec<Entry>,
    },
    /// The box does not hold the entry (404): nothing follows.
    Missing,
    /// The box does not serve the entry's key (421): nothing follows.
    NotServed,
}

/// The head of a held entry: `<entry> 200 <size> <0|1|-> [<hint item> ...]`, and a newline.
/// `next` is the rule's hint as the box keeps it (items separated by spaces), or empty.
pub fn held_head(entry: &Entry, size: u64, executable: Option<bool>, next: &str) -> String {
    let executable = match executable {
        Some(true) => "1",
        Some(false) => "0",
        None => "-",
    };
    let mut head = format!("{entry} 200 {size} {executable}");
    if !next.is_empty() {
        head.push(' ');
        head.push_str(next);
    }
    head.push('\n');
    head
}

/// The head of an entry not sent: `<entry> 404` (not held) or `<entry> 421` (not served).
pub fn absent_head(entry: &Entry, served: bool) -> String {
    let status = if served { 404 } else { 421 };
    format!("{entry} {status}\n")
}

/// Parses the head of the item answering `asked` (without its newline). Strict about what the
/// client depends on (the entry echoed, the status, the size), lenient about the hint.
pub fn parse_head(line: &str, asked: &Entry) -> Result<ItemHead, String> {
    let mut words = line.split_ascii_whitespace();
    let echoed = words.next().and_then(Entry::from_item);
    if echoed != Some(*asked) {
        return Err(format!("the item answering {asked} is {line:?}"));
    }
    let status = words.next();
    match status {
        Some("404") => return Ok(ItemHead::Missing),
        Some("421") => return Ok(ItemHead::NotServed),
        Some("200") => {}
        _ => return Err(format!("{line:?} has no status of 200, 404 or 421")),
    }
    let size = words
        .next()
        .and_then(|size| size.parse().ok())
        .ok_or_else(|| format!("{line:?} has no size"))?;
    let executable = match words.next() {
        Some("1") => Some(true),
        Some("0") => Some(false),
        Some("-") => None,
        _ => return Err(format!("{line:?} has no executable bit")),
    };
    let rest: Vec<&str> = words.collect();
    Ok(ItemHead::Held {
        size,
        executable,
        next: crate::hints::parse_lenient(&rest.join(" ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn entry(kind: EntryKind, n: u8) -> Entry {
        Entry {
            kind,
            key: format!("{n:02x}{}", "5".repeat(30)).parse().unwrap(),
        }
    }

    fn rule(n: u8) -> Entry {
        entry(EntryKind::Meta(MetaVersion::V5), n)
    }

    fn artifact(n: u8) -> Entry {
        entry(EntryKind::File, n)
    }

    #[test]
    fn requests_round_trip_and_a_box_refuses_what_is_not_one() {
        let entries = vec![
            rule(1),
            artifact(2),
            entry(EntryKind::Meta(MetaVersion::V4), 3),
        ];
        assert_eq!(parse_request(request(&entries).as_bytes()), Ok(entries));
        let too_many: Vec<Entry> = (0..=MAX_ITEMS as u8).map(artifact).collect();
        let good = request(&[rule(1)]);
        for bad in [
            b"".as_slice(),
            request(&too_many).as_bytes(),
            b"files/v4/xyz\n",
            b"meta/v9/0123456789abcdef0123456789abcdef\n",
            &[0xff, 0xfe],
            format!("{good}\n").as_bytes(),
            format!("{good}junk\n").as_bytes(),
            &vec![b'\n'; MAX_BODY + 1],
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn heads_round_trip() {
        let next = crate::hints::header(&[rule(7), rule(8)]);
        let held = |asked: &Entry, head: String| parse_head(head.trim_end(), asked);
        assert_eq!(
            held(&rule(1), held_head(&rule(1), 42, None, &next)),
            Ok(ItemHead::Held {
                size: 42,
                executable: None,
                next: vec![rule(7), rule(8)]
            })
        );
        assert_eq!(
            held(&artifact(1), held_head(&artifact(1), 0, Some(true), "")),
            Ok(ItemHead::Held {
                size: 0,
                executable: Some(true),
                next: vec![]
            })
        );
        assert_eq!(
            held(&artifact(1), absent_head(&artifact(1), true)),
            Ok(ItemHead::Missing)
        );
        assert_eq!(
            held(&artifact(1), absent_head(&artifact(1), false)),
            Ok(ItemHead::NotServed)
        );
    }

    #[test]
    fn a_client_refuses_a_head_that_answers_something_else_or_lacks_a_field() {
        let asked = artifact(1);
        for bad in [
            format!("{} 200 3 0", artifact(2)),
            format!("{} 200 3 0", rule(1)),
            format!("{asked} 500"),
            format!("{asked} 200"),
            format!("{asked} 200 -3 0"),
            format!("{asked} 200 3"),
            format!("{asked} 200 3 x"),
            String::new(),
        ] {
            assert!(parse_head(&bad, &asked).is_err(), "{bad:?}");
        }
        let lying_hint = format!(
            "{asked} 200 3 - junk {} files/v4/{}",
            rule(9),
            "a".repeat(32)
        );
        assert_eq!(
            parse_head(&lying_hint, &asked),
            Ok(ItemHead::Held {
                size: 3,
                executable: None,
                next: vec![rule(9)]
            }),
            "the hint is read leniently"
        );
    }
}
