//! Canonical S-expressions (csexp), the encoding of Dune's rule metadata.
//!
//! An atom is `<decimal length>:<bytes>`, a list is `(` items `)`, and there is no whitespace
//! anywhere: `((8:metadata)(5:files))` is a list of two lists. Dune writes exactly one value per
//! metadata file.
//!
//! # Why a push parser
//!
//! Metadata reaches us from files, sockets and HTTP bodies, in chunks whose boundaries mean
//! nothing. [`Parser`] takes bytes in whatever pieces they arrive and emits [`Event`]s; its output,
//! including *which* error it reports and at what offset, is the same for every chunking of the
//! same bytes. [`SexpReader`] builds a [`Sexp`] tree from those events, and [`parse`] is the
//! one-shot convenience on top. So a server can refuse a bad body at the first wrong byte, while
//! it streams, instead of buffering it first.
//!
//! # Hostile input
//!
//! Every input is either a value or a [`CsexpError`] that says where and why: never a panic, never
//! unbounded memory. The [`Limits`] are hard: an atom length is checked against
//! [`Limits::max_atom_len`] when its `:` arrives, before anything is allocated for it (and a
//! length that does not even fit in 64 bits is refused as soon as it overflows); nesting beyond
//! [`Limits::max_depth`] is refused at the offending `(`; bytes past [`Limits::max_total_len`]
//! are refused. Nothing recurses on the input's depth: parsing, building, writing, comparing,
//! cloning and dropping a [`Sexp`] all use explicit stacks, so even a hand-built tree a million
//! levels deep is safe to handle.
//!
//! # Canonical means unique
//!
//! A length with a leading zero (`01:a`) is refused ([`CsexpError::LeadingZero`]); `0:` is the
//! only way to spell the empty atom. Dune never writes leading zeros, and refusing them makes the
//! encoding of a tree unique, so `write(parse(bytes)) == bytes` holds for every accepted input:
//! byte-for-byte round trips are a guarantee, not a hope, and two equal trees always have equal
//! bytes (which is what lets the store compare metadata values by their bytes).
//!
//! ```
//! use dune_cachefs::dune::csexp::{parse, Limits, Sexp};
//! let bytes = b"((8:metadata)(5:files))";
//! let tree = parse(bytes, Limits::default()).unwrap();
//! assert_eq!(
//!     tree,
//!     Sexp::List(vec![
//!         Sexp::List(vec![Sexp::Atom(b"metadata".to_vec())]),
//!         Sexp::List(vec![Sexp::Atom(b"files".to_vec())]),
//!     ])
//! );
//! assert_eq!(tree.to_bytes(), bytes);
//! assert_eq!(tree.to_string(), "((metadata) (files))");
//! ```

use std::fmt;

/// A csexp value: an atom (any bytes) or a list of values.
///
/// `Clone`, `PartialEq`, `Debug`, `Display` and `Drop` are written by hand so that none of them
/// recurses on the tree's depth. One consequence of the custom `Drop`: a `Sexp` cannot be
/// destructured by moving out of it; match on a reference, or `std::mem::take` the contents.
pub enum Sexp {
    /// An atom: arbitrary bytes, possibly empty.
    Atom(Vec<u8>),
    /// A list of values, possibly empty.
    List(Vec<Sexp>),
}

impl Sexp {
    /// The canonical encoding of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    /// Appends the canonical encoding of this value to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for event in self.events() {
            match event {
                Event::Open => out.push(b'('),
                Event::Close => out.push(b')'),
                Event::Atom(atom) => write_atom(out, atom),
            }
        }
    }

    /// The length in bytes of [`Sexp::to_bytes`], computed without encoding.
    pub fn encoded_len(&self) -> usize {
        self.events()
            .map(|event| match event {
                Event::Open | Event::Close => 1,
                Event::Atom(atom) => decimal_len(atom.len()) + 1 + atom.len(),
            })
            .sum()
    }

    /// This value as the events a [`Parser`] would emit for its encoding, in order, walked with
    /// an explicit stack rather than recursion.
    pub fn events(&self) -> Events<'_> {
        Events {
            root: Some(self),
            open: Vec::new(),
        }
    }
}

impl Clone for Sexp {
    fn clone(&self) -> Sexp {
        let mut builder = TreeBuilder::default();
        self.events()
            .find_map(|event| builder.push(event))
            .expect("a tree's events always describe one complete value")
    }
}

impl PartialEq for Sexp {
    fn eq(&self, other: &Sexp) -> bool {
        self.events().eq(other.events())
    }
}

