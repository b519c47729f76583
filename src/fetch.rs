//! An entry fetched from its box into the store, verified: the one place where the bytes a box
//! sends meet the store's checks.
//!
//! The box client streams a body into a sink it knows nothing of; here that sink is a pending
//! entry of the store, which hashes artifacts against their key and parses metadata as the bytes
//! arrive, so a lying box is caught without a second pass and nothing unverified ever gets a
//! name. The mount and `get` both fetch through here, so another kind of source (an object
//! store, say) would plug in beside the box client without changing what happens to the bytes.

use crate::cluster::client::{BoxClient, ClientError, StreamError};
use crate::dune::layout::Entry;
use crate::store::{InstallOutcome, Store, StoreError, VerifiedEntry};

/// Why an entry could not be fetched into the store.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The box failed or could not be reached.
    #[error(transparent)]
    Box(#[from] ClientError),
    /// The box sent bytes that are not the entry: the wrong content for an artifact's key, or
    /// metadata that does not parse. Nothing was installed.
    #[error("box {url} sent a bad copy of {entry}: {cause}")]
    BadCopy {
        /// The box.
        url: String,
        /// The entry requested.
        entry: Entry,
        /// What verification found.
        cause: String,
    },
    /// The local side failed (disk full, unreadable file): not the box's fault.
    #[error(transparent)]
    Local(StoreError),
}

impl FetchError {
    /// Whether this failure means "the box is unavailable" (a miss for the mount) rather than a
    /// problem with the entry or the local side.
    pub fn is_box_unavailable(&self) -> bool {
        matches!(self, FetchError::Box(e) if e.is_box_unavailable())
    }

    /// A store error met while taking or checking the bytes: the box's fault if the bytes are
    /// not the entry, ours otherwise.
    fn of_store(client: &BoxClient, entry: &Entry, error: StoreError) -> FetchError {
        match error {
            StoreError::KeyMismatch { .. }
            | StoreError::ExecutableMismatch { .. }
            | StoreError::BadMetadata { .. } => {
                log::error!("box {} sent a bad copy of {entry}: {error}", client.url());
                FetchError::BadCopy {
                    url: client.url().to_string(),
                    entry: *entry,
                    cause: error.to_string(),
                }
            }
            local => FetchError::Local(local),
        }
    }
}

/// Fetches `entry` from `client`'s box and verifies it into a temp file (or memory) of `store`,
/// without naming it there: the caller commits it when it suits (the mount answers its reader
/// first). `Ok(None)` if the box does not hold it.
pub fn fetch_verified(
    client: &BoxClient,
    store: &Store,
    entry: &Entry,
) -> Result<Option<VerifiedEntry>, FetchError> {
    let mut pending = store.begin(*entry);
    match client.fetch(entry, |chunk| pending.write_chunk(chunk)) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(StreamError::Box(e)) => return Err(FetchError::Box(e)),
        Err(StreamError::Sink(e)) => return Err(FetchError::of_store(client, entry, e)),
    }
    pending
        .verify()
        .map(Some)
        .map_err(|e| FetchError::of_store(client, entry, e))
}

/// Fetches `entry` into `store`: verified, then installed atomically under its name.
/// `Ok(None)` if the box does not hold it.
pub fn fetch_into(
    client: &BoxClient,
    store: &Store,
    entry: &Entry,
) -> Result<Option<InstallOutcome>, FetchError> {
    let Some(verified) = fetch_verified(client, store, entry)? else {
        return Ok(None);
    };
    verified.commit().map(Some).map_err(FetchError::Local)
}
