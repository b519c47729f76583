//! The push parser: bytes in, in chunks of any size, [`Event`]s out, within hard [`Limits`].
//!
//! Apart from the tree because it stands alone: the metadata reader drives it directly, checking
//! a body event by event as it arrives and building trees of only what it keeps, and nothing
//! here knows a [`Sexp`](super::Sexp).

use std::fmt;

/// What the parser saw: the start or end of a list, or one whole atom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `(`: a list starts.
    Open,
    /// `)`: the innermost open list ends.
    Close,
    /// One complete atom's bytes (never split across events, whatever the chunking).
    Atom(&'a [u8]),
}

/// Hard bounds on what a parser accepts, so that hostile input costs bounded memory and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest atom accepted, in bytes; also the most the parser ever buffers.
    pub max_atom_len: usize,
    /// The deepest nesting of lists accepted (`()` is depth 1); 0 accepts atoms only.
    pub max_depth: usize,
    /// The most input bytes accepted in total.
    pub max_total_len: u64,
}

impl Limits {
    /// The default limits (see [`Limits::default`]), usable in `const` contexts.
    pub const DEFAULT: Limits = Limits {
        max_atom_len: 16 << 20,
        max_depth: 64,
        max_total_len: 64 << 20,
    };
}

/// Sized for Dune metadata with a wide margin, while keeping hostile input cheap:
///
/// - atoms up to 16 MiB: Dune's atoms are paths (at most `PATH_MAX`, 4 KiB), 32-character keys
///   and short field names; 16 MiB leaves room for anything Dune may one day embed, while one
///   atom buffer stays a bounded cost per connection;
/// - depth 64: metadata nests three levels (entry, `files`, one target), plus whatever the free
///   `metadata` fields hold, which is nothing so far; 64 is ample and keeps every explicit
///   stack tiny;
/// - 64 MiB in total: real metadata files are hundreds of bytes, thousands of targets make
///   hundreds of kilobytes. Note that a *tree* costs more memory than its encoding, up to
///   about 16 bytes per input byte for a list of empty lists; streaming consumers of [`Parser`]
///   pay only for the atom buffer.
impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Why some bytes are not one canonical S-expression within the [`Limits`].
///
/// Offsets count bytes from the start of the input (across all chunks fed), starting at 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsexpError {
    /// The input ended before any byte arrived.
    #[error("empty input: expected one value ('(' or an atom length)")]
    Empty,
    /// A byte that cannot start or continue anything at its place.
    #[error("unexpected {} at offset {offset}: expected {expected}", ByteDesc(*.found))]
    Unexpected {
        /// Where the byte is.
        offset: u64,
        /// What the grammar allows there.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A byte after the one top-level value was complete.
    #[error("unexpected {} at offset {offset}: expected the end of the input after the value", ByteDesc(*.found))]
    TrailingData {
        /// Where the first extra byte is.
        offset: u64,
        /// That byte.
        found: u8,
    },
    /// An atom length written with a leading zero (`01:a`), which is not canonical.
    #[error(
        "atom length at offset {offset} has a leading zero: expected ':' right after a length of 0"
    )]
    LeadingZero {
        /// Where the length starts.
        offset: u64,
    },
    /// An atom length too large for 64 bits.
    #[error(
        "atom length at offset {offset} does not fit in 64 bits: its digits already make {found}"
    )]
    LengthOverflow {
        /// Where the length starts.
        offset: u64,
        /// The value of the digits up to and including the one that overflowed.
        found: u128,
    },
    /// An atom length above [`Limits::max_atom_len`].
    #[error("atom length {len} exceeds the limit of {limit} bytes at offset {offset}")]
    AtomTooLong {
        /// Where the length starts.
        offset: u64,
        /// The length found.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A `(` nesting deeper than [`Limits::max_depth`].
    #[error("'(' at offset {offset} nests deeper than the limit of {limit} levels")]
    TooDeep {
        /// Where the `(` is.
        offset: u64,
        /// The limit in force.
        limit: usize,
    },
    /// More bytes than [`Limits::max_total_len`].
    #[error("input exceeds the limit of {limit} bytes at offset {offset}")]
    TooLarge {
        /// Where the first byte past the limit is (equal to the limit).
        offset: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The input ended with lists still open.
    #[error("input ends at offset {offset} with {open} list(s) still open: expected ')'")]
    UnclosedList {
        /// The input's length.
        offset: u64,
        /// How many lists were open.
        open: usize,
    },
    /// The input ended inside an atom length.
    #[error("input ends at offset {offset} inside the atom length that starts at offset {start}: expected more digits or ':'")]
    TruncatedLength {
        /// The input's length.
        offset: u64,
        /// Where the length starts.
        start: u64,
    },
    /// The input ended inside an atom's bytes.
    #[error(
        "input ends at offset {offset} inside an atom of {len} bytes: expected {missing} more"
    )]
    TruncatedAtom {
        /// The input's length.
        offset: u64,
        /// The atom's declared length.
        len: usize,
        /// How many of its bytes never came.
        missing: usize,
    },
}