impl Eq for Sexp {}

impl Drop for Sexp {
    fn drop(&mut self) {
        let Sexp::List(items) = self else { return };
        // Only a grandchild makes the default drop recurse; flat lists (the common case) stop here.
        if !items
            .iter()
            .any(|item| matches!(item, Sexp::List(children) if !children.is_empty()))
        {
            return;
        }
        let mut pending = std::mem::take(items);
        while let Some(mut node) = pending.pop() {
            if let Sexp::List(children) = &mut node {
                pending.append(children);
            }
        }
    }
}

/// The readable (non-canonical) S-expression syntax, for people: `(metadata (files a.ml))`.
///
/// Atoms made only of letters, digits and `_-./+=<>@%,:*!?~^&$` print bare; any other atom prints
/// as a quoted string with `\"`, `\\`, `\n`, `\t` and `\xNN` escapes (invalid UTF-8 and control
/// bytes become `\xNN`), so distinct atoms never print the same.
impl fmt::Display for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut need_space = false;
        for event in self.events() {
            if need_space && event != Event::Close {
                f.write_str(" ")?;
            }
            match event {
                Event::Open => f.write_str("(")?,
                Event::Close => f.write_str(")")?,
                Event::Atom(atom) => write_readable_atom(f, atom)?,
            }
            need_space = event != Event::Open;
        }
        Ok(())
    }
}

impl fmt::Debug for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sexp({self})")
    }
}

fn write_readable_atom(f: &mut fmt::Formatter<'_>, atom: &[u8]) -> fmt::Result {
    let bare = |b: &u8| b.is_ascii_alphanumeric() || b"_-./+=<>@%,:*!?~^&$".contains(b);
    if !atom.is_empty() && atom.iter().all(bare) {
        // Checked just above: every byte is ASCII.
        return f.write_str(std::str::from_utf8(atom).map_err(|_| fmt::Error)?);
    }
    f.write_str("\"")?;
    for chunk in atom.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_ascii_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_str("\"")
}

/// Appends one atom's canonical encoding (`<len>:<bytes>`) to `out`: for writers that produce a
/// csexp directly from their own types, without building a [`Sexp`] first.
pub fn write_atom(out: &mut Vec<u8>, atom: &[u8]) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = atom.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
    out.push(b':');
    out.extend_from_slice(atom);
}

fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

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

/// The events of a [`Sexp`], from [`Sexp::events`].
pub struct Events<'a> {
    root: Option<&'a Sexp>,
    open: Vec<std::slice::Iter<'a, Sexp>>,
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        let node = match self.root.take() {
            Some(root) => root,
            None => {
                let innermost = self.open.last_mut()?;
                match innermost.next() {
                    Some(node) => node,
                    None => {
                        self.open.pop();
                        return Some(Event::Close);
                    }
                }
            }
        };
        Some(match node {
            Sexp::Atom(atom) => Event::Atom(atom),
            Sexp::List(items) => {
                self.open.push(items.iter());
                Event::Open
            }
        })
    }
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

/// Builds trees from balanced events: one [`Sexp`] per top-level value.
#[derive(Default)]
pub(crate) struct TreeBuilder {
    /// The items of each list still open, innermost last.
    open: Vec<Vec<Sexp>>,
}

impl TreeBuilder {
    /// Whether no list is open: the next event starts a new top-level value.
    pub(crate) fn is_idle(&self) -> bool {
        self.open.is_empty()
    }

    /// Takes the next event; returns the value it completes at the top level, if any. Events
    /// must be balanced, as a [`Parser`]'s and [`Sexp::events`]'s are: an unmatched close is
    /// ignored.
    pub(crate) fn push(&mut self, event: Event<'_>) -> Option<Sexp> {
        let complete = match event {
            Event::Open => {
                self.open.push(Vec::new());
                return None;
            }
            Event::Atom(atom) => Sexp::Atom(atom.to_vec()),
            Event::Close => {
                let mut items = self.open.pop()?;
                items.shrink_to_fit();
                Sexp::List(items)
            }
        };
        match self.open.last_mut() {
            Some(parent) => {
                parent.push(complete);
                None
            }
            None => Some(complete),
        }
    }
}

/// Reads one value from chunks of input: a [`Parser`] feeding a tree builder.
pub struct SexpReader {
    parser: Parser,
    builder: TreeBuilder,
    value: Option<Sexp>,
}

