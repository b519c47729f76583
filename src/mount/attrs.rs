//! The attributes the kernel is shown for each node, and how long it may keep them: plain
//! functions of what the store or a box says, tested without a mount.
//!
//! Entries are read-only whatever the store file's mode: 0555 if executable, else 0444. Their
//! times are the mount's start time, never the store file's: an entry must look the same before
//! and after it is fetched (tar fails with "file changed as we read it" when the ctime moves under
//! it, rsync copies it again when the mtime moves). An entry's inode stands for bytes that never
//! change (an artifact's key fixes them; a metadata inode stands for one value: see
//! [`inodes`](super::inodes)), so the kernel keeps what it learns of entries for an hour.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::inodes::RemoteAttr;
use super::policy::PlatformPolicy;
use super::tree::Node;
use crate::dune::key::mode_is_executable;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::EntryStat;

/// How long the kernel may trust what it learns of immutable nodes (artifacts, fixed
/// directories).
pub const TTL_IMMUTABLE: Duration = Duration::from_secs(3600);
/// How long it may trust scratch files, which Dune changes, and what a box *said* about an
/// artifact not yet fetched (its size and mode are only settled once the verified bytes are
/// installed).
pub const TTL_SCRATCH: Duration = Duration::from_secs(1);
const TTL_REMOTE: Duration = TTL_SCRATCH;

/// How long the kernel may keep what it learns of `entry`, held locally (`local`) or only on
/// its box. Held locally, an artifact never changes under its key, and a metadata entry's inode
/// stands for one value (a changed value gets a new inode: see [`Inodes`](super::inodes)).
pub fn entry_ttl(_entry: &Entry, local: bool) -> Duration {
    if local {
        TTL_IMMUTABLE
    } else {
        TTL_REMOTE
    }
}

/// What every node's attributes share: the mount's start time, owner and platform policy.
pub struct Attrs {
    /// The mount's start time, every entry's and fixed directory's times.
    pub started: SystemTime,
    /// The owner shown for every node but scratch files.
    pub uid: u32,
    /// The group shown likewise.
    pub gid: u32,
    /// How link counts are shown.
    pub policy: PlatformPolicy,
}

impl Attrs {
    /// A node's attributes with everything but its kind, mode and size fixed.
    pub fn base(&self, ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of a node that always exists (directories of the layout, the status file).
    pub fn fixed(&self, ino: u64, node: &Node) -> FileAttr {
        match node {
            Node::Status(_) => self.base(ino, FileType::Symlink, 0o777, 0),
            _ => self.base(ino, FileType::Directory, 0o755, 0),
        }
    }

    /// Attributes of an entry held locally (landing or in the store).
    pub fn local(&self, ino: u64, entry: &Entry, stat: EntryStat) -> FileAttr {
        let exe = entry.kind == EntryKind::File && mode_is_executable(stat.mode);
        let perm = if exe { 0o555 } else { 0o444 };
        let mut attr = self.base(ino, FileType::RegularFile, perm, stat.size);
        attr.nlink = self.policy.nlink(stat.nlink);
        attr
    }

    /// Attributes of an entry known only from what its box said.
    pub fn remote(&self, ino: u64, remote: RemoteAttr) -> FileAttr {
        let perm = if remote.executable { 0o555 } else { 0o444 };
        self.base(ino, FileType::RegularFile, perm, remote.size)
    }

    /// Attributes of an artifact shown as a link to its store file (`--reads links`), whose
    /// path is `target_len` bytes long: what `lstat` shows of any symbolic link.
    pub fn link(&self, ino: u64, target_len: usize) -> FileAttr {
        self.base(ino, FileType::Symlink, 0o777, target_len as u64)
    }

    /// Attributes of a real file of the store (a scratch file), as they are (link count per the
    /// policy).
    pub fn real(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let kind = file_type(meta.file_type());
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
        };
        let mut attr = self.base(ino, kind, (meta.mode() & 0o7777) as u16, meta.len());
        attr.blocks = meta.blocks();
        attr.atime = time(meta.atime(), meta.atime_nsec());
        attr.mtime = time(meta.mtime(), meta.mtime_nsec());
        attr.ctime = time(meta.ctime(), meta.ctime_nsec());
        attr.crtime = attr.ctime;
        if kind != FileType::Directory {
            attr.nlink = self.policy.nlink(meta.nlink());
        }
        attr
    }
}