/// A byte as an error message shows it: `'('` when printable ASCII, else `byte 0x0a`.
struct ByteDesc(u8);

impl fmt::Display for ByteDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b @ 0x21..=0x7e => write!(f, "'{}'", char::from(b)),
            b => write!(f, "byte 0x{b:02x}"),
        }
    }
}

/// Where the parser is inside the grammar between two bytes.
enum State {
    /// Between values: expecting `(`, `)` (inside a list) or the first digit of a length.
    Value,
    /// Inside an atom length that started at `start`; `value` is the digits so far.
    Length { start: u64, value: u64 },
    /// Inside an atom of `len` bytes, `buf` holding those that arrived in earlier chunks.
    Atom { len: usize, buf: Vec<u8> },
}

/// The push parser: feed it bytes in chunks of any size, get [`Event`]s out.
///
/// The events, and the error if any, do not depend on how the input is chunked. After an error
/// the parser stays failed: every later call returns the same error.
///
/// ```
/// use dune_cachefs::dune::csexp::{Event, Limits, Parser};
/// let mut parser = Parser::new(Limits::default());
/// let mut atoms = Vec::new();
/// for chunk in [&b"(3:a"[..], b"bc0", b":)"] {
///     parser
///         .feed(chunk, &mut |event| {
///             if let Event::Atom(atom) = event {
///                 atoms.push(atom.to_vec());
///             }
///         })
///         .unwrap();
/// }
/// parser.finish().unwrap();
/// assert_eq!(atoms, [b"abc".to_vec(), Vec::new()]);
/// ```
pub struct Parser {
    limits: Limits,
    /// Bytes consumed so far: the offset of the next byte.
    offset: u64,
    /// Lists currently open.
    depth: usize,
    state: State,
    /// The one top-level value is complete; only the end of input may follow.
    done: bool,
    failed: Option<CsexpError>,
}

