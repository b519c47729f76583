//! The cluster of cache boxes: which box owns which key, and how to reach it.
//!
//! There is no replication and no discovery: a static range table, the [`config`], names for
//! every key the one box that owns it. Every party reads the same file and so agrees without
//! talking: the mount sends a fetch or an upload straight to the owner, and a box refuses a key
//! outside its own ranges (HTTP 421) instead of storing it where no client would look. A dead box
//! therefore costs exactly its keys (they become misses that Dune rebuilds), nothing more.
//!
//! The file format is the 2020 `dune-distributed-cache` one, read more strictly: the ranges must
//! cover every key exactly once. See [`config`] and `docs/cluster-config.md`.

pub mod config;
mod sexp;
