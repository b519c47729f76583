//! The [`Sexp`] tree: a whole value in memory, built from a [`Parser`]'s events, written back
//! in the canonical encoding, and shown readably.
//!
//! Apart from the parser because it is one consumer of the events among others: it depends on
//! the parser, never the other way. Every walk of a tree (writing, comparing, cloning, dropping)
//! goes through [`Sexp::events`] or an explicit stack, so none recurses on the tree's depth.

use std::fmt;

use super::parser::{CsexpError, Event, Limits, Parser};

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
    use crate::dune::csexp::tests::{atom, list};

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
}
