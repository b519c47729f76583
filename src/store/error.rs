//! What can go wrong in the store: [`StoreError`], an I/O failure with its operation and path, or
//! an offer that failed its check.
//!
//! Apart from `mod.rs` because every part of the store reports it (the store itself, entries being
//! written, landing, trim and fsck): kept in the parent, each of them would import its parent. A
//! leaf: it imports nothing of the store. Re-exported as `store::StoreError`.

use std::io;
use std::path::{Path, PathBuf};

use crate::dune::layout::Entry;

/// An I/O failure in the store, with the operation and path it concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What the store was doing ("create", "read", "name", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error (ENOSPC, EACCES, ...).
        source: io::Error,
    },
    /// Another process owns the store (see [`Store::open_exclusive`](crate::store::Store::open_exclusive)).
    #[error("{} is in use by another process (a mount or a box of this store)", path.display())]
    InUse {
        /// The store's root.
        path: PathBuf,
    },
    /// Artifact bytes offered for a key do not reproduce it in either era.
    #[error("{entry}: the {size} bytes offered do not match the key in any era")]
    KeyMismatch {
        /// The entry that was being installed.
        entry: Entry,
        /// How many bytes were offered.
        size: u64,
    },
    /// Artifact bytes reproduce their key, but the key's executable bit is not the one the
    /// sender stated (see
    /// [`PendingEntry::expect_executable`](crate::store::PendingEntry::expect_executable)).
    #[error("{entry}: the bytes match the key, whose executable bit is {}, but the sender says {claimed}", !claimed)]
    ExecutableMismatch {
        /// The entry that was being installed.
        entry: Entry,
        /// The executable bit the sender stated.
        claimed: bool,
    },
    /// Metadata offered for a rule key is not valid Dune metadata.
    #[error("{entry}: not valid Dune metadata: {source}")]
    BadMetadata {
        /// The entry that was being installed.
        entry: Entry,
        /// Why it does not parse.
        source: crate::dune::metadata::MetadataError,
    },
}

impl StoreError {
    /// Wraps an `io::Error` with the operation and path, for `map_err`.
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno-level kind, so the box can answer a full disk with 507 and the uploader can
    /// tell an entry that left the store.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The OS error number itself, for the mount to answer the kernel with the very errno the
    /// store met (a kind cannot be turned back into one: ENOSPC would become EIO).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
