//! The csexp push parser on arbitrary bytes: it must never panic, its events and its outcome
//! must not depend on the chunking, and whatever it accepts must re-encode to the very input.
//!
//! Input layout: `[split, limits knob, atom, depth, total, input...]`. The split byte picks
//! where the input is cut in two; an even knob means the default limits, an odd one small
//! limits taken from the next three bytes, so the limit errors get explored too.
#![no_main]

use dune_cachefs::dune::csexp::{parse, CsexpError, Event, Limits, Parser, Sexp, SexpReader};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Owned {
    Open,
    Close,
    Atom(Vec<u8>),
}

impl From<Event<'_>> for Owned {
    fn from(event: Event<'_>) -> Owned {
        match event {
            Event::Open => Owned::Open,
            Event::Close => Owned::Close,
            Event::Atom(atom) => Owned::Atom(atom.to_vec()),
        }
    }
}

/// Feeds the chunks in order, stopping at the first error; returns the events and the outcome.
fn run<'a>(
    limits: Limits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Owned>, Result<(), CsexpError>) {
    let mut parser = Parser::new(limits);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(err) = parser.feed(chunk, &mut |event| events.push(Owned::from(event))) {
            return (events, Err(err));
        }
    }
    (events, parser.finish())
}

fn read_split(limits: Limits, first: &[u8], second: &[u8]) -> Result<Sexp, CsexpError> {
    let mut reader = SexpReader::new(limits);
    reader.feed(first)?;
    reader.feed(second)?;
    reader.finish()
}

fuzz_target!(|data: &[u8]| {
    let [split, knob, atom, depth, total, input @ ..] = data else {
        return;
    };
    let limits = if knob % 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_atom_len: usize::from(*atom),
            max_depth: usize::from(*depth),
            max_total_len: u64::from(*total) * 4,
        }
    };
    let (first, second) = input.split_at(usize::from(*split) * input.len() / 255);

    let whole = run(limits, [input]);
    assert_eq!(
        run(limits, [first, second]),
        whole,
        "split at {}",
        first.len()
    );
    assert_eq!(run(limits, input.chunks(1)), whole, "byte by byte");

    let tree = parse(input, limits);
    assert_eq!(read_split(limits, first, second), tree);
    assert_eq!(tree.as_ref().err(), whole.1.as_ref().err());
    if let Ok(tree) = tree {
        assert_eq!(tree.to_bytes(), input);
        assert_eq!(tree.encoded_len(), input.len());
        assert_eq!(tree.events().map(Owned::from).collect::<Vec<_>>(), whole.0);
        assert_eq!(tree.clone(), tree);
    }
});