impl Parser {
    /// A parser at the start of its input.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            offset: 0,
            depth: 0,
            state: State::Value,
            done: false,
            failed: None,
        }
    }

    /// Parses the next chunk of input, calling `on_event` for each event it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), CsexpError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.feed_within_limit(chunk, on_event);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Ends the input: succeeds only if exactly one complete value was fed.
    pub fn finish(self) -> Result<(), CsexpError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let offset = self.offset;
        match self.state {
            State::Length { start, .. } => Err(CsexpError::TruncatedLength { offset, start }),
            State::Atom { len, buf } => Err(CsexpError::TruncatedAtom {
                offset,
                len,
                missing: len - buf.len(),
            }),
            State::Value if self.done => Ok(()),
            State::Value if self.depth > 0 => Err(CsexpError::UnclosedList {
                offset,
                open: self.depth,
            }),
            State::Value => Err(CsexpError::Empty),
        }
    }

    fn feed_within_limit(
        &mut self,
        chunk: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), CsexpError> {
        let room = self.limits.max_total_len.saturating_sub(self.offset);
        match usize::try_from(room) {
            Ok(room) if room < chunk.len() => {
                // Parse up to the limit first: an earlier error is the one to report.
                self.consume(&chunk[..room], on_event)?;
                Err(CsexpError::TooLarge {
                    offset: self.offset,
                    limit: self.limits.max_total_len,
                })
            }
            _ => self.consume(chunk, on_event),
        }
    }

    fn consume(
        &mut self,
        chunk: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), CsexpError> {
        let mut rest = chunk;
        while let Some(&byte) = rest.first() {
            match &mut self.state {
                State::Atom { len, buf } => {
                    let missing = *len - buf.len();
                    let (piece, after) = rest.split_at(missing.min(rest.len()));
                    rest = after;
                    self.offset += piece.len() as u64;
                    if buf.is_empty() && piece.len() == missing {
                        // The whole atom is in this chunk: hand it over without copying.
                        on_event(Event::Atom(piece));
                    } else {
                        grow_within(buf, piece.len(), *len);
                        buf.extend_from_slice(piece);
                        if buf.len() < *len {
                            continue;
                        }
                        on_event(Event::Atom(buf));
                    }
                    self.state = State::Value;
                    self.end_value();
                }
                State::Length { start, value } => {
                    let (start, value) = (*start, *value);
                    self.length_byte(start, value, byte, on_event)?;
                    rest = &rest[1..];
                    self.offset += 1;
                }
                State::Value => {
                    self.value_byte(byte, on_event)?;
                    rest = &rest[1..];
                    self.offset += 1;
                }
            }
        }
        Ok(())
    }

    fn value_byte(
        &mut self,
        byte: u8,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), CsexpError> {
        let offset = self.offset;
        if self.done {
            return Err(CsexpError::TrailingData {
                offset,
                found: byte,
            });
        }
        match byte {
            b'(' if self.depth >= self.limits.max_depth => Err(CsexpError::TooDeep {
                offset,
                limit: self.limits.max_depth,
            }),
            b'(' => {
                self.depth += 1;
                on_event(Event::Open);
                Ok(())
            }
            b')' if self.depth > 0 => {
                self.depth -= 1;
                on_event(Event::Close);
                self.end_value();
                Ok(())
            }
            b'0'..=b'9' => {
                self.state = State::Length {
                    start: offset,
                    value: u64::from(byte - b'0'),
                };
                Ok(())
            }
            _ => Err(CsexpError::Unexpected {
                offset,
                expected: if self.depth > 0 {
                    "'(', ')' or an atom length"
                } else {
                    "'(' or an atom length"
                },
                found: byte,
            }),
        }
    }

    fn length_byte(
        &mut self,
        start: u64,
        value: u64,
        byte: u8,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), CsexpError> {
        match byte {
            // A value of 0 with more digits coming can only be a leading zero.
            b'0'..=b'9' if value == 0 => Err(CsexpError::LeadingZero { offset: start }),
            b'0'..=b'9' => {
                let digit = u64::from(byte - b'0');
                let value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(digit))
                    .ok_or(CsexpError::LengthOverflow {
                        offset: start,
                        found: u128::from(value) * 10 + u128::from(digit),
                    })?;
                self.state = State::Length { start, value };
                Ok(())
            }
            b':' => match usize::try_from(value) {
                Ok(len) if len <= self.limits.max_atom_len => {
                    if len == 0 {
                        self.state = State::Value;
                        on_event(Event::Atom(&[]));
                        self.end_value();
                    } else {
                        self.state = State::Atom {
                            len,
                            buf: Vec::new(),
                        };
                    }
                    Ok(())
                }
                _ => Err(CsexpError::AtomTooLong {
                    offset: start,
                    len: value,
                    limit: self.limits.max_atom_len,
                }),
            },
            _ => Err(CsexpError::Unexpected {
                offset: self.offset,
                expected: "a digit or ':' in an atom length",
                found: byte,
            }),
        }
    }

    /// A value just ended: if it was the top-level one, the input must end here.
    fn end_value(&mut self) {
        if self.depth == 0 {
            self.done = true;
        }
    }
}

