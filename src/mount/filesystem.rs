//! The `fuser::Filesystem` implementation: it only translates. Each callback decodes the
//! request, asks the function that decides ([`tree`]: what a path is;
//! [`changes`]: what an open, create, rename, link or setattr means;
//! [`answers`]: which errno a failure becomes; [`attrs`](super::attrs): what the
//! kernel is shown and for how long; [`directory`](super::directory): what a listing holds),
//! carries out its I/O through `Shared` (`shared.rs`), and replies.
//!
//! Entries are immutable, so their attributes and names are cached by the kernel for an hour
//! and their pages are kept. By default (`--reads kept`) the first OPEN is answered ENOSYS,
//! after which the kernel opens files without asking and keeps their pages across opens: a
//! restored entry costs no OPEN and no RELEASE, and once read no READ either; the daemon reads
//! by inode what the kernel lacks (`unopened`). With `--reads passthrough` every open is asked
//! and registers the store file for FUSE passthrough when the kernel and our privileges allow it
//! (the kernel then reads the store file itself; the fallback to daemon reads is automatic and
//! logged once); with `--reads daemon` every open is asked and the daemon reads, its pages kept
//! (`FOPEN_KEEP_CACHE`). Closing an entry never costs a flush request (FLUSH is answered ENOSYS
//! once, and opens say `FOPEN_NOFLUSH`).
//!
//! A rule's metadata is not immutable: its key does not fix its value (another machine may have
//! stored another one first, and a value trimmed here may come back from a box as another). So a
//! metadata inode stands for one value ([`inodes`](super::inodes)), and the kernel may keep what
//! it learns of it as of an artifact: when the value under a name changes, the name gets a new
//! inode, and an open through the old one fails with ESTALE, which makes the kernel look the name
//! up again and retry (with `--reads kept`, a read through the old inode whose pages the kernel
//! dropped fails with ESTALE instead, and the kernel is told to forget the name). A reader always
//! gets one whole value.
//!
//! Directories are listed with their items' attributes (readdirplus), so `find`, `cp -r` and
//! `ls -l` of a shard cost one request per batch of items instead of one lookup per item.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::answers;
use super::attrs::{entry_ttl, TTL_SCRATCH};
use super::changes::{self, Changes, Link, Open, Rename, SetAttr};
use super::inodes::Inodes;
use super::listings::Listings;
use super::scratch;
use super::shared::{DirHandle, Handle, Shared};
use super::stats::Stats;
use super::tree::{self, Child, Node};
use crate::dune::layout::{Entry, EntryKind};
use crate::sync::lock;

/// How long a batch of a listing waits while the kernel holds far more numbers than the bound.
const CROWDED_PAUSE: Duration = Duration::from_millis(1);

/// The filesystem handed to fuser.
pub struct CacheFs {
    shared: Arc<Shared>,
}

impl CacheFs {
    /// The filesystem serving `shared`.
    pub(super) fn new(shared: Shared) -> CacheFs {
        CacheFs {
            shared: Arc::new(shared),
        }
    }

    /// The listings the kernel may keep: the mount hands them the session's notifier.
    pub(super) fn listings(&self) -> Arc<Listings> {
        self.shared.listings.clone()
    }

    /// What the filesystem serves: the metrics listener reads its counters.
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The inode table: the mount bounds it.
    pub(super) fn inodes(&self) -> Arc<Inodes> {
        self.shared.inodes.clone()
    }
}

/// The handle of a file the kernel opened without asking (handles given out start at 1).
const UNOPENED: FileHandle = FileHandle(0);

