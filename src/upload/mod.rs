//! Uploading local entries to the boxes that own them.
//!
//! [`upload_entry`] is the one step every upload path shares (the `push` command now, the mount's
//! background uploader later): send one entry to its owning box unless the box already has it, and
//! say plainly what happened. [`push`] uploads a whole store in two phases, all artifacts and then
//! the metadata, so that no box ever holds metadata naming an artifact that was not uploaded: a
//! machine restoring that rule would find the metadata and then miss the file.

pub mod background;
pub mod push;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;

use crate::cluster::client::{ClientError, PutOutcome};
use crate::cluster::Cluster;
use crate::dune::key::mode_is_executable;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::{Store, StoreError};

/// What happened to one entry.
#[derive(Debug)]
pub enum Uploaded {
    /// The box did not have it and now does.
    Sent,
    /// The box already had it (for metadata: the same value).
    AlreadyThere,
    /// The box holds a different metadata value for this rule key and kept it (first writer
    /// wins). Not an error: non-deterministic rules do this, and the box records it.
    Collision(String),
}

/// Why one entry could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The box refused it for good (see [`is_final_refusal`]): sending it again cannot succeed
    /// until something outside this upload changes (the entry, the box's limits or the config).
    #[error("{entry}: box {url} refused it (HTTP {status}: {message}); {}", refusal_advice(*status))]
    Refused {
        /// The entry.
        entry: Entry,
        /// The box.
        url: String,
        /// The HTTP status of the refusal.
        status: u16,
        /// The box's explanation.
        message: String,
    },
    /// The box could not be reached or failed.
    #[error("{entry}: {source}")]
    Box {
        /// The entry.
        entry: Entry,
        /// What went wrong.
        source: ClientError,
    },
    /// The local entry could not be read.
    #[error("{entry}: {source}")]
    Local {
        /// The entry.
        entry: Entry,
        /// What went wrong.
        source: StoreError,
    },
    /// Metadata was held back because an artifact it names is on no box.
    #[error(
        "{entry}: not uploaded because it names artifact {missing}, which did not reach its box"
    )]
    MissingArtifact {
        /// The metadata entry.
        entry: Entry,
        /// The artifact it names.
        missing: Entry,
    },
}

/// Uploads one entry of `store` to its owning box, unless the box already has it.
///
/// Artifacts are asked about first (`HEAD`), since their bodies can be large and an artifact's key
/// fixes its content. Metadata is small and its key does not fix its content, so it is sent
/// directly and the box's answer (stored, identical, or collision) is the check.
pub fn upload_entry(
    cluster: &Cluster,
    store: &Store,
    entry: &Entry,
) -> Result<Uploaded, UploadError> {
    let client = cluster.owner(&entry.key);
    let box_err = |source| UploadError::Box {
        entry: *entry,
        source,
    };
    if entry.kind == EntryKind::File && client.head(entry).map_err(box_err)?.is_some() {
        return Ok(Uploaded::AlreadyThere);
    }
    let path = store.path_of(entry);
    let local = |source| UploadError::Local {
        entry: *entry,
        source,
    };
    let file = File::open(&path).map_err(|e| local(StoreError::io("open", &path)(e)))?;
    let mode = file
        .metadata()
        .map_err(|e| local(StoreError::io("stat", &path)(e)))?
        .permissions()
        .mode();
    match client.put(entry, &file, mode_is_executable(mode)) {
        Ok(PutOutcome::Stored) => Ok(Uploaded::Sent),
        Ok(PutOutcome::AlreadyPresent) => Ok(Uploaded::AlreadyThere),
        Ok(PutOutcome::Collision { message }) => Ok(Uploaded::Collision(message)),
        Err(ClientError::Status {
            status,
            url,
            message,
            ..
        }) if is_final_refusal(status) => Err(UploadError::Refused {
            entry: *entry,
            url,
            status,
            message,
        }),
        Err(e) => Err(box_err(e)),
    }
}

/// Whether a box's HTTP `status` in answer to a `PUT` refuses the entry for good, so that
/// sending the same bytes again is pointless: every 4xx but those that a later attempt may not
/// get (408 timeout, 425 too early, 429 too many requests) and those that a renewed credential
/// fixes (401, 403, 407). 5xx and transport failures are the box's trouble, never final.
pub fn is_final_refusal(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 407 | 408 | 425 | 429)
}

/// What to do about a final refusal, for its one log line.
fn refusal_advice(status: u16) -> &'static str {
    match status {
        413 => "the entry is larger than the box accepts (its --max-body); raise that limit and run `dune-cachefs push`",
        421 => "the box does not own this key under its config: the mount's and the box's cluster configs disagree",
        422 => "the local copy is not what its name says; run `dune-cachefs fsck` on the local store",
        _ => "not retried; `dune-cachefs push` sends it once the cause is fixed",
    }
}

#[cfg(test)]
mod tests {
    use super::is_final_refusal;

    #[test]
    fn which_refusals_are_final() {
        for status in [400, 404, 405, 411, 413, 414, 415, 421, 422, 431, 499] {
            assert!(is_final_refusal(status), "{status}");
        }
        // Retried: a renewed credential or a later attempt may succeed; the box's trouble.
        for status in [
            401, 403, 407, 408, 425, 429, 500, 502, 503, 504, 200, 201, 302,
        ] {
            assert!(!is_final_refusal(status), "{status}");
        }
    }
}
