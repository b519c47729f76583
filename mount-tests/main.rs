//! Tests that mount the filesystem for real: root, `/dev/fuse`, real boxes on loopback, real
//! programs (`find`, `cp`, `rsync`, `tar`, Dune) on the mount.
//!
//! Without root or `/dev/fuse` every test here says so loudly on stderr and returns; with
//! `CI` (or `DUNE_CACHEFS_REQUIRE_FUSE`) set they fail instead, so CI can never pass by skipping.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

mod access;
mod cluster_growth;
mod dune_e2e;
mod dune_generations;
mod entries;
mod fault_suite;
mod faults;
mod kerberos_mount;
mod lifecycle;
mod operations;
mod policy;
mod read_path;
mod s3_mount;
mod tls_mount;
