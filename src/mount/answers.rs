//! Which errno the kernel gets for each failure, per operation, decided without a mount.
//!
//! The same failure means different things to different requests. An entry whose box is down or
//! does not hold it is a *miss* when Dune looks it up (ENOENT: Dune then runs the rule), but an
//! *error* when something opens an entry it was shown (EIO: the file exists and cannot be read
//! now). A box that sends a bad copy is an error either way. The local side's failures keep their
//! own errno (ENOSPC for a full disk), which says more than EIO.

use std::io;

use fuser::Errno;

use super::remote::FetchFailure;
use crate::store::{InstallOutcome, StoreError};

/// The errno of an I/O error; EIO for the (rare) errors that carry none.
pub fn of_io(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

/// The errno of a store error: the one the store met, EIO if it met none.
pub fn of_store(e: &StoreError) -> Errno {
    e.os_error().map_or(Errno::EIO, Errno::from_i32)
}

/// A lookup of an entry whose fetch failed (a metadata lookup fetches the value at once).
pub fn lookup_failed(failure: &FetchFailure) -> Errno {
    match failure {
        // Absent or unreachable: a miss, so Dune runs the rule.
        FetchFailure::Missing | FetchFailure::Unavailable(_) => Errno::ENOENT,
        // A box that lies is an error to surface, as when opening an artifact.
        FetchFailure::BadCopy(_) => Errno::EIO,
        FetchFailure::Local(errno, _) => Errno::from_i32(*errno),
    }
}

/// An open of an entry whose fetch failed.
pub fn open_failed(failure: &FetchFailure) -> Errno {
    match failure {
        FetchFailure::Missing => Errno::ENOENT,
        FetchFailure::Unavailable(_) | FetchFailure::BadCopy(_) => Errno::EIO,
        FetchFailure::Local(errno, _) => Errno::from_i32(*errno),
    }
}

/// What an install (Dune renaming or linking a scratch file into the layout) answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// A new entry: stored, and listings that may show it change.
    New,
    /// The same entry was there already: nothing changes.
    Present,
    /// Another metadata value is held for the rule: it stays (first writer wins); Dune is told
    /// its store worked, as its own cache does.
    KeptFirst,
    /// Refused: the bytes are not what the name says (EINVAL), or the store failed (its errno).
    Refused(Errno),
}

/// What an install's outcome means for the rename or link that asked for it.
pub fn installed(outcome: &Result<InstallOutcome, StoreError>) -> Installed {
    match outcome {
        Ok(InstallOutcome::Stored) => Installed::New,
        Ok(InstallOutcome::AlreadyPresent) => Installed::Present,
        Ok(InstallOutcome::Collision { .. }) => Installed::KeptFirst,
        Err(
            StoreError::KeyMismatch { .. }
            | StoreError::ExecutableMismatch { .. }
            | StoreError::BadMetadata { .. },
        ) => Installed::Refused(Errno::EINVAL),
        Err(e) => Installed::Refused(of_store(e)),
    }
}

impl Installed {
    /// The answer to the rename or link.
    pub fn answer(self) -> Result<(), Errno> {
        match self {
            Installed::Refused(errno) => Err(errno),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::{Entry, EntryKind};
    use std::path::PathBuf;

    #[test]
    fn fetch_failures_per_operation() {
        let cases = [
            (FetchFailure::Missing, Errno::ENOENT, Errno::ENOENT),
            (
                FetchFailure::Unavailable("down".into()),
                Errno::ENOENT,
                Errno::EIO,
            ),
            (FetchFailure::BadCopy("lies".into()), Errno::EIO, Errno::EIO),
            (
                FetchFailure::Local(libc_enospc(), "full".into()),
                Errno::ENOSPC,
                Errno::ENOSPC,
            ),
        ];
        for (failure, lookup, open) in cases {
            assert_eq!(lookup_failed(&failure), lookup, "lookup: {failure:?}");
            assert_eq!(open_failed(&failure), open, "open: {failure:?}");
        }
    }

    fn libc_enospc() -> i32 {
        rustix::io::Errno::NOSPC.raw_os_error()
    }

    #[test]
    fn install_outcomes() {
        let entry = Entry {
            kind: EntryKind::File,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        };
        let io_error = |errno| StoreError::Io {
            op: "link",
            path: PathBuf::from("x"),
            source: io::Error::from_raw_os_error(errno),
        };
        type Case = (
            Result<InstallOutcome, StoreError>,
            Installed,
            Result<(), Errno>,
        );
        let cases: Vec<Case> = vec![
            (Ok(InstallOutcome::Stored), Installed::New, Ok(())),
            (
                Ok(InstallOutcome::AlreadyPresent),
                Installed::Present,
                Ok(()),
            ),
            (
                Ok(InstallOutcome::Collision {
                    held: [0; 32],
                    offered: [1; 32],
                }),
                Installed::KeptFirst,
                Ok(()),
            ),
            (
                Err(StoreError::KeyMismatch { entry, size: 3 }),
                Installed::Refused(Errno::EINVAL),
                Err(Errno::EINVAL),
            ),
            (
                Err(StoreError::ExecutableMismatch {
                    entry,
                    claimed: true,
                }),
                Installed::Refused(Errno::EINVAL),
                Err(Errno::EINVAL),
            ),
            (
                Err(io_error(rustix::io::Errno::NOSPC.raw_os_error())),
                Installed::Refused(Errno::ENOSPC),
                Err(Errno::ENOSPC),
            ),
            (
                Err(io_error(rustix::io::Errno::DQUOT.raw_os_error())),
                Installed::Refused(Errno::from_i32(rustix::io::Errno::DQUOT.raw_os_error())),
                Err(Errno::from_i32(rustix::io::Errno::DQUOT.raw_os_error())),
            ),
            (
                Err(StoreError::InUse {
                    path: PathBuf::from("db"),
                }),
                Installed::Refused(Errno::EIO),
                Err(Errno::EIO),
            ),
        ];
        for (outcome, want, answer) in cases {
            assert_eq!(installed(&outcome), want, "{outcome:?}");
            assert_eq!(installed(&outcome).answer(), answer, "{outcome:?}");
        }
    }

    #[test]
    fn io_errors_keep_their_errno() {
        assert_eq!(
            of_io(&io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error()
            )),
            Errno::ENOSPC
        );
        assert_eq!(of_io(&io::Error::other("no errno")), Errno::EIO);
    }
}
