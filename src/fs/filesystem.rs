//! The `fuser::Filesystem` implementation: thin glue between kernel requests and the decisions
//! made in [`tree`](super::tree), [`inodes`](super::inodes) and [`remote`](super::remote).
//!
//! Entries are immutable, so their attributes and names are cached by the kernel for an hour,
//! their pages are kept across opens (`FOPEN_KEEP_CACHE`), and closing one costs no flush request
//! (`FOPEN_NOFLUSH`: Dune closes every entry it restores, and there is nothing to flush). Reads
//! of installed entries use FUSE passthrough when the kernel and our privileges allow it (the
//! kernel then reads the store file itself); otherwise the daemon reads the file. The fallback is
//! automatic and logged once.
//!
//! Directories are listed with their items' attributes (readdirplus), so `find`, `cp -r` and
//! `ls -l` of a shard cost one request per batch of items instead of one lookup per item.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::inodes::{Inodes, RemoteAttr};
use super::listings::{Listings, BOX_LISTING_TTL};
use super::policy::PlatformPolicy;
use super::remote::{FetchFailure, Lookup, Remote};
use super::scratch;
use super::stats::Stats;
use super::tree::{self, Child, Node, Top};
use crate::dune::key::mode_is_executable;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::landing::Landing;
use crate::store::{EntryStat, InstallOutcome, Store, StoreError};
use crate::sync::lock;
use crate::upload::background::Uploader;

/// How long the kernel may trust what it learns of immutable nodes (entries, fixed directories).
const TTL_IMMUTABLE: Duration = Duration::from_secs(3600);
/// How long it may trust scratch files, which Dune changes, and what a box *said* about an entry
/// not yet fetched (its size and mode are only settled once the verified bytes are installed).
const TTL_SCRATCH: Duration = Duration::from_secs(1);
const TTL_REMOTE: Duration = TTL_SCRATCH;

/// The extended attributes every entry has, for `getfattr -d`.
const XATTR_LOCATION: &str = "user.dune-cachefs.location";
const XATTR_CACHED: &str = "user.dune-cachefs.cached";

/// What an open file handle refers to.
enum Handle {
    /// An installed entry or a scratch file, read from the store.
    File {
        file: Arc<File>,
        /// Held while open: dropping the last reference closes the kernel's backing file.
        _backing: Option<Arc<BackingId>>,
    },
    /// A snapshot of the status document, taken at open.
    Status(Vec<u8>),
    /// An open directory. Shared, so a listing is answered without holding the handle table's
    /// lock.
    Dir(Arc<DirHandle>),
}

/// A directory's item: name, inode, type.
type DirItem = (OsString, u64, FileType);

/// An open directory. Its items are listed when it is first read, not at opendir: opening a
/// directory whose listing the kernel keeps ([`Listings`]) then costs no listing at all.
struct DirHandle {
    node: Node,
    ino: u64,
    /// The [`Listings`] change count when it was opened (its items are taken after that).
    taken: u64,
    items: OnceLock<Arc<Vec<DirItem>>>,
}

#[derive(Default)]
struct Handles {
    next: u64,
    open: HashMap<u64, Handle>,
    /// One backing file per inode, shared by its opens, as the kernel requires.
    backings: HashMap<u64, Weak<BackingId>>,
}

impl Handles {
    fn insert(&mut self, handle: Handle) -> u64 {
        self.next += 1;
        self.open.insert(self.next, handle);
        self.next
    }
}

/// Everything the FUSE threads and the fetch workers share.
pub(super) struct Shared {
    pub store: Arc<Store>,
    /// Entries are read through here, so one fetched but not yet settled is found too.
    pub landing: Arc<Landing>,
    /// The directory listings the kernel may keep.
    pub listings: Arc<Listings>,
    pub remote: Option<Arc<Remote>>,
    pub uploader: Option<Arc<Uploader>>,
    pub inodes: Inodes,
    pub stats: Arc<Stats>,
    pub policy: PlatformPolicy,
    handles: Mutex<Handles>,
    passthrough: AtomicBool,
    passthrough_reason_logged: AtomicBool,
    started: SystemTime,
    uid: u32,
    gid: u32,
}

/// The filesystem handed to fuser.
pub struct CacheFs {
    shared: Arc<Shared>,
}

