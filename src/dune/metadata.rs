//! Dune's rule metadata entries (`meta/v4`, `meta/v5`).
//!
//! PLACEHOLDER on the `ci` branch, replaced wholesale by the csexp/metadata work: it only fixes
//! the contract `tests/real_dune_cache.rs` is written against (`Metadata::parse` and
//! `Metadata::to_bytes`, which must round-trip Dune's bytes exactly), so that the test compiles
//! and everything else runs before that work lands. `parse` refuses every input.

use std::fmt;

/// A parsed metadata entry (placeholder: holds nothing yet).
#[derive(Debug)]
pub struct Metadata {
    _private: (),
}

/// Why bytes are not a metadata entry.
#[derive(Debug)]
pub struct MetadataError;

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("metadata parsing is not built yet on this branch")
    }
}

impl std::error::Error for MetadataError {}

impl Metadata {
    /// Parses one metadata entry (one canonical S-expression).
    pub fn parse(_bytes: &[u8]) -> Result<Metadata, MetadataError> {
        Err(MetadataError)
    }

    /// The entry's canonical bytes: exactly what [`Metadata::parse`] was given.
    pub fn to_bytes(&self) -> Vec<u8> {
        Vec::new()
    }
}