impl SexpReader {
    /// A reader at the start of its input.
    pub fn new(limits: Limits) -> SexpReader {
        SexpReader {
            parser: Parser::new(limits),
            builder: TreeBuilder::default(),
            value: None,
        }
    }

    /// Parses the next chunk of input.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), CsexpError> {
        let SexpReader {
            parser,
            builder,
            value,
        } = self;
        parser.feed(chunk, &mut |event| {
            if let Some(complete) = builder.push(event) {
                *value = Some(complete);
            }
        })
    }

    /// Ends the input and returns the value: exactly one must have been fed.
    pub fn finish(self) -> Result<Sexp, CsexpError> {
        self.parser.finish()?;
        self.value.ok_or(CsexpError::Empty)
    }
}

/// Parses `bytes` as exactly one canonical S-expression.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Sexp, CsexpError> {
    let mut reader = SexpReader::new(limits);
    reader.feed(bytes)?;
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn atom(bytes: &[u8]) -> Sexp {
        Sexp::Atom(bytes.to_vec())
    }

    fn list(items: Vec<Sexp>) -> Sexp {
        Sexp::List(items)
    }

    fn parse_default(bytes: &[u8]) -> Result<Sexp, CsexpError> {
        parse(bytes, Limits::default())
    }

    /// Feeds `bytes` cut at `cuts` (positions taken modulo the length, in any order), stopping at
    /// the first error as a real caller would.
    fn parse_chunked(bytes: &[u8], cuts: &[usize], limits: Limits) -> Result<Sexp, CsexpError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut reader = SexpReader::new(limits);
        for pair in cuts.windows(2) {
            reader.feed(&bytes[pair[0]..pair[1]])?;
        }
        reader.finish()
    }

    fn parse_bytewise(bytes: &[u8], limits: Limits) -> Result<Sexp, CsexpError> {
        let cuts: Vec<usize> = (0..bytes.len()).collect();
        parse_chunked(bytes, &cuts, limits)
    }

    #[test]
    fn dune_metadata_examples_parse_and_round_trip() {
        let v5 = b"((8:metadata)(5:files(8:target_b32:d5b73f7b5d75090e1da54099e4458db3)))";
        let tree = parse_default(v5).unwrap();
        assert_eq!(
            tree,
            list(vec![
                list(vec![atom(b"metadata")]),
                list(vec![
                    atom(b"files"),
                    list(vec![
                        atom(b"target_b"),
                        atom(b"d5b73f7b5d75090e1da54099e4458db3")
                    ]),
                ]),
            ])
        );
        assert_eq!(tree.to_bytes(), v5);
        assert_eq!(tree.encoded_len(), v5.len());
        assert_eq!(parse_bytewise(v5, Limits::default()).unwrap(), tree);
    }

    #[test]
    fn atoms_and_empty_values() {
        assert_eq!(parse_default(b"0:").unwrap(), atom(b""));
        assert_eq!(parse_default(b"()").unwrap(), list(vec![]));
        assert_eq!(
            parse_default(b"(0:())").unwrap(),
            list(vec![atom(b""), list(vec![])])
        );
        assert_eq!(parse_default(b"3:a(c").unwrap(), atom(b"a(c"));
        assert_eq!(
            parse_default(b"10:0123456789").unwrap(),
            atom(b"0123456789")
        );
    }

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
    fn deep_trees_parse_write_compare_clone_and_drop_without_recursion() {
        let depth = 1_000_000;
        let mut bytes = vec![b'('; depth];
        bytes.extend_from_slice(b"1:x");
        bytes.extend(vec![b')'; depth]);
        let limits = Limits {
            max_depth: depth,
            ..Limits::default()
        };
        let tree = parse(&bytes, limits).unwrap();
        assert_eq!(tree.encoded_len(), bytes.len());
        assert_eq!(tree.to_bytes(), bytes);
        let copy = tree.clone();
        assert_eq!(copy, tree);
        let text = tree.to_string();
        assert_eq!(text.len(), 2 * depth + 1);
        assert!(text.contains("((x))"));
        drop(copy);
        drop(tree);
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

    #[test]
    fn readable_rendering() {
        let tree = list(vec![
            atom(b"metadata"),
            list(vec![]),
            atom(b""),
            atom(b"two words"),
            atom(b"q\"\\\n\t\x01"),
            atom("caf\u{e9}".as_bytes()),
            atom(b"\xff<dir>"),
        ]);
        assert_eq!(
            tree.to_string(),
            r#"(metadata () "" "two words" "q\"\\\n\t\x01" "café" "\xff<dir>")"#
        );
        assert_eq!(format!("{:?}", atom(b"a")), "Sexp(a)");
    }

    #[test]
    fn write_atom_lengths() {
        for len in [0usize, 1, 9, 10, 99, 100, 12345] {
            let bytes = vec![b'z'; len];
            let mut out = Vec::new();
            write_atom(&mut out, &bytes);
            assert_eq!(out, [format!("{len}:").as_bytes(), &bytes].concat());
            assert_eq!(atom(&bytes).encoded_len(), out.len());
        }
    }

    fn arb_sexp() -> impl Strategy<Value = Sexp> {
        let leaf = prop::collection::vec(any::<u8>(), 0..12).prop_map(Sexp::Atom);
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Sexp::List)
        })
    }

    /// A tree's encoding written here from the format's definition (`<decimal length>:<bytes>`
    /// for an atom, `(` items `)` for a list) rather than by [`Sexp::to_bytes`], so that the
    /// parser and the writer are both held to it.
    fn encode_by_hand(tree: &Sexp, out: &mut Vec<u8>) {
        match tree {
            Sexp::Atom(bytes) => {
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(bytes);
            }
            Sexp::List(items) => {
                out.push(b'(');
                for item in items {
                    encode_by_hand(item, out);
                }
                out.push(b')');
            }
        }
    }

    /// Valid encodings only: every case of a property over them gets to its assertions.
    fn valid_encoding() -> impl Strategy<Value = Vec<u8>> {
        arb_sexp().prop_map(|tree| {
            let mut out = Vec::new();
            encode_by_hand(&tree, &mut out);
            out
        })
    }

    /// Bytes that look enough like csexp to get past the first byte, often (but that parse as a
    /// whole only a few times in a thousand: malformed input, for the never-panic property).
    fn csexp_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => Just(b'('),
            3 => Just(b')'),
            3 => Just(b':'),
            4 => b'0'..=b'9',
            2 => any::<u8>(),
        ];
        prop::collection::vec(byte, 0..48)
    }

    /// A valid encoding with one byte changed, inserted or removed.
    fn mutated_encoding() -> impl Strategy<Value = Vec<u8>> {
        (arb_sexp(), any::<usize>(), any::<u8>(), 0..3u8).prop_map(|(tree, at, byte, how)| {
            let mut bytes = tree.to_bytes();
            let at = at % (bytes.len() + 1);
            match how {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
            bytes
        })
    }

    fn small_limits() -> impl Strategy<Value = Limits> {
        (0..8usize, 0..8usize, 0..64u64).prop_map(|(max_atom_len, max_depth, max_total_len)| {
            Limits {
                max_atom_len,
                max_depth,
                max_total_len,
            }
        })
    }

    proptest! {
        #[test]
        fn write_then_parse_is_identity(tree in arb_sexp()) {
            let bytes = tree.to_bytes();
            prop_assert_eq!(bytes.len(), tree.encoded_len());
            prop_assert_eq!(parse_default(&bytes).unwrap(), tree);
        }

        #[test]
        fn any_chunking_of_a_valid_encoding_gives_the_same_tree(
            tree in arb_sexp(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let bytes = tree.to_bytes();
            prop_assert_eq!(&parse_chunked(&bytes, &cuts, Limits::default()).unwrap(), &tree);
            prop_assert_eq!(&parse_bytewise(&bytes, Limits::default()).unwrap(), &tree);
        }

        #[test]
        fn parse_then_write_is_identity(bytes in valid_encoding()) {
            let parsed = parse_default(&bytes);
            prop_assert!(parsed.is_ok(), "a valid encoding was refused: {:?}", parsed);
            prop_assert_eq!(parsed.unwrap().to_bytes(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_never_changes_the_outcome(
            bytes in prop_oneof![csexp_ish_bytes(), mutated_encoding()],
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            limits in prop_oneof![Just(Limits::default()), small_limits()],
        ) {
            let whole = parse(&bytes, limits);
            prop_assert_eq!(&parse_chunked(&bytes, &cuts, limits), &whole);
            prop_assert_eq!(&parse_bytewise(&bytes, limits), &whole);
            if let Ok(tree) = whole {
                prop_assert_eq!(tree.to_bytes(), bytes);
            }
        }

        #[test]
        fn clone_and_equality_agree_with_the_encoding(a in arb_sexp(), b in arb_sexp()) {
            prop_assert_eq!(&a.clone(), &a);
            prop_assert_eq!(a == b, a.to_bytes() == b.to_bytes());
        }
    }
}