/// Makes room for `extra` more bytes in an atom buffer that will hold `len` in all: doubling for
/// amortised cost, but never past `len`, and only as the bytes actually arrive (a declared
/// length alone allocates nothing).
fn grow_within(buf: &mut Vec<u8>, extra: usize, len: usize) {
    let needed = buf.len() + extra;
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2)).min(len);
        buf.reserve_exact(target - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::csexp::tests::{parse_bytewise, parse_default};
    use crate::dune::csexp::{parse, SexpReader};

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(parse_default(b""), Err(CsexpError::Empty));
        assert_eq!(
            SexpReader::new(Limits::default()).finish(),
            Err(CsexpError::Empty)
        );
    }

    #[test]
    fn unexpected_bytes_name_offset_and_expectation() {
        let err = parse_default(b"(3:abc x)").unwrap_err();
        assert_eq!(
            err,
            CsexpError::Unexpected {
                offset: 6,
                expected: "'(', ')' or an atom length",
                found: b' '
            }
        );
        assert_eq!(
            err.to_string(),
            "unexpected byte 0x20 at offset 6: expected '(', ')' or an atom length"
        );
        assert_eq!(
            parse_default(b")").unwrap_err().to_string(),
            "unexpected ')' at offset 0: expected '(' or an atom length"
        );
        assert_eq!(
            parse_default(b":a").unwrap_err(),
            CsexpError::Unexpected {
                offset: 0,
                expected: "'(' or an atom length",
                found: b':'
            }
        );
        assert_eq!(
            parse_default(b"(12a").unwrap_err().to_string(),
            "unexpected 'a' at offset 3: expected a digit or ':' in an atom length"
        );
    }

    #[test]
    fn trailing_data_after_the_value() {
        assert_eq!(
            parse_default(b"()()").unwrap_err(),
            CsexpError::TrailingData {
                offset: 2,
                found: b'('
            }
        );
        assert_eq!(
            parse_default(b"1:a\n").unwrap_err().to_string(),
            "unexpected byte 0x0a at offset 3: expected the end of the input after the value"
        );
    }

    #[test]
    fn leading_zeros_are_not_canonical() {
        let err = parse_default(b"(01:a)").unwrap_err();
        assert_eq!(err, CsexpError::LeadingZero { offset: 1 });
        assert!(err.to_string().contains("leading zero"), "{err}");
        assert_eq!(
            parse_default(b"00:").unwrap_err(),
            CsexpError::LeadingZero { offset: 0 }
        );
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        let err = parse_default(b"(((9223372036854775808:abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "atom length 9223372036854775808 exceeds the limit of 16777216 bytes at offset 3"
        );
        let err = parse_default(b"16777217:").unwrap_err();
        assert_eq!(
            err,
            CsexpError::AtomTooLong {
                offset: 0,
                len: 16777217,
                limit: 16 << 20
            }
        );
        // Exactly at the limit is accepted as far as the input goes.
        assert_eq!(
            parse_default(b"16777216:abc").unwrap_err(),
            CsexpError::TruncatedAtom {
                offset: 12,
                len: 16 << 20,
                missing: (16 << 20) - 3
            }
        );
    }

    #[test]
    fn length_overflowing_64_bits_is_refused() {
        let err = parse_default(b"(99999999999999999999:").unwrap_err();
        assert_eq!(
            err,
            CsexpError::LengthOverflow {
                offset: 1,
                found: 99999999999999999999
            }
        );
        assert_eq!(
            err.to_string(),
            "atom length at offset 1 does not fit in 64 bits: its digits already make \
             99999999999999999999"
        );
        // u64::MAX itself is only "too long"; one more digit overflows.
        assert!(matches!(
            parse_default(b"18446744073709551615:"),
            Err(CsexpError::AtomTooLong { len: u64::MAX, .. })
        ));
        assert!(matches!(
            parse_default(b"184467440737095516150"),
            Err(CsexpError::LengthOverflow { offset: 0, .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = vec![b'('; 100_000];
        let err = parse_default(&deep).unwrap_err();
        assert_eq!(
            err,
            CsexpError::TooDeep {
                offset: 64,
                limit: 64
            }
        );
        assert_eq!(
            err.to_string(),
            "'(' at offset 64 nests deeper than the limit of 64 levels"
        );
        let mut exact = vec![b'('; 64];
        exact.extend(vec![b')'; 64]);
        assert!(parse_default(&exact).is_ok());
        let atoms_only = Limits {
            max_depth: 0,
            ..Limits::default()
        };
        assert!(parse(b"1:a", atoms_only).is_ok());
        assert!(matches!(
            parse(b"()", atoms_only),
            Err(CsexpError::TooDeep { offset: 0, .. })
        ));
    }

    #[test]
    fn total_length_limit() {
        let small = Limits {
            max_total_len: 5,
            ..Limits::default()
        };
        assert!(parse(b"(1:a)", small).is_ok());
        let err = parse(b"(2:ab)", small).unwrap_err();
        assert_eq!(
            err,
            CsexpError::TooLarge {
                offset: 5,
                limit: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "input exceeds the limit of 5 bytes at offset 5"
        );
        // An error before the limit wins over the limit.
        assert_eq!(
            parse(b"(x2:ab)", small).unwrap_err(),
            CsexpError::Unexpected {
                offset: 1,
                expected: "'(', ')' or an atom length",
                found: b'x'
            }
        );
        assert_eq!(
            parse_bytewise(b"(2:ab)", small).unwrap_err(),
            CsexpError::TooLarge {
                offset: 5,
                limit: 5
            }
        );
    }

    #[test]
    fn truncated_inputs() {
        assert_eq!(
            parse_default(b"((1:a)").unwrap_err(),
            CsexpError::UnclosedList { offset: 6, open: 1 }
        );
        assert_eq!(
            parse_default(b"((").unwrap_err().to_string(),
            "input ends at offset 2 with 2 list(s) still open: expected ')'"
        );
        assert_eq!(
            parse_default(b"(12").unwrap_err(),
            CsexpError::TruncatedLength {
                offset: 3,
                start: 1
            }
        );
        assert_eq!(
            parse_default(b"(5:ab").unwrap_err().to_string(),
            "input ends at offset 5 inside an atom of 5 bytes: expected 3 more"
        );
        assert_eq!(
            parse_default(b"5:").unwrap_err(),
            CsexpError::TruncatedAtom {
                offset: 2,
                len: 5,
                missing: 5
            }
        );
    }

    #[test]
    fn a_failed_parser_stays_failed() {
        let mut parser = Parser::new(Limits::default());
        let mut events = 0;
        let first = parser.feed(b"(x", &mut |_| events += 1).unwrap_err();
        assert_eq!(events, 1);
        assert_eq!(parser.feed(b"()", &mut |_| events += 1), Err(first.clone()));
        assert_eq!(events, 1);
        assert_eq!(parser.finish(), Err(first));
    }

    #[test]
    fn atoms_split_across_chunks_arrive_whole() {
        let mut parser = Parser::new(Limits::default());
        let mut seen = Vec::new();
        for chunk in [&b"(1"[..], b"0:01234", b"", b"56789", b"3:abc)"] {
            parser
                .feed(chunk, &mut |event| {
                    seen.push(match event {
                        Event::Atom(a) => String::from_utf8(a.to_vec()).unwrap(),
                        Event::Open => "(".into(),
                        Event::Close => ")".into(),
                    })
                })
                .unwrap();
        }
        parser.finish().unwrap();
        assert_eq!(seen, ["(", "0123456789", "abc", ")"]);
    }

    #[test]
    fn atom_buffers_grow_with_the_data_and_never_past_the_atom() {
        let mut buf = Vec::new();
        grow_within(&mut buf, 3, 1000);
        assert!(buf.capacity() < 1000);
        let mut total = 0;
        for piece in [3, 100, 200, 600, 97] {
            grow_within(&mut buf, piece, 1000);
            buf.extend(std::iter::repeat_n(0, piece));
            total += piece;
            assert!(buf.capacity() <= 1000, "{} after {total}", buf.capacity());
        }
        assert_eq!(buf.len(), 1000);
    }
}
