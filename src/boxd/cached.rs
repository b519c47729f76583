//! Answering a read from memory, on the runtime's own thread, when the kernel can do it at once.
//!
//! Handing a `GET` to tokio's blocking pool and back costs two thread wake-ups, and for a small
//! entry in the page cache those are most of the work: served that way, the box answered about a
//! third to a half of nginx's requests per second on 4 KiB entries (`scripts/bench-box`). But a
//! box holds far more than its memory, and a read that waits for the disk must never stall a
//! runtime thread and every connection on it (as a blocking read in nginx's event loop does).
//!
//! Linux tells the two cases apart for us: `openat2` with `RESOLVE_CACHED` fails with `EAGAIN`
//! unless the whole path resolves from the dentry cache, and `preadv2` with `RWF_NOWAIT` unless
//! the bytes are in the page cache. So [`try_open`] serves what needs no waiting, and everything
//! else (a cold entry, an atime stamp due, any error, a kernel or filesystem without these calls,
//! another OS) goes to the blocking pool exactly as before, which also reports the errors.

use std::path::Path;

use super::opened::Opened;
use crate::dune::layout::Entry;

/// The entry at `path` opened (and, if small, read) without waiting for the disk; `None` when
/// that is not possible and the blocking pool must do it.
#[cfg(target_os = "linux")]
pub(super) fn try_open(path: &Path, entry: Entry, head: bool) -> Option<Opened> {
    use std::fs::File;
    use std::io::IoSliceMut;

    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    use rustix::io::{preadv2, Errno, ReadWriteFlags};

    use super::body;
    use super::opened::{served_executable, stamp_due};

    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    let file = match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => File::from(fd),
        // Resolved from the cache, to a name that is not there.
        Err(Errno::NOENT) => return Some(Opened::Missing),
        Err(_) => return None,
    };
    let meta = file.metadata().ok()?;
    let executable = served_executable(entry, &meta);
    let len = meta.len();
    if head {
        return Some(Opened::Described(len, executable));
    }
    // Stamping writes the inode, which may wait for the journal.
    if stamp_due(&meta) {
        return None;
    }
    if len > body::SMALL {
        return Some(Opened::Streamed(file, len, executable));
    }
    let mut bytes = vec![0u8; len as usize];
    let read = preadv2(
        &file,
        &mut [IoSliceMut::new(&mut bytes)],
        0,
        ReadWriteFlags::NOWAIT,
    );
    // A short read means part of the entry is not in the page cache: the pool reads it all.
    (read.ok()? == bytes.len()).then(|| Opened::Whole(bytes.into(), executable))
}

/// Elsewhere than Linux, every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
pub(super) fn try_open(_path: &Path, _entry: Entry, _head: bool) -> Option<Opened> {
    None
}

/// A small file's bytes (`Some(None)`: there is no such file) read without waiting for the disk;
/// `None` when that is not possible. For the hints sent beside metadata.
#[cfg(target_os = "linux")]
pub(super) fn try_read(path: &Path) -> Option<Option<Vec<u8>>> {
    use std::fs::File;
    use std::io::IoSliceMut;

    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    use rustix::io::{preadv2, Errno, ReadWriteFlags};

    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    let file = match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => File::from(fd),
        Err(Errno::NOENT) => return Some(None),
        Err(_) => return None,
    };
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    if len > crate::hints::MAX_BODY {
        return None;
    }
    let mut bytes = vec![0u8; len];
    let read = preadv2(
        &file,
        &mut [IoSliceMut::new(&mut bytes)],
        0,
        ReadWriteFlags::NOWAIT,
    );
    (read.ok()? == len).then_some(Some(bytes))
}

/// Elsewhere than Linux, every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
pub(super) fn try_read(_path: &Path) -> Option<Option<Vec<u8>>> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::fs::{self, File, FileTimes, Permissions};
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::boxd::body;
    use crate::dune::layout::{EntryKind, MetaVersion};

    fn entry(kind: EntryKind) -> Entry {
        Entry {
            kind,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        }
    }

    /// Writes `bytes` to `name` in `dir` with `mode`; a file just written is in the dentry and
    /// page caches, so it must be answered here.
    fn written(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn cached_entries_are_answered_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = entry(EntryKind::File);
        let small = written(dir.path(), "small", b"content\n", 0o555);
        match try_open(&small, file, false) {
            Some(Opened::Whole(bytes, true)) => assert_eq!(&bytes[..], b"content\n"),
            _ => panic!("a cached small entry is read whole, executable"),
        }
        assert!(matches!(
            try_open(&small, file, true),
            Some(Opened::Described(8, true))
        ));
        // Metadata is never executable, whatever its mode.
        let meta = entry(EntryKind::Meta(MetaVersion::V5));
        assert!(matches!(
            try_open(&small, meta, true),
            Some(Opened::Described(8, false))
        ));
        let empty = written(dir.path(), "empty", b"", 0o444);
        assert!(matches!(
            try_open(&empty, file, false),
            Some(Opened::Whole(bytes, false)) if bytes.is_empty()
        ));
        let large = written(
            dir.path(),
            "large",
            &vec![7u8; body::SMALL as usize + 1],
            0o444,
        );
        assert!(matches!(
            try_open(&large, file, false),
            Some(Opened::Streamed(_, len, false)) if len == body::SMALL + 1
        ));
        // An absent name is answered in place once the kernel has cached its absence.
        let absent = dir.path().join("absent");
        assert!(File::open(&absent).is_err());
        assert!(matches!(
            try_open(&absent, file, false),
            Some(Opened::Missing)
        ));
    }

    #[test]
    fn a_due_atime_stamp_goes_to_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let file = entry(EntryKind::File);
        let path = written(dir.path(), "old", b"content\n", 0o444);
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        File::open(&path)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(long_ago))
            .unwrap();
        assert!(try_open(&path, file, false).is_none());
        // A HEAD does not count as a read, so it is still answered in place.
        assert!(matches!(
            try_open(&path, file, true),
            Some(Opened::Described(8, false))
        ));
    }
}
