//! The shard listings a box answers with, one line per entry: what a line holds and how it is
//! read. Apart from the client because it is the one text format the client parses itself
//! (every other answer is a status, a header or a body streamed to a sink).

use crate::dune::key::{Key, Shard};

/// One line of a shard listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    /// The key.
    pub key: Key,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the artifact is executable.
    pub executable: bool,
}

/// Parses `<key> <size> <0|1>`; the key must belong to the shard listed.
pub(super) fn parse_listing_line(line: &str, shard: Shard) -> Option<ListedEntry> {
    let mut fields = line.split(' ');
    let key: Key = fields.next()?.parse().ok()?;
    let size = fields.next()?.parse().ok()?;
    let executable = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    (fields.next().is_none() && key.shard() == shard).then_some(ListedEntry {
        key,
        size,
        executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines() {
        let shard = Shard(0xab);
        let line = "ab23456789abcdef0123456789abcdef 123 1";
        assert_eq!(
            parse_listing_line(line, shard),
            Some(ListedEntry {
                key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
                size: 123,
                executable: true
            })
        );
        for bad in [
            "",
            "ab23456789abcdef0123456789abcdef 123",
            "ab23456789abcdef0123456789abcdef 123 2",
            "ab23456789abcdef0123456789abcdef -1 0",
            "ab23456789abcdef0123456789abcdef 1 0 extra",
            "cd23456789abcdef0123456789abcdef 1 0",
        ] {
            assert_eq!(parse_listing_line(bad, shard), None, "{bad:?}");
        }
    }
}
