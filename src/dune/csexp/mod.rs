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
//!
//! # Modules
//!
//! `parser` holds the push parser with its events, limits and errors; `tree` the [`Sexp`] built
//! from those events, its writer and its readable form. The tree uses the parser, never the
//! other way; everything public is re-exported here.

mod parser;
mod tree;

pub use parser::{CsexpError, Event, Limits, Parser};
pub(crate) use tree::TreeBuilder;
pub use tree::{parse, write_atom, Events, Sexp, SexpReader};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn atom(bytes: &[u8]) -> Sexp {
        Sexp::Atom(bytes.to_vec())
    }

    pub(super) fn list(items: Vec<Sexp>) -> Sexp {
        Sexp::List(items)
    }

    pub(super) fn parse_default(bytes: &[u8]) -> Result<Sexp, CsexpError> {
        parse(bytes, Limits::default())
    }

    /// Feeds `bytes` cut at `cuts` (positions taken modulo the length, in any order), stopping at
    /// the first error as a real caller would.
    pub(super) fn parse_chunked(
        bytes: &[u8],
        cuts: &[usize],
        limits: Limits,
    ) -> Result<Sexp, CsexpError> {
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

    pub(super) fn parse_bytewise(bytes: &[u8], limits: Limits) -> Result<Sexp, CsexpError> {
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
