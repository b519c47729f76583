//! Dune's own files in `db/` (its "scratch": `beacon`, `promoting.*/`, `temp/`, logs), which the
//! mount stores as ordinary files and directories in the store's root.
//!
//! Dune 2.9 fails the build if it cannot create its scratch directory in `db/`, so these behave
//! like a plain local directory. The helpers here turn FUSE's requests into the matching calls on
//! the real files; the FUSE layer decides which paths are scratch.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use fuser::TimeOrNow;
use rustix::fs::{AtFlags, OFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};

/// Whether open flags ask for write access or truncation.
pub fn writes(flags: i32) -> bool {
    let flags = OFlags::from_bits_truncate(flags as u32);
    flags.intersects(OFlags::WRONLY | OFlags::RDWR | OFlags::TRUNC)
}

/// Opens (or, with `create`, creates with `mode`) a scratch file the way the open flags ask.
pub fn open(path: &Path, flags: i32, create: Option<u32>) -> io::Result<File> {
    let oflags = OFlags::from_bits_truncate(flags as u32);
    let mut options = OpenOptions::new();
    // RDONLY is 0: the access mode is compared whole, never tested with `contains`.
    let access = oflags & OFlags::ACCMODE;
    options
        .read(access == OFlags::RDONLY || access == OFlags::RDWR)
        .write(access == OFlags::WRONLY || access == OFlags::RDWR)
        .append(oflags.contains(OFlags::APPEND))
        .truncate(oflags.contains(OFlags::TRUNC));
    if let Some(mode) = create {
        options.mode(mode);
        // As with open(2), a file created read-only (Dune creates its temp files 0444) stays
        // writable through the descriptor that created it.
        if oflags.contains(OFlags::EXCL) {
            options.create_new(true);
        } else {
            options.create(true);
        }
    }
    options.open(path)
}

/// Creates a scratch directory with `mode`.
pub fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(path)
}

/// Applies the parts of a `setattr` that are present: mode, size, owner, times.
pub fn set_attributes(
    path: &Path,
    mode: Option<u32>,
    owner: (Option<u32>, Option<u32>),
    size: Option<u64>,
    times: (Option<TimeOrNow>, Option<TimeOrNow>),
    open_file: Option<&File>,
) -> io::Result<()> {
    if let Some(mode) = mode {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    if owner.0.is_some() || owner.1.is_some() {
        std::os::unix::fs::lchown(path, owner.0, owner.1)?;
    }
    if let Some(size) = size {
        match open_file {
            Some(file) => file.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if times.0.is_some() || times.1.is_some() {
        let times = Timestamps {
            last_access: time_spec(times.0),
            last_modification: time_spec(times.1),
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

fn time_spec(time: Option<TimeOrNow>) -> Timespec {
    let special = |tv_nsec| Timespec { tv_sec: 0, tv_nsec };
    match time {
        None => special(UTIME_OMIT),
        Some(TimeOrNow::Now) => special(UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            Timespec::try_from(since).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        }
    }
}

/// Copies a file with its mode: what `link()` does under the macOS policy, where two names must
/// never share a node.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    fs::copy(from, to).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_created_read_only_is_writable_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("temp-data");
        let flags = (OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC).bits() as i32;
        let mut file = open(&path, flags, Some(0o444)).unwrap();
        file.write_all(b"bytes").unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), b"bytes");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(writes(flags));
        assert!(!writes(OFlags::RDONLY.bits() as i32));
        let mut again = open(&path, OFlags::RDONLY.bits() as i32, None).unwrap();
        let mut text = String::new();
        again.read_to_string(&mut text).unwrap();
        assert_eq!(text, "bytes");
    }

    #[test]
    fn exclusive_create_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"").unwrap();
        let flags = (OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL).bits() as i32;
        let err = open(&path, flags, Some(0o644)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn attributes_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        set_attributes(
            &path,
            Some(0o600),
            (None, None),
            Some(4),
            (None, Some(TimeOrNow::SpecificTime(when))),
            None,
        )
        .unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 4);
        assert_eq!(meta.modified().unwrap(), when);
    }
}