/// The FUSE file type of a real file's type.
pub fn file_type(t: fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dune::layout::MetaVersion;

    fn attrs(policy: PlatformPolicy) -> Attrs {
        Attrs {
            started: UNIX_EPOCH + Duration::from_secs(1_000_000),
            uid: 7,
            gid: 8,
            policy,
        }
    }

    fn entry(kind: EntryKind) -> Entry {
        Entry {
            kind,
            key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
        }
    }

    #[test]
    fn entries_held_here_are_kept_long_what_a_box_said_briefly() {
        let file = entry(EntryKind::File);
        let v4 = entry(EntryKind::Meta(MetaVersion::V4));
        let v5 = entry(EntryKind::Meta(MetaVersion::V5));
        for entry in [file, v4, v5] {
            assert_eq!(entry_ttl(&entry, true), TTL_IMMUTABLE);
            assert_eq!(entry_ttl(&entry, false), TTL_REMOTE);
        }
    }

    #[test]
    fn entries_are_read_only_with_the_keys_executable_bit_and_the_mounts_times() {
        let a = attrs(PlatformPolicy::Linux);
        let stat = |mode, nlink| EntryStat {
            size: 1000,
            mode,
            nlink,
        };
        let file = entry(EntryKind::File);
        let exe = a.local(5, &file, stat(0o100555, 2));
        assert_eq!(
            (exe.perm, exe.size, exe.blocks, exe.nlink),
            (0o555, 1000, 2, 2)
        );
        assert_eq!((exe.uid, exe.gid, exe.ino), (7, 8, INodeNo(5)));
        assert_eq!(exe.mtime, a.started);
        assert_eq!(exe.ctime, a.started);
        assert_eq!(a.local(5, &file, stat(0o100444, 1)).perm, 0o444);
        // Metadata is never executable, whatever the store file's mode (Dune 3 writes 0600).
        let meta = entry(EntryKind::Meta(MetaVersion::V5));
        assert_eq!(a.local(5, &meta, stat(0o100755, 1)).perm, 0o444);
        assert_eq!(a.local(5, &meta, stat(0o100600, 1)).perm, 0o444);
        let remote = RemoteAttr {
            size: 9,
            executable: true,
        };
        let shown = a.remote(6, remote);
        assert_eq!(
            (shown.perm, shown.size, shown.kind),
            (0o555, 9, FileType::RegularFile)
        );
    }

    #[test]
    fn link_counts_follow_the_policy() {
        let stat = EntryStat {
            size: 1,
            mode: 0o100444,
            nlink: 3,
        };
        let file = entry(EntryKind::File);
        let linux = attrs(PlatformPolicy::Linux).local(2, &file, stat);
        let macos = attrs(PlatformPolicy::MacOs).local(2, &file, stat);
        assert_eq!(linux.nlink, PlatformPolicy::Linux.nlink(3));
        assert_eq!(macos.nlink, PlatformPolicy::MacOs.nlink(3));
    }

    #[test]
    fn an_artifact_shown_as_a_link_is_a_symbolic_link_as_long_as_its_target() {
        let a = attrs(PlatformPolicy::Linux);
        let shown = a.link(7, 52);
        assert_eq!(
            (shown.ino.0, shown.kind, shown.perm, shown.size, shown.nlink),
            (7, FileType::Symlink, 0o777, 52, 1)
        );
        assert_eq!(
            shown.mtime, a.started,
            "the mount's start time, as every entry's"
        );
    }

    #[test]
    fn fixed_nodes() {
        let a = attrs(PlatformPolicy::Linux);
        let status = a.fixed(3, &Node::Status(0));
        assert_eq!(
            (status.kind, status.perm, status.size),
            (FileType::Symlink, 0o777, 0)
        );
        let root = a.fixed(1, &Node::Root);
        assert_eq!(
            (root.kind, root.perm, root.nlink),
            (FileType::Directory, 0o755, 2)
        );
    }

    #[test]
    fn real_files_keep_their_own_mode_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch");
        fs::write(&path, b"12345").unwrap();
        let meta = fs::metadata(&path).unwrap();
        let shown = attrs(PlatformPolicy::Linux).real(4, &meta);
        assert_eq!(shown.size, 5);
        assert_eq!(u32::from(shown.perm), meta.mode() & 0o7777);
        assert_eq!(shown.mtime, meta.modified().unwrap());
        assert_eq!(
            file_type(fs::metadata(dir.path()).unwrap().file_type()),
            FileType::Directory
        );
    }
}
