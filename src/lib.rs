//! dune-cachefs: a team's shared Dune build cache, presented as an ordinary local cache directory.
//!
//! The crate follows the data's path, one module per stage:
//!
//! - [`dune`]: Dune's own formats — keys and file digests of both eras, csexp, rule metadata and
//!   the `db/` layout. Everything else speaks in these types.
//! - [`store`]: the local store, a real Dune `db/` directory: atomic, verified installs,
//!   first-writer-wins metadata, trimming with Dune's semantics, and `fsck`.
//! - [`cluster`]: the static range table that names the one node owning each key (a cache box,
//!   or a bucket of an S3-compatible object store), and the clients that talk to them (timeouts,
//!   fail-fast, signed requests to buckets).
//! - [`fetch`]: an entry fetched from its box into the store, verified on the way.
//! - [`hints`]: for each rule, the rules Dune asked for next, so a mount can fetch ahead.
//! - [`boxd`]: the cache box server.
//! - [`mount`]: the FUSE filesystem that presents the store and the boxes as one Dune cache.
//! - [`upload`]: sending local entries to their owning boxes (`push`).
//! - [`metrics`]: the Prometheus text format both the box and the mount expose their counters in.
//! - [`service`]: telling systemd that a box or a mount is ready.
//! - [`rebalance`]: moving entries to their new owners when boxes are added or removed.
//!
//! The facts about Dune's cache these modules rely on (its layout in each Dune release, both key
//! eras with test vectors, the metadata format, how Dune writes and reads its cache) are in
//! `docs/dune-cache.md`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod boxd;
pub mod cluster;
pub mod dune;
pub mod fetch;
pub mod hints;
pub mod metrics;
pub mod mount;
pub mod rebalance;
pub mod service;
pub mod store;
mod sync;
pub mod upload;
