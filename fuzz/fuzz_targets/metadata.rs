//! Metadata entries from arbitrary bytes: never a panic, the same outcome whatever the
//! chunking, every accepted entry re-encodes to the very input, and a csexp error reported by
//! the metadata reader is exactly the one the plain csexp parser reports.
//!
//! Input layout: `[split, input...]`; the split byte picks where the input is cut in two.
#![no_main]

use dune_cachefs::dune::csexp;
use dune_cachefs::dune::metadata::{Metadata, MetadataError, MetadataReader, LIMITS};
use libfuzzer_sys::fuzz_target;

fn read<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Metadata, MetadataError> {
    let mut reader = MetadataReader::new();
    for chunk in chunks {
        reader.feed(chunk)?;
    }
    reader.finish()
}

fuzz_target!(|data: &[u8]| {
    let [split, input @ ..] = data else {
        return;
    };
    let (first, second) = input.split_at(usize::from(*split) * input.len() / 255);

    let whole = Metadata::parse(input);
    assert_eq!(read([first, second]), whole, "split at {}", first.len());
    assert_eq!(read(input.chunks(1)), whole, "byte by byte");

    match &whole {
        Ok(meta) => {
            assert_eq!(meta.to_bytes(), input);
            assert!(csexp::parse(input, LIMITS).is_ok());
        }
        Err(MetadataError::Csexp(err)) => {
            assert_eq!(csexp::parse(input, LIMITS).err().as_ref(), Some(err));
        }
        Err(_) => {}
    }
});
