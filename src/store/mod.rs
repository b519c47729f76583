//! The local store: a Dune `db/` directory.
