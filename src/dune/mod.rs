//! Dune's cache formats: what a key is, how a file's key is computed in each era, the csexp
//! encoding, rule metadata, and where entries live in a `db/` directory.
//!
//! Nothing here does I/O beyond reading from a caller-supplied reader: these are the pure facts
//! the store, the boxes and the mount all agree on.

pub mod csexp;
pub mod key;
pub mod layout;
pub mod metadata;
