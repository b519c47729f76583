//! Opening an entry to answer a `GET` or `HEAD`: what the answer needs ([`Opened`]), the way that
//! may wait for the disk ([`open_blocking`]), and when a read is recorded in the entry's atime.
//!
//! Two paths open entries: `cached.rs`, on the runtime's own thread when the kernel can answer at
//! once, and [`open_blocking`], on tokio's blocking pool, for everything else. They must agree on
//! what an entry is served as and on when a read is stamped, so those rules live here, below
//! both, and the request handler only picks the path.

use std::fs::{File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::body;
use crate::dune::key::mode_is_executable;
use crate::dune::layout::{Entry, EntryKind};

/// An entry read within this long is not re-stamped: one `futimens` per entry per minute is
/// plenty for least-recently-read trimming and keeps hot entries from costing a write per read.
const ATIME_GRANULARITY: Duration = Duration::from_secs(60);

/// What opening an entry for serving found.
pub(super) enum Opened {
    /// The box does not hold the entry.
    Missing,
    /// Size and executable bit, for `HEAD`.
    Described(u64, bool),
    /// The whole entry, read at once (small entries).
    Whole(Bytes, bool),
    /// An open file to stream (large entries).
    Streamed(File, u64, bool),
}

/// Opens the entry at `path` on a thread that may wait for the disk, stamping the read.
pub(super) fn open_blocking(path: PathBuf, entry: Entry, head: bool) -> io::Result<Opened> {
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let executable = served_executable(entry, &meta);
    let len = meta.len();
    if head {
        return Ok(Opened::Described(len, executable));
    }
    stamp_read(&file, &meta);
    if len <= body::SMALL {
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)?;
        return Ok(Opened::Whole(bytes.into(), executable));
    }
    Ok(Opened::Streamed(file, len, executable))
}

/// Whether the entry is served as executable: artifacts by their mode, metadata never.
pub(super) fn served_executable(entry: Entry, meta: &std::fs::Metadata) -> bool {
    entry.kind == EntryKind::File && mode_is_executable(meta.mode())
}

/// Records that an entry was read, for least-recently-read trimming (best effort: a failure
/// only makes trimming a little less accurate).
fn stamp_read(file: &File, meta: &std::fs::Metadata) {
    if stamp_due(meta) {
        if let Err(e) = file.set_times(FileTimes::new().set_accessed(SystemTime::now())) {
            log::debug!("cannot stamp atime: {e}");
        }
    }
}

/// Whether reading an entry with this `meta` should stamp its atime ([`ATIME_GRANULARITY`]).
pub(super) fn stamp_due(meta: &std::fs::Metadata) -> bool {
    let last = UNIX_EPOCH + Duration::new(meta.atime().max(0) as u64, meta.atime_nsec() as u32);
    SystemTime::now().duration_since(last).unwrap_or_default() >= ATIME_GRANULARITY
}