impl CacheFs {
    /// A filesystem over `store`, fetching misses through `remote` when there is a cluster.
    pub(super) fn new(
        store: Arc<Store>,
        landing: Arc<Landing>,
        remote: Option<Arc<Remote>>,
        uploader: Option<Arc<Uploader>>,
        stats: Arc<Stats>,
        policy: PlatformPolicy,
        passthrough: bool,
    ) -> CacheFs {
        CacheFs {
            shared: Arc::new(Shared {
                store,
                landing,
                // With boxes, a listing shows what they hold, which changes unannounced.
                listings: Listings::start(remote.as_ref().map(|_| BOX_LISTING_TTL)),
                remote,
                uploader,
                inodes: Inodes::default(),
                stats,
                policy,
                handles: Mutex::new(Handles::default()),
                passthrough: AtomicBool::new(passthrough),
                passthrough_reason_logged: AtomicBool::new(false),
                started: SystemTime::now(),
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
            }),
        }
    }

    /// The listings the kernel may keep: the mount hands them the session's notifier.
    pub(super) fn listings(&self) -> Arc<Listings> {
        self.shared.listings.clone()
    }
}

/// The errno of an I/O error; EIO for the (rare) errors that carry none.
fn errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

impl Shared {
    fn base_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
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
    fn fixed_attr(&self, ino: u64, node: &Node) -> FileAttr {
        match node {
            Node::Status => self.base_attr(ino, FileType::RegularFile, 0o444, 0),
            _ => self.base_attr(ino, FileType::Directory, 0o755, 0),
        }
    }

