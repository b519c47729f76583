//! An entry fetched from its box into the store, verified: the one place where the bytes a box
//! sends meet the store's checks.
//!
//! The box client streams a body into a sink it knows nothing of; here that sink is a pending
//! entry of the store, which hashes artifacts against their key and parses metadata as the bytes
//! arrive, so a lying box is caught without a second pass and nothing unverified ever gets a
//! name. The mount and `get` both fetch through here, whatever kind of node the entry comes from
//! (a box, or an S3 bucket): the bytes meet the same checks, and so does the executable bit a
//! node claims for an artifact.

use crate::cluster::client::{ClientError, StreamError};
use crate::cluster::node::NodeClient;
use crate::dune::key::Awaited;
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
    /// A fetch ahead of the user stopped at its byte budget; nothing was kept.
    #[error("the prefetch byte budget is spent")]
    OverBudget,
}

impl FetchError {
    /// Whether this failure means "the box is unavailable" (a miss for the mount) rather than a
    /// problem with the entry or the local side.
    pub fn is_box_unavailable(&self) -> bool {
        matches!(self, FetchError::Box(e) if e.is_box_unavailable())
    }

    /// A store error met while taking or checking the bytes: the box's fault if the bytes are
    /// not the entry, ours otherwise.
    fn of_store(client: &NodeClient, entry: &Entry, error: StoreError) -> FetchError {
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

impl crate::cluster::Unavailable for FetchError {
    fn is_box_unavailable(&self) -> bool {
        FetchError::is_box_unavailable(self)
    }
}

/// An entry fetched and verified, not yet named in the store.
pub struct Fetched {
    /// The verified bytes.
    pub verified: VerifiedEntry,
    /// For a rule's metadata, the rules the box's hint says come next (advice: unverified).
    pub next: Vec<Entry>,
}

/// Fetches `entry` from `client`'s box and verifies it into a temp file (or memory) of `store`,
/// without naming it there: the caller commits it when it suits (the mount answers its reader
/// first). `Ok(None)` if the box does not hold it. `ahead`: fetched ahead of the user (a
/// prefetch), with what says whether the user has come to wait for it since (its MD5 is then
/// not held back to be hashed beside others'); `budget` may refuse bytes past a limit
/// ([`FetchError::OverBudget`]).
pub fn fetch_verified(
    client: &NodeClient,
    store: &Store,
    entry: &Entry,
    ahead: Option<&Awaited>,
    mut budget: impl FnMut(usize) -> bool,
) -> Result<Option<Fetched>, FetchError> {
    let mut pending = match ahead {
        Some(awaited) if !awaited.get() => store.begin_ahead(*entry, awaited.clone()),
        _ => store.begin(*entry),
    };
    let ahead = ahead.is_some();
    let take = |chunk: &[u8]| match budget(chunk.len()) {
        true => pending.write_chunk(chunk).map_err(Some),
        false => Err(None),
    };
    let delivered = match client.fetch(entry, ahead, take) {
        Ok(Some(delivered)) => delivered,
        Ok(None) => return Ok(None),
        Err(StreamError::Box(e)) => return Err(FetchError::Box(e)),
        Err(StreamError::Sink(Some(e))) => return Err(FetchError::of_store(client, entry, e)),
        Err(StreamError::Sink(None)) => return Err(FetchError::OverBudget),
    };
    if let Some(executable) = delivered.executable {
        pending.expect_executable(executable);
    }
    let verified = pending
        .verify()
        .map_err(|e| FetchError::of_store(client, entry, e))?;
    Ok(Some(Fetched {
        verified,
        next: delivered.next,
    }))
}

/// Fetches `entry` into `store`: verified, then installed atomically under its name.
/// `Ok(None)` if the box does not hold it.
pub fn fetch_into(
    client: &NodeClient,
    store: &Store,
    entry: &Entry,
) -> Result<Option<InstallOutcome>, FetchError> {
    let Some(fetched) = fetch_verified(client, store, entry, None, |_| true)? else {
        return Ok(None);
    };
    fetched
        .verified
        .commit()
        .map(Some)
        .map_err(FetchError::Local)
}