impl Filesystem for CacheFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let shared = &self.shared;
        // Listings with attributes (readdirplus) when the kernel offers them, for every batch:
        // the kernel's "auto" mode only sends the first batch of a listing with attributes
        // unless items were looked up meanwhile, and `find` or `cp -r` read a whole directory
        // before looking at any item, so they would still pay a lookup for most of them.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // Artifacts shown as links are followed with no request once the kernel keeps their
        // targets (see `links`); without it, every path through one would ask.
        if shared.link_root.is_some()
            && config
                .add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS)
                .is_err()
        {
            log::warn!("the kernel does not keep symbolic links: each path through one asks");
        }
        if shared.passthrough.load(Ordering::Relaxed) {
            let enabled = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !enabled {
                shared.disable_passthrough(&io::Error::other("the kernel does not offer it"));
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Stats::bump(&self.shared.requests.lookup);
        let shared = &self.shared;
        let Some(parent) = shared.inodes.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match tree::child(&parent, name) {
            Child::Absent => reply.error(Errno::ENOENT),
            Child::Entry(entry) => {
                let asking = !shared.warming.sent_by_warming(req.pid());
                if !asking {
                    Stats::bump(&shared.stats.warming_lookups);
                }
                shared.lookup_entry(entry, asking, reply)
            }
            Child::Fixed(node) => {
                let node = shared.looked_up_fixed(node);
                let attr = shared.attrs.fixed(shared.inodes.ino_of(&node), &node);
                shared.give_entry(reply, &node, &shared.fixed_ttl(&node), &attr);
            }
            Child::Scratch(relative) => {
                match fs::symlink_metadata(shared.scratch_path(&relative)) {
                    Ok(meta) => {
                        let node = Node::Scratch(relative);
                        let attr = shared.attrs.real(shared.inodes.ino_of(&node), &meta);
                        shared.give_entry(reply, &node, &TTL_SCRATCH, &attr);
                    }
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        Stats::bump(&self.shared.requests.forget);
        self.shared.created.close(ino.0);
        self.shared.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        Stats::bump(&self.shared.requests.getattr);
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // An open metadata entry (`fstat`, `lseek(SEEK_END)`) is described as the value that open
        // reads, which the store may have replaced since.
        if let (
            Node::Entry(
                entry @ Entry {
                    kind: EntryKind::Meta(_),
                    ..
                },
            ),
            Some(fh),
        ) = (&node, fh)
        {
            if let Some(file) = shared.handle_file(fh) {
                return match shared.opened_attr(ino.0, entry, &file) {
                    Ok(attr) => reply.attr(&entry_ttl(entry, true), &attr),
                    Err(e) => reply.error(answers::of_io(&e)),
                };
            }
        }
        match shared.attr_of(ino.0, &node) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        Stats::bump(&self.shared.requests.setattr);
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let asked = Changes {
            mode: mode.is_some(),
            owner: uid.is_some() || gid.is_some(),
            size: size.is_some(),
        };
        let applied = match changes::set_attr(node.clone(), asked) {
            Ok(SetAttr::Scratch(relative)) => {
                let open_file = fh.and_then(|fh| shared.handle_file(fh));
                scratch::set_attributes(
                    &shared.scratch_path(&relative),
                    mode,
                    (uid, gid),
                    size,
                    (atime, mtime),
                    open_file.as_deref(),
                )
            }
            Ok(SetAttr::Unchanged) => Ok(()),
            Err(e) => return reply.error(e),
        };
        match applied.and_then(|()| shared.attr_of(ino.0, &node)) {
            Ok((attr, ttl)) => {
                // Dune 2.9 reads each artifact right after setting its times.
                if let Node::Entry(
                    entry @ Entry {
                        kind: EntryKind::File,
                        ..
                    },
                ) = &node
                {
                    shared.hand_pages(ino.0, entry);
                }
                reply.attr(&ttl, &attr)
            }
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Stats::bump(&self.shared.requests.open);
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match changes::open(node, scratch::writes(flags.0)) {
            // The first open tells the kernel to open files alone from now on (see `unopened`).
            Ok(_) if shared.reads.opens_alone() => reply.error(Errno::ENOSYS),
            Ok(Open::Entry(entry)) => shared.open_entry(ino.0, entry, reply),
            Ok(Open::Scratch(relative)) => {
                match scratch::open(&shared.scratch_path(&relative), flags.0, None) {
                    Ok(file) => {
                        // Scratch files change: no passthrough (an inode cannot be both cached
                        // and passthrough in the kernel) and no kept pages.
                        let fh = shared.daemon_handle(Arc::new(file));
                        reply.opened(FileHandle(fh), FopenFlags::empty());
                    }
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        Stats::bump(&self.shared.requests.read);
        if fh == UNOPENED {
            return self.shared.read_unopened(ino.0, offset, size, reply);
        }
        match self.shared.read_handle(fh, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Stats::bump(&self.shared.requests.release);
        lock(&self.shared.handles).close(fh.0);
        self.shared.inodes.closed(ino.0);
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        Stats::bump(&self.shared.requests.write);
        if fh == UNOPENED {
            return match self.shared.write_unopened(ino.0, offset, data) {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(e),
            };
        }
        let Some(file) = self.shared.handle_file(fh) else {
            return reply.error(Errno::EBADF);
        };
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        Stats::bump(&self.shared.requests.create);
        let shared = &self.shared;
        let relative = match shared.new_scratch(parent, name) {
            Ok(relative) => relative,
            Err(e) => return reply.error(e),
        };
        let path = shared.scratch_path(&relative);
        match scratch::open(&path, flags, Some(mode & !umask & 0o7777)) {
            Ok(file) => {
                let node = Node::Scratch(relative);
                let ino = shared.inodes.ino_of(&node);
                match shared.attr_of(ino, &node) {
                    Ok((attr, ttl)) => {
                        // No handle: its writes name the inode (see `unopened`).
                        shared.created.insert(ino, file);
                        shared.inodes.handed_out(ino, &node);
                        reply.created(&ttl, &attr, Generation(0), UNOPENED, FopenFlags::empty());
                    }
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        Stats::bump(&self.shared.requests.mkdir);
        let shared = &self.shared;
        match shared.new_scratch(parent, name) {
            Ok(relative) => {
                match scratch::mkdir(&shared.scratch_path(&relative), mode & !umask & 0o7777) {
                    Ok(()) => shared.reply_entry(&Node::Scratch(relative), reply),
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Stats::bump(&self.shared.requests.unlink);
        // Entries are immutable; trim the store with `dune-cachefs trim` instead.
        self.shared
            .remove_scratch(parent, name, reply, |path| fs::remove_file(path));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Stats::bump(&self.shared.requests.rmdir);
        self.shared
            .remove_scratch(parent, name, reply, |path| fs::remove_dir(path));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        Stats::bump(&self.shared.requests.rename);
        let shared = &self.shared;
        let (from, to) = match (
            shared.child_of(parent, name),
            shared.child_of(newparent, newname),
        ) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let result = match changes::rename(from, to, flags.bits(), shared.refuses(newname)) {
            Ok(Rename::Scratch { from, to }) => {
                fs::rename(shared.scratch_path(&from), shared.scratch_path(&to))
                    .map_err(|e| answers::of_io(&e))
                    .map(|()| {
                        shared
                            .inodes
                            .retarget(&Node::Scratch(from), &Node::Scratch(to))
                    })
            }
            Ok(Rename::Install { from, entry }) => {
                let source = shared.scratch_path(&from);
                shared.install(entry, &source).and_then(|()| {
                    fs::remove_file(&source).map_err(|e| answers::of_io(&e))?;
                    let renamed = shared.inodes.ino_of(&Node::Scratch(from.clone()));
                    shared.created.close(renamed);
                    shared
                        .inodes
                        .retarget(&Node::Scratch(from), &Node::Entry(entry));
                    if entry.kind != EntryKind::File {
                        // The kernel keeps the renamed file's attributes for the name, and
                        // the value stored may be another (first writer wins).
                        shared.listings.forget_file(renamed);
                    }
                    Ok(())
                })
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        Stats::bump(&self.shared.requests.link);
        let shared = &self.shared;
        let Some(source) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let target = match shared.child_of(newparent, newname) {
            Ok(target) => target,
            Err(e) => return reply.error(e),
        };
        match changes::link(source, target, shared.refuses(newname)) {
            Ok(Link::Install { from, entry }) => {
                match shared.install(entry, &shared.scratch_path(&from)) {
                    Ok(()) => shared.reply_entry(&Node::Entry(entry), reply),
                    Err(e) => reply.error(e),
                }
            }
            Ok(Link::Scratch { from, to }) => {
                let (source, target) = (shared.scratch_path(&from), shared.scratch_path(&to));
                let linked = if shared.policy.link_copies() {
                    scratch::copy_file(&source, &target)
                } else {
                    fs::hard_link(&source, &target)
                };
                match linked {
                    Ok(()) => shared.reply_entry(&Node::Scratch(to), reply),
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        Stats::bump(&self.shared.requests.symlink);
        let shared = &self.shared;
        match shared.new_scratch(parent, link_name) {
            Ok(relative) => {
                match std::os::unix::fs::symlink(target, shared.scratch_path(&relative)) {
                    Ok(()) => shared.reply_entry(&Node::Scratch(relative), reply),
                    Err(e) => reply.error(answers::of_io(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        Stats::bump(&self.shared.requests.readlink);
        let shared = &self.shared;
        match shared.inodes.node(ino.0) {
            Some(Node::Link(entry)) => {
                let asking = !shared.warming.sent_by_warming(req.pid());
                if !asking {
                    Stats::bump(&shared.stats.warming_readlinks);
                }
                shared.read_link(entry, asking, reply)
            }
            Some(node @ (Node::Scratch(_) | Node::Status(_))) => {
                let target = match &node {
                    Node::Scratch(relative) => fs::read_link(shared.scratch_path(relative)),
                    _ => shared.status_snapshot(),
                };
                match target {
                    Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
                    Err(e) => return reply.error(answers::of_io(&e)),
                }
                // The kernel keeps every link's target when artifacts are links; a scratch link
                // replaced under the same name could keep its old one while the kernel holds
                // it, so it is dropped once the kernel has it (the status file needs no such
                // thing: see `links`). A path through it between the two sees the old target.
                // The kernel holds the link's page locked until the task that asked has copied
                // the reply in, which needs nothing more from the mount: this thread waits only
                // for that.
                if shared.link_root.is_some() && matches!(node, Node::Scratch(_)) {
                    if let Err(e) = shared.pages.drop_kept(ino.0) {
                        log::debug!("cannot take back the kept target of {node:?}: {e}");
                    }
                }
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        Stats::bump(&self.shared.requests.fsync);
        let Some(file) = self.shared.handle_file(fh) else {
            return reply.ok();
        };
        let synced = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        Stats::bump(&self.shared.requests.flush);
        // Entries are read-only and scratch writes go straight to the store file: there is
        // nothing to flush. ENOSYS tells the kernel so once and for all, and it stops sending a
        // flush on every close (a round trip per file copied out of the mount).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        Stats::bump(&self.shared.requests.opendir);
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Err(e) = changes::open_dir(&node) {
            return reply.error(e);
        }
        // The layout's directories, whose listings the kernel may keep (not the root nor Dune's
        // scratch directories, which change all the time).
        let flags = if matches!(node, Node::Shard(..) | Node::Kind(_) | Node::Top(_)) {
            shared.listings.open_flags(ino.0)
        } else {
            FopenFlags::empty()
        };
        let dir = DirHandle {
            node,
            ino: ino.0,
            taken: shared.listings.now(),
            items: OnceLock::new(),
        };
        let fh = lock(&shared.handles).insert(Handle::Dir(Arc::new(dir)));
        reply.opened(FileHandle(fh), flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        Stats::bump(&self.shared.requests.readdir);
        self.shared.read_dir(fh, move |_, items| match items {
            Err(e) => reply.error(e),
            Ok(items) => {
                for (i, (name, ino, kind)) in items.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
        });
    }

    /// As `readdir`, with each item's attributes: the kernel then knows them without a lookup
    /// per item, which is most of the cost of `find` or `cp -r` over a fresh mount.
    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        Stats::bump(&self.shared.requests.readdirplus);
        self.shared.read_dir(fh, move |shared, items| {
            let items = match items {
                Ok(items) => items,
                Err(e) => return reply.error(e),
            };
            // Each item answered here is a number the kernel holds: while it holds far more
            // than the bound, the evicting thread is behind a fast `find`, and a listing waits
            // a little for it (holding no lock: the thread's notifications need none of ours).
            if shared.inodes.crowded() {
                std::thread::sleep(CROWDED_PAUSE);
            }
            for (i, (name, ino, kind)) in items.iter().enumerate().skip(offset as usize) {
                let node = shared.inodes.node(*ino);
                let known = node
                    .as_ref()
                    .and_then(|node| shared.listed_attr(*ino, node).ok());
                // An item gone since it was listed (a scratch file removed) is still listed, as
                // readdir would, with attributes the kernel must not keep: its next use asks
                // again.
                let (attr, ttl) =
                    known.unwrap_or_else(|| (shared.attrs.base(*ino, *kind, 0, 0), Duration::ZERO));
                if reply.add(
                    INodeNo(*ino),
                    (i + 1) as u64,
                    name,
                    &ttl,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                // The kernel counts a reference for every item but `.` and `..`.
                if let (Some(node), false) = (&node, name == "." || name == "..") {
                    shared.inodes.handed_out(*ino, node);
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        Stats::bump(&self.shared.requests.releasedir);
        lock(&self.shared.handles).close(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        Stats::bump(&self.shared.requests.statfs);
        match rustix::fs::statvfs(self.shared.store.root()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Stats::bump(&self.shared.requests.getxattr);
        let shared = &self.shared;
        let Some(Node::Entry(entry)) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::NO_XATTR);
        };
        let attrs = shared.entry_xattrs(&entry);
        match attrs.iter().find(|(n, _)| OsStr::new(n) == name) {
            Some((_, value)) => reply_xattr(reply, value.as_bytes(), size),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        Stats::bump(&self.shared.requests.listxattr);
        let shared = &self.shared;
        let mut names = Vec::new();
        if let Some(Node::Entry(entry)) = shared.inodes.node(ino.0) {
            for (name, _) in shared.entry_xattrs(&entry) {
                names.extend_from_slice(name.as_bytes());
                names.push(0);
            }
        }
        reply_xattr(reply, &names, size);
    }
}

/// Answers an xattr request: the size when asked for it (`size == 0`), the bytes when they fit,
/// ERANGE when they do not.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}