    /// Attributes of an entry, and how long they hold: size and link count from the store file
    /// when installed, else (briefly) from what its box said. Entries are read-only whatever the
    /// store file's mode: 0555 if executable, else 0444. Their times are the mount's start time
    /// either way, never the store file's: an entry must look the same before and after it is
    /// fetched (tar fails with "file changed as we read it" when the ctime moves under it, rsync
    /// copies it again when the mtime moves), and its content never changes.
    fn entry_attr(&self, ino: u64, entry: &Entry) -> io::Result<(FileAttr, Duration)> {
        match self.landing.stat(entry) {
            Ok(stat) => Ok((self.local_attr(ino, entry, stat), TTL_IMMUTABLE)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.inodes.remote(ino) {
                Some(remote) => Ok((self.remote_attr(ino, remote), TTL_REMOTE)),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Attributes of an entry held locally (landing or in the store), remembered for listings.
    fn local_attr(&self, ino: u64, entry: &Entry, stat: EntryStat) -> FileAttr {
        let exe = entry.kind == EntryKind::File && mode_is_executable(stat.mode);
        let perm = if exe { 0o555 } else { 0o444 };
        let mut attr = self.base_attr(ino, FileType::RegularFile, perm, stat.size);
        attr.nlink = self.policy.nlink(stat.nlink);
        self.inodes.set_installed(ino, attr);
        attr
    }

    /// Attributes of an item of a directory being listed. An entry whose attributes were read
    /// from its store file before is answered from the inode table, so listing a large cache
    /// again costs no `stat` per entry: an entry's bytes never change, nor do its size and mode
    /// (one trimmed since and listed by its box is fetched again as the same bytes).
    fn listed_attr(&self, ino: u64, node: &Node) -> io::Result<(FileAttr, Duration)> {
        match (node, self.inodes.installed(ino)) {
            (Node::Entry(_), Some(attr)) => Ok((attr, TTL_IMMUTABLE)),
            _ => self.attr_of(ino, node),
        }
    }

    fn remote_attr(&self, ino: u64, remote: RemoteAttr) -> FileAttr {
        let perm = if remote.executable { 0o555 } else { 0o444 };
        self.base_attr(ino, FileType::RegularFile, perm, remote.size)
    }

    /// Attributes of a real file of the store, as they are (link count per the policy).
    fn real_attr(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let kind = file_type(meta.file_type());
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
        };
        let mut attr = self.base_attr(ino, kind, (meta.mode() & 0o7777) as u16, meta.len());
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

    fn scratch_path(&self, relative: &std::path::Path) -> PathBuf {
        self.store.root().join(relative)
    }

    /// The attributes of any node, and how long the kernel may keep them.
    fn attr_of(&self, ino: u64, node: &Node) -> io::Result<(FileAttr, Duration)> {
        match node {
            Node::Entry(entry) => self.entry_attr(ino, entry),
            Node::Scratch(relative) => {
                let meta = fs::symlink_metadata(self.scratch_path(relative))?;
                Ok((self.real_attr(ino, &meta), TTL_SCRATCH))
            }
            fixed => Ok((self.fixed_attr(ino, fixed), TTL_IMMUTABLE)),
        }
    }

    /// Answers a lookup of `entry`, which is held locally.
    fn reply_local_entry(&self, entry: &Entry, reply: ReplyEntry) {
        let ino = self.inodes.ino_of(&Node::Entry(*entry));
        match self.entry_attr(ino, entry) {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn lookup_entry(self: &Arc<Self>, entry: Entry, reply: ReplyEntry) {
        Stats::bump(&self.stats.entry_lookups);
        let node = Node::Entry(entry);
        match self.landing.stat(&entry) {
            Ok(stat) => {
                Stats::bump(&self.stats.local_hits);
                let attr = self.local_attr(self.inodes.ino_of(&node), &entry, stat);
                return reply.entry(&TTL_IMMUTABLE, &attr, Generation(0));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return reply.error(errno(&e)),
        }
        if let Some((ino, remote)) = self.inodes.known_remote(&node) {
            Stats::bump(&self.stats.remote_known);
            return reply.entry(&TTL_REMOTE, &self.remote_attr(ino, remote), Generation(0));
        }
        let Some(remote) = self.remote.clone() else {
            return reply.error(Errno::ENOENT);
        };
        if remote.known_absent(&entry) {
            Stats::bump(&self.stats.negative_hits);
            return reply.error(Errno::ENOENT);
        }
        let shared = self.clone();
        if entry.kind != EntryKind::File {
            // Dune looks up a rule's metadata only to read it next: fetching it now saves the
            // round trip of asking first, on the path of every rule it restores.
            return remote.fetch(
                entry,
                Box::new(move |result| match result {
                    Ok(()) => shared.reply_local_entry(&entry, reply),
                    Err(FetchFailure::Local(errno, _)) => reply.error(Errno::from_i32(errno)),
                    // A box that lies is an error to surface, as when opening an artifact.
                    Err(FetchFailure::BadCopy(_)) => reply.error(Errno::EIO),
                    // Absent or unreachable: a miss, so Dune runs the rule.
                    Err(FetchFailure::Missing | FetchFailure::Unavailable(_)) => {
                        reply.error(Errno::ENOENT)
                    }
                }),
            );
        }
        remote.lookup(
            entry,
            Box::new(move |found| match found {
                Lookup::Installed => shared.reply_local_entry(&entry, reply),
                Lookup::OnBox(found) => {
                    let attr = RemoteAttr {
                        size: found.size,
                        // A dumb box does not say; the mode is right once the entry is fetched.
                        executable: found.executable.unwrap_or(false),
                    };
                    let ino = shared.inodes.set_remote(&node, attr);
                    reply.entry(&TTL_REMOTE, &shared.remote_attr(ino, attr), Generation(0));
                }
                Lookup::Missing => reply.error(Errno::ENOENT),
            }),
        );
    }

    fn open_entry(self: &Arc<Self>, ino: u64, entry: Entry, reply: ReplyOpen) {
        match self.landing.open(&entry) {
            Ok(file) => return self.open_entry_file(ino, file, reply),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return reply.error(errno(&e)),
        }
        let Some(remote) = self.remote.clone() else {
            return reply.error(Errno::ENOENT);
        };
        let shared = self.clone();
        remote.fetch(
            entry,
            Box::new(move |result| match result {
                Ok(()) => shared.open_installed(ino, &entry, reply),
                Err(FetchFailure::Missing) => reply.error(Errno::ENOENT),
                Err(FetchFailure::Local(errno, _)) => reply.error(Errno::from_i32(errno)),
                Err(FetchFailure::Unavailable(_) | FetchFailure::BadCopy(_)) => {
                    reply.error(Errno::EIO)
                }
            }),
        );
    }

    /// Opens an installed entry.
    fn open_installed(&self, ino: u64, entry: &Entry, reply: ReplyOpen) {
        match self.landing.open(entry) {
            Ok(file) => self.open_entry_file(ino, file, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Opens an entry's `file`: with passthrough if possible, else for reads in the daemon.
    /// (Passthrough wins for small entries too, measured: reading through the daemon costs a
    /// request per first read, more than registering the file at each open.)
    fn open_entry_file(&self, ino: u64, file: File, reply: ReplyOpen) {
        let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        let file = Arc::new(file);
        if self.passthrough.load(Ordering::Relaxed) {
            let mut handles = lock(&self.handles);
            let existing = handles.backings.get(&ino).and_then(Weak::upgrade);
            let backing = match existing {
                Some(backing) => Ok(backing),
                None => reply.open_backing(file.as_ref()).map(Arc::new),
            };
            match backing {
                Ok(backing) => {
                    handles.backings.insert(ino, Arc::downgrade(&backing));
                    let fh = handles.insert(Handle::File {
                        file,
                        _backing: Some(backing.clone()),
                    });
                    drop(handles);
                    Stats::bump(&self.stats.passthrough_opens);
                    // The kernel refuses passthrough with any flag outside its own set (such as
                    // KEEP_CACHE; NOFLUSH is in it); the backing file's page cache serves repeat
                    // reads anyway.
                    let flags = flags & FopenFlags::FOPEN_NOFLUSH;
                    return reply.opened_passthrough(FileHandle(fh), flags, &backing);
                }
                Err(e) => self.disable_passthrough(&e),
            }
        }
        let fh = self.daemon_handle(file);
        Stats::bump(&self.stats.daemon_opens);
        reply.opened(FileHandle(fh), flags);
    }

    /// Registers a file read and written by the daemon (no passthrough) and returns its handle.
    fn daemon_handle(&self, file: Arc<File>) -> u64 {
        lock(&self.handles).insert(Handle::File {
            file,
            _backing: None,
        })
    }

    /// The file behind handle `fh`, if it is one.
    fn handle_file(&self, fh: FileHandle) -> Option<Arc<File>> {
        match lock(&self.handles).open.get(&fh.0) {
            Some(Handle::File { file, .. }) => Some(file.clone()),
            _ => None,
        }
    }

    fn disable_passthrough(&self, reason: &io::Error) {
        self.passthrough.store(false, Ordering::Relaxed);
        if !self.passthrough_reason_logged.swap(true, Ordering::Relaxed) {
            log::warn!("FUSE passthrough unavailable ({reason}); reading through the daemon");
        }
    }

    /// The items of a directory other than a shard (shards need the boxes: see `opendir`).
    fn local_dir_items(&self, node: &Node) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let mut items = Vec::new();
        for (name, child) in tree::fixed_children(node) {
            let kind = if tree::is_dir(&child) {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            items.push((OsString::from(name), self.inodes.ino_of(&child), kind));
        }
        let real_dir = match node {
            Node::Root => Some(PathBuf::new()),
            Node::Scratch(relative) => Some(relative.clone()),
            _ => None,
        };
        if let Some(relative) = real_dir {
            let at_root = relative.as_os_str().is_empty();
            for item in fs::read_dir(self.scratch_path(&relative))? {
                let item = item?;
                let name = item.file_name();
                if at_root && !tree::is_scratch_name(&name) {
                    continue;
                }
                let kind = item.file_type().map(file_type)?;
                let child = Node::Scratch(relative.join(&name));
                items.push((name, self.inodes.ino_of(&child), kind));
            }
        }
        Ok(items)
    }

    /// A top directory's items: the kinds that hold entries here or on any box, so a copy of
    /// a Dune 2.9 cache has no empty `meta/v5`. Every kind can still be looked up and used.
    fn top_items(&self, top: Top) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let mut items = Vec::new();
        for (name, kind) in top.kinds() {
            let shards = self.kind_items(*kind)?;
            if !shards.is_empty() {
                let ino = self.inodes.ino_of(&Node::Kind(*kind));
                items.push((OsString::from(*name), ino, FileType::Directory));
            }
        }
        Ok(items)
    }

    /// A kind directory's items: the shards that hold entries here or on any box. Every shard
    /// can be looked up; only the non-empty ones are listed, as in a real cache.
    fn kind_items(&self, kind: EntryKind) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let mut shards: std::collections::BTreeSet<_> = self
            .store
            .non_empty_shards(kind)
            .map_err(|e| io::Error::other(e.to_string()))?
            .into_iter()
            .collect();
        if let Some(remote) = &self.remote {
            shards.extend(remote.list_shards(kind));
        }
        Ok(shards
            .into_iter()
            .map(|shard| {
                let ino = self.inodes.ino_of(&Node::Shard(kind, shard));
                (OsString::from(shard.to_string()), ino, FileType::Directory)
            })
            .collect())
    }

    /// A shard's items: the store's entries and every owning box's, each once.
    fn shard_items(
        &self,
        kind: EntryKind,
        shard: crate::dune::key::Shard,
    ) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let mut keys: std::collections::BTreeMap<_, Option<RemoteAttr>> = self
            .store
            .list_shard(kind, shard)
            .map_err(|e| io::Error::other(e.to_string()))?
            .into_iter()
            .map(|key| (key, None))
            .collect();
        if let Some(remote) = &self.remote {
            for listed in remote.list_shard(kind, shard) {
                keys.entry(listed.key).or_insert(Some(RemoteAttr {
                    size: listed.size,
                    executable: listed.executable,
                }));
            }
        }
        Ok(keys
            .into_iter()
            .map(|(key, remote)| {
                let node = Node::Entry(Entry { kind, key });
                let ino = match remote {
                    Some(attr) => self.inodes.set_remote(&node, attr),
                    None => self.inodes.ino_of(&node),
                };
                (OsString::from(key.to_string()), ino, FileType::RegularFile)
            })
            .collect())
    }

    fn status_document(&self) -> Vec<u8> {
        let mut boxes = Vec::new();
        if let Some(remote) = &self.remote {
            for client in remote.cluster().clients() {
                let state = match client.health() {
                    crate::cluster::health::HealthState::Up => serde_json::json!({"state": "up"}),
                    crate::cluster::health::HealthState::Down { cause, until, .. } => {
                        serde_json::json!({
                            "state": "down",
                            "cause": cause,
                            "retry_in_ms": until.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
                        })
                    }
                };
                boxes.push(serde_json::json!({ "url": client.url(), "health": state }));
            }
        }
        let document = serde_json::json!({
            "store": self.store.root().display().to_string(),
            "policy": self.policy.to_string(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "inodes": self.inodes.assigned(),
            "settling": self.landing.waiting(),
            "counters": self.stats.to_json(),
            "uploads": self.uploader.as_ref().map(|u| u.to_json()),
            "boxes": boxes,
        });
        let mut text = serde_json::to_vec_pretty(&document).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// The open directory `fh`.
    fn dir_handle(&self, fh: FileHandle) -> Option<Arc<DirHandle>> {
        match lock(&self.handles).open.get(&fh.0) {
            Some(Handle::Dir(dir)) => Some(dir.clone()),
            _ => None,
        }
    }

    /// Serves a read of the open directory `fh`: `fill` answers with its items (or the errno to
    /// answer), and then a listing read out stale is taken back (see [`Listings::read_out`]).
    fn read_dir(
        self: &Arc<Self>,
        fh: FileHandle,
        fill: impl FnOnce(&Shared, Result<&[DirItem], Errno>) + Send + 'static,
    ) {
        let Some(dir) = self.dir_handle(fh) else {
            return fill(self, Err(Errno::EBADF));
        };
        let (ino, taken) = (dir.ino, dir.taken);
        self.with_items(dir, move |shared, items| {
            match items {
                Ok(items) => fill(shared, Ok(&items)),
                Err(e) => fill(shared, Err(errno(&e))),
            }
            shared.listings.read_out(ino, taken);
        });
    }

    /// Calls `then` with the items of `dir`, listing them first if this is its first read: on a
    /// worker if that asks the boxes, never on a FUSE thread.
    fn with_items(
        self: &Arc<Self>,
        dir: Arc<DirHandle>,
        then: impl FnOnce(&Shared, io::Result<Arc<Vec<DirItem>>>) + Send + 'static,
    ) {
        if let Some(items) = dir.items.get() {
            return then(self, Ok(items.clone()));
        }
        let asks_boxes = matches!(dir.node, Node::Shard(..) | Node::Kind(_) | Node::Top(_));
        let list = move |shared: &Shared| {
            Stats::bump(&shared.stats.listings);
            let mut all = vec![
                (OsString::from("."), dir.ino, FileType::Directory),
                (
                    OsString::from(".."),
                    shared.inodes.ino_of(&tree::parent(&dir.node)),
                    FileType::Directory,
                ),
            ];
            all.extend(match &dir.node {
                Node::Shard(kind, shard) => shared.shard_items(*kind, *shard)?,
                Node::Kind(kind) => shared.kind_items(*kind)?,
                Node::Top(top) => shared.top_items(*top)?,
                other => shared.local_dir_items(other)?,
            });
            Ok(dir.items.get_or_init(|| Arc::new(all)).clone())
        };
        match &self.remote {
            Some(remote) if asks_boxes => {
                let shared = self.clone();
                remote.spawn(move || then(&shared, list(&shared)));
            }
            _ => then(self, list(self)),
        }
    }

    /// What `name` in directory `parent` is.
    fn child_of(&self, parent: INodeNo, name: &OsStr) -> Result<Child, Errno> {
        let parent = self.inodes.node(parent.0).ok_or(Errno::ENOENT)?;
        if !tree::is_dir(&parent) && !matches!(parent, Node::Scratch(_)) {
            return Err(Errno::ENOTDIR);
        }
        Ok(tree::child(&parent, name))
    }

    /// The kernel's view of a node just created or linked: its number and attributes.
    fn reply_entry(&self, node: &Node, reply: ReplyEntry) {
        let ino = self.inodes.ino_of(node);
        match self.attr_of(ino, node) {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Installs a scratch file as a cache entry (Dune renaming or linking it into `files/` or
    /// `meta/`): verified first, refused with EINVAL if it is not what its name says, first value
    /// kept on a metadata collision, then queued for upload.
    fn install(&self, entry: Entry, source: &std::path::Path) -> Result<(), Errno> {
        Stats::bump(&self.stats.stores);
        // A copy fetched for a reader and not yet named is named first: it was there first.
        self.landing.settle_now(&entry);
        match self.store.install_file(entry, source) {
            Ok(InstallOutcome::Stored) => {
                self.listings_changed_by(&entry);
                if let Some(uploader) = &self.uploader {
                    if let Err(e) = uploader.enqueue(entry) {
                        log::error!("{entry} is stored but its upload could not be recorded: {e}");
                    }
                }
                Ok(())
            }
            Ok(InstallOutcome::AlreadyPresent) => Ok(()),
            Ok(InstallOutcome::Collision { .. }) => {
                Stats::bump(&self.stats.store_collisions);
                log::warn!("{entry}: a different value is already stored; keeping the first");
                Ok(())
            }
            Err(e @ (StoreError::KeyMismatch { .. } | StoreError::BadMetadata { .. })) => {
                Stats::bump(&self.stats.stores_refused);
                log::error!("refused to store {}: {e}", source.display());
                Err(Errno::EINVAL)
            }
            Err(e) => {
                log::error!("storing {entry} from {}: {e}", source.display());
                Err(e.os_error().map_or(Errno::EIO, Errno::from_i32))
            }
        }
    }

    /// Tells the kernel that the listings which may show `entry` (installed just now) changed:
    /// its shard's, and its kind's and top directory's, which may not have listed the shard.
    fn listings_changed_by(&self, entry: &Entry) {
        let shard = tree::parent(&Node::Entry(*entry));
        let kind = tree::parent(&shard);
        let top = tree::parent(&kind);
        let inos = [shard, kind, top]
            .iter()
            .map(|node| self.inodes.ino_of(node))
            .collect();
        self.listings.changed(inos);
    }

    /// Removes a scratch file or directory with `remove`; anything else (entries, the layout's
    /// directories) cannot be removed through the mount.
    fn remove_scratch(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&std::path::Path) -> io::Result<()>,
    ) {
        match self.child_of(parent, name) {
            Ok(Child::Scratch(relative)) => match remove(&self.scratch_path(&relative)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Ok(Child::Absent) => reply.error(Errno::ENOENT),
            Ok(_) => reply.error(Errno::EACCES),
            Err(e) => reply.error(e),
        }
    }

    /// Where a new scratch name `name` in `parent` would go (relative to the store): the one check
    /// every way of creating a name shares. A layout directory already exists (EEXIST: Dune makes
    /// sure a shard directory exists before renaming into it); entries and names the platform
    /// policy forbids cannot be created (EACCES).
    fn new_scratch(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        match self.child_of(parent, name)? {
            Child::Scratch(relative) if !self.refuses(name) => Ok(relative),
            Child::Fixed(_) => Err(Errno::EEXIST),
            _ => Err(Errno::EACCES),
        }
    }

    /// A scratch name that the platform policy forbids creating.
    fn refuses(&self, name: &OsStr) -> bool {
        self.policy.refuses_name(name)
    }

    /// The extended attributes of an entry: where it lives and whether it is installed.
    fn entry_xattrs(&self, entry: &Entry) -> Vec<(&'static str, String)> {
        let cached = self.landing.holds(entry);
        let location = match (&self.remote, cached) {
            (_, true) => "local".to_string(),
            (Some(remote), false) => remote.cluster().owner(&entry.key).url().to_string(),
            (None, false) => "absent".to_string(),
        };
        vec![
            (XATTR_LOCATION, location),
            (XATTR_CACHED, if cached { "yes" } else { "no" }.to_string()),
        ]
    }
}

fn file_type(t: fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

impl Filesystem for CacheFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let shared = &self.shared;
        // Listings with attributes (readdirplus) when the kernel offers them, for every batch:
        // the kernel's "auto" mode only sends the first batch of a listing with attributes
        // unless items were looked up meanwhile, and `find` or `cp -r` read a whole directory
        // before looking at any item, so they would still pay a lookup for most of them.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        if shared.passthrough.load(Ordering::Relaxed) {
            let enabled = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !enabled {
                shared.disable_passthrough(&io::Error::other("the kernel does not offer it"));
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let shared = &self.shared;
        let Some(parent) = shared.inodes.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match tree::child(&parent, name) {
            Child::Absent => reply.error(Errno::ENOENT),
            Child::Entry(entry) => shared.lookup_entry(entry, reply),
            Child::Fixed(node) => {
                let ino = shared.inodes.ino_of(&node);
                reply.entry(
                    &TTL_IMMUTABLE,
                    &shared.fixed_attr(ino, &node),
                    Generation(0),
                );
            }
            Child::Scratch(relative) => {
                match fs::symlink_metadata(shared.scratch_path(&relative)) {
                    Ok(meta) => {
                        let ino = shared.inodes.ino_of(&Node::Scratch(relative));
                        reply.entry(&TTL_SCRATCH, &shared.real_attr(ino, &meta), Generation(0));
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match shared.attr_of(ino.0, &node) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(errno(&e)),
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
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Node::Scratch(relative) = &node {
            let open_file = fh.and_then(|fh| shared.handle_file(fh));
            let applied = scratch::set_attributes(
                &shared.scratch_path(relative),
                mode,
                (uid, gid),
                size,
                (atime, mtime),
                open_file.as_deref(),
            );
            return match applied.and_then(|()| shared.attr_of(ino.0, &node)) {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(e) => reply.error(errno(&e)),
            };
        }
        // Entries are immutable: their size and owner cannot change. Dune chmods and touches
        // the entries it restores (to mark them used); both are accepted and change nothing.
        if size.is_some() {
            return reply.error(Errno::EACCES);
        }
        if uid.is_some() || gid.is_some() || (mode.is_some() && tree::is_dir(&node)) {
            return reply.error(Errno::EPERM);
        }
        match shared.attr_of(ino.0, &node) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let writing = scratch::writes(flags.0);
        match node {
            Node::Entry(entry) if writing => {
                log::debug!("refused a write open of {entry}: entries are immutable");
                reply.error(Errno::EACCES)
            }
            Node::Entry(entry) => shared.open_entry(ino.0, entry, reply),
            // Read-only like entries. The kernel's mode check (0444) stops other users, not root,
            // who would otherwise get a handle that fails every write with EBADF.
            Node::Status if writing => reply.error(Errno::EACCES),
            Node::Status => {
                let fh = lock(&shared.handles).insert(Handle::Status(shared.status_document()));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Node::Scratch(relative) => {
                match scratch::open(&shared.scratch_path(&relative), flags.0, None) {
                    Ok(file) => {
                        // Scratch files change: no passthrough (an inode cannot be both cached
                        // and passthrough in the kernel) and no kept pages.
                        let fh = shared.daemon_handle(Arc::new(file));
                        reply.opened(FileHandle(fh), FopenFlags::empty());
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let shared = &self.shared;
        let handles = lock(&shared.handles);
        match handles.open.get(&fh.0) {
            Some(Handle::File { file, .. }) => {
                let file = file.clone();
                drop(handles);
                let mut buf = vec![0u8; size as usize];
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return reply.error(errno(&e)),
                    }
                }
                shared
                    .stats
                    .daemon_read_bytes
                    .fetch_add(filled as u64, Ordering::Relaxed);
                reply.data(&buf[..filled]);
            }
            Some(Handle::Status(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
            }
            _ => reply.error(Errno::EBADF),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.handles).open.remove(&fh.0);
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let Some(file) = self.shared.handle_file(fh) else {
            return reply.error(Errno::EBADF);
        };
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
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
                        let fh = shared.daemon_handle(Arc::new(file));
                        reply.created(
                            &ttl,
                            &attr,
                            Generation(0),
                            FileHandle(fh),
                            FopenFlags::empty(),
                        );
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Err(e) => reply.error(errno(&e)),
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
        let shared = &self.shared;
        match shared.new_scratch(parent, name) {
            Ok(relative) => {
                match scratch::mkdir(&shared.scratch_path(&relative), mode & !umask & 0o7777) {
                    Ok(()) => shared.reply_entry(&Node::Scratch(relative), reply),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Entries are immutable; trim the store with `dune-cachefs trim` instead.
        self.shared
            .remove_scratch(parent, name, reply, |path| fs::remove_file(path));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
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
        let shared = &self.shared;
        let (from, to) = match (
            shared.child_of(parent, name),
            shared.child_of(newparent, newname),
        ) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let result = match (from, to) {
            (Child::Scratch(a), Child::Scratch(b)) if !shared.refuses(newname) => {
                fs::rename(shared.scratch_path(&a), shared.scratch_path(&b))
                    .map_err(|e| errno(&e))
                    .map(|()| shared.inodes.retarget(&Node::Scratch(a), &Node::Scratch(b)))
            }
            (Child::Scratch(a), Child::Entry(entry)) => {
                let source = shared.scratch_path(&a);
                shared.install(entry, &source).and_then(|()| {
                    fs::remove_file(&source).map_err(|e| errno(&e))?;
                    shared
                        .inodes
                        .retarget(&Node::Scratch(a), &Node::Entry(entry));
                    Ok(())
                })
            }
            (Child::Absent, _) => Err(Errno::ENOENT),
            _ => Err(Errno::EACCES),
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
        let shared = &self.shared;
        let Some(source) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let target = match shared.child_of(newparent, newname) {
            Ok(target) => target,
            Err(e) => return reply.error(e),
        };
        match (source, target) {
            (Node::Scratch(a), Child::Entry(entry)) => {
                match shared.install(entry, &shared.scratch_path(&a)) {
                    Ok(()) => shared.reply_entry(&Node::Entry(entry), reply),
                    Err(e) => reply.error(e),
                }
            }
            (Node::Scratch(a), Child::Scratch(b)) if !shared.refuses(newname) => {
                let (from, to) = (shared.scratch_path(&a), shared.scratch_path(&b));
                let linked = if shared.policy.link_copies() {
                    scratch::copy_file(&from, &to)
                } else {
                    fs::hard_link(&from, &to)
                };
                match linked {
                    Ok(()) => shared.reply_entry(&Node::Scratch(b), reply),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            // An entry must never gain a second, writable name: callers fall back to copying.
            (Node::Entry(_), _) => reply.error(Errno::EXDEV),
            _ => reply.error(Errno::EACCES),
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
        let shared = &self.shared;
        match shared.new_scratch(parent, link_name) {
            Ok(relative) => {
                match std::os::unix::fs::symlink(target, shared.scratch_path(&relative)) {
                    Ok(()) => shared.reply_entry(&Node::Scratch(relative), reply),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let shared = &self.shared;
        match shared.inodes.node(ino.0) {
            Some(Node::Scratch(relative)) => match fs::read_link(shared.scratch_path(&relative)) {
                Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
                Err(e) => reply.error(errno(&e)),
            },
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
            Err(e) => reply.error(errno(&e)),
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
        // Entries are read-only and scratch writes go straight to the store file: there is
        // nothing to flush. ENOSYS tells the kernel so once and for all, and it stops sending a
        // flush on every close (a round trip per file copied out of the mount).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let shared = &self.shared;
        let Some(node) = shared.inodes.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if !tree::is_dir(&node) && !matches!(node, Node::Scratch(_)) {
            return reply.error(Errno::ENOTDIR);
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
        self.shared.read_dir(fh, move |shared, items| {
            let items = match items {
                Ok(items) => items,
                Err(e) => return reply.error(e),
            };
            for (i, (name, ino, kind)) in items.iter().enumerate().skip(offset as usize) {
                let known = shared
                    .inodes
                    .node(*ino)
                    .and_then(|node| shared.listed_attr(*ino, &node).ok());
                // An item gone since it was listed (a scratch file removed) is still listed, as
                // readdir would, with attributes the kernel must not keep: its next use asks
                // again.
                let (attr, ttl) =
                    known.unwrap_or_else(|| (shared.base_attr(*ino, *kind, 0, 0), Duration::ZERO));
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
        lock(&self.shared.handles).open.remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(self.shared.store.root()) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
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
