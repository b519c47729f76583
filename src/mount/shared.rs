//! The state the FUSE threads and the fetch workers share, and the I/O each request needs:
//! finding an entry locally or fetching it (off the FUSE threads), opening it, installing what
//! Dune stores, composing listings, the status document and the extended attributes. What each
//! request *means* is decided elsewhere, in plain tested functions; this module carries it out.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyEmpty,
    ReplyEntry, ReplyOpen,
};

use super::answers::{self, Installed};
use super::attrs::{entry_ttl, Attrs, TTL_IMMUTABLE, TTL_SCRATCH};
use super::changes;
use super::inodes::{Inodes, RemoteAttr, Value};
use super::listed_ahead::ListedAhead;
use super::listings::{Listings, BOX_LISTING_TTL};
use super::policy::PlatformPolicy;
use super::remote::{Lookup, Remote};
use super::stats::{Requests, Stats};
use super::status::Snapshots;
use super::through::Through;
use super::trail::Asked;
use super::tree::{self, Child, Node};
use super::unopened::{Created, Pages};
use super::warming::Warming;
use super::Reads;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::landing::{read_file_at, read_whole_file, Landing};
use crate::store::{EntryStat, Store};
use crate::sync::lock;
use crate::upload::background::Uploader;

/// What an open file handle refers to.
pub(super) enum Handle {
    /// An installed entry or a scratch file, read from the store.
    File {
        file: Arc<File>,
        /// Held while open: dropping the last reference closes the kernel's backing file.
        /// With its inode: the inode's entry in [`Handles::backings`] goes with the last open.
        backing: Option<(u64, Arc<BackingId>)>,
        /// The cache entry it reads (`None`: a scratch file), counted in
        /// [`Handles::open_entries`] while open, so the store's trim leaves it alone.
        entry: Option<Entry>,
    },
    /// An open directory. Shared, so a listing is answered without holding the handle table's
    /// lock.
    Dir(Arc<DirHandle>),
}

/// A directory's item: name, inode, type.
pub(super) type DirItem = (OsString, u64, FileType);

/// An open directory. Its items are listed when it is first read, not at opendir: opening a
/// directory whose listing the kernel keeps ([`Listings`]) then costs no listing at all.
pub(super) struct DirHandle {
    pub(super) node: Node,
    pub(super) ino: u64,
    /// The [`Listings`] change count when it was opened (its items are taken after that).
    pub(super) taken: u64,
    pub(super) items: OnceLock<Arc<Vec<DirItem>>>,
}

#[derive(Default)]
pub(super) struct Handles {
    pub(super) next: u64,
    pub(super) open: HashMap<u64, Handle>,
    /// One backing file per inode, shared by its opens, as the kernel requires.
    pub(super) backings: HashMap<u64, Weak<BackingId>>,
    /// The cache entries open now, with their numbers of handles.
    pub(super) open_entries: HashMap<Entry, usize>,
}

impl Handles {
    /// Closes handle `fh`: the last open of an inode's backing file takes the inode out of
    /// [`Handles::backings`], so the map holds only what is open (it would otherwise keep a
    /// dead entry for every inode ever opened, over a mount's whole life).
    pub(super) fn close(&mut self, fh: u64) {
        let Some(Handle::File { backing, entry, .. }) = self.open.remove(&fh) else {
            return;
        };
        if let Some(entry) = entry {
            if let Some(count) = self.open_entries.get_mut(&entry) {
                *count -= 1;
                if *count == 0 {
                    self.open_entries.remove(&entry);
                }
            }
        }
        if let Some((ino, backing)) = backing {
            drop(backing);
            if self
                .backings
                .get(&ino)
                .is_some_and(|w| w.strong_count() == 0)
            {
                self.backings.remove(&ino);
            }
        }
    }

    pub(super) fn insert(&mut self, handle: Handle) -> u64 {
        if let Handle::File {
            entry: Some(entry), ..
        } = &handle
        {
            *self.open_entries.entry(*entry).or_default() += 1;
        }
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
    pub inodes: Arc<Inodes>,
    pub stats: Arc<Stats>,
    pub policy: PlatformPolicy,
    /// What every node's attributes share.
    pub attrs: Attrs,
    /// The kernel's requests, by operation.
    pub requests: Requests,
    pub(super) handles: Mutex<Handles>,
    /// How the kernel opens and reads files.
    pub(super) reads: Reads,
    /// Whether opens register the store file for passthrough: asked for, and not refused yet.
    pub(super) passthrough: AtomicBool,
    pub(super) passthrough_reason_logged: AtomicBool,
    /// Scratch files created through the mount, open for writing.
    pub(super) created: Created,
    /// Hands the kernel pages before it reads them (see `unopened`).
    pub(super) pages: Pages,
    /// The thread looking entries up ahead of Dune.
    pub(super) warming: Warming,
    /// The shards listed last, for programs reading them through.
    pub(super) through: Through,
    /// The shards listed ahead of a program reading a kind's shards in order.
    pub(super) listed_ahead: ListedAhead,
    /// Where the status file's snapshots are written.
    pub(super) status_snapshots: Snapshots,
    /// With `--reads links`, the store's root by an absolute path, which artifacts' links
    /// name (see `links`).
    pub(super) link_root: Option<PathBuf>,
    /// With `--reads links`, the status file's lookups so far (each gets a number of its own).
    pub(super) status_lookups: AtomicU64,
}

impl Shared {
    /// The shared state of a mount over `store`, fetching misses through `remote` when there is
    /// a cluster; fails if no directory can be made for the status file's snapshots.
    pub(super) fn new(
        store: Arc<Store>,
        landing: Arc<Landing>,
        remote: Option<Arc<Remote>>,
        uploader: Option<Arc<Uploader>>,
        stats: Arc<Stats>,
        policy: PlatformPolicy,
        reads: Reads,
    ) -> io::Result<Shared> {
        let link_root = match reads {
            Reads::Links => Some(fs::canonicalize(store.root())?),
            _ => None,
        };
        Ok(Shared {
            link_root,
            status_lookups: AtomicU64::new(0),
            store,
            landing,
            // With boxes, a listing shows what they hold, which changes unannounced.
            listings: Listings::start(remote.as_ref().map(|_| BOX_LISTING_TTL)),
            remote,
            uploader,
            inodes: Arc::default(),
            stats,
            policy,
            requests: Requests::default(),
            handles: Mutex::new(Handles::default()),
            reads,
            passthrough: AtomicBool::new(reads == Reads::Passthrough),
            passthrough_reason_logged: AtomicBool::new(false),
            created: Created::default(),
            pages: Pages::default(),
            warming: Warming::default(),
            through: Through::default(),
            listed_ahead: ListedAhead::default(),
            status_snapshots: Snapshots::create()?,
            attrs: Attrs {
                started: SystemTime::now(),
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
                policy,
            },
        })
    }

    /// Attributes of an entry, and how long they hold: size and link count from the store file
    /// when installed, else (briefly) from what its box said. Entries are read-only whatever the
    /// store file's mode: 0555 if executable, else 0444. Their times are the mount's start time
    /// either way, never the store file's: an entry must look the same before and after it is
    /// fetched (tar fails with "file changed as we read it" when the ctime moves under it, rsync
    /// copies it again when the mtime moves), and its content never changes.
    pub(super) fn entry_attr(&self, ino: u64, entry: &Entry) -> io::Result<(FileAttr, Duration)> {
        if entry.kind != EntryKind::File {
            return self.meta_attr(ino, entry);
        }
        match self.landing.stat(entry) {
            Ok(stat) => Ok((self.local_attr(ino, entry, stat), self.held_ttl(entry))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.remote_attr(ino, entry, e),
            Err(e) => Err(e),
        }
    }

    /// What a box said of an entry not held here (the error `missing` if none did).
    fn remote_attr(
        &self,
        ino: u64,
        entry: &Entry,
        missing: io::Error,
    ) -> io::Result<(FileAttr, Duration)> {
        match self.inodes.remote(ino) {
            Some(remote) => Ok((self.attrs.remote(ino, remote), entry_ttl(entry, false))),
            None => Err(missing),
        }
    }

    /// Attributes of inode `ino`, a metadata entry: of the value it stands for (see
    /// [`Inodes::ino_for_value`]), whatever the store holds now.
    fn meta_attr(&self, ino: u64, entry: &Entry) -> io::Result<(FileAttr, Duration)> {
        let held = held_meta(&self.landing, entry);
        let stat = match (held, self.inodes.value(ino)) {
            (Ok((value, stat, _)), _) if self.inodes.holds_value(ino, value) => stat,
            // The store holds another value now, or none: this number stands for its own.
            (Ok(_), Some(own)) => value_stat(own),
            (Err(e), Some(own)) if e.kind() == io::ErrorKind::NotFound => value_stat(own),
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => {
                return self.remote_attr(ino, entry, e)
            }
            (Err(e), _) => return Err(e),
            (Ok(_), None) => unreachable!("holds_value takes a value for a number with none"),
        };
        Ok((self.local_attr(ino, entry, stat), entry_ttl(entry, true)))
    }

    /// The number and attributes of `entry`, held locally, for a lookup: a metadata entry's
    /// number is the one standing for the value held now.
    fn local_entry(&self, entry: &Entry) -> io::Result<(u64, FileAttr)> {
        let node = Node::Entry(*entry);
        if entry.kind == EntryKind::File {
            let ino = self.inodes.ino_of(&node);
            let stat = self.landing.stat(entry)?;
            return Ok((ino, self.local_attr(ino, entry, stat)));
        }
        let (value, stat, _) = held_meta(&self.landing, entry)?;
        let ino = self.inodes.ino_for_value(&node, value);
        Ok((ino, self.local_attr(ino, entry, stat)))
    }

    /// Attributes of an entry held locally (landing or in the store); an artifact's are
    /// remembered for listings (a metadata value can change, so its are not).
    pub(super) fn local_attr(&self, ino: u64, entry: &Entry, stat: EntryStat) -> FileAttr {
        if entry.kind == EntryKind::File {
            self.inodes.set_installed(ino, stat);
        }
        self.attrs.local(ino, entry, stat)
    }

    /// Attributes of an entry open as `file`: what that open reads, whatever the store holds
    /// now (a metadata value may have been replaced since).
    pub(super) fn opened_attr(&self, ino: u64, entry: &Entry, file: &File) -> io::Result<FileAttr> {
        let meta = file.metadata()?;
        let stat = EntryStat {
            size: meta.len(),
            mode: meta.mode(),
            nlink: meta.nlink(),
        };
        Ok(self.local_attr(ino, entry, stat))
    }

    /// Attributes of an item of a directory being listed. An artifact whose attributes were read
    /// from its store file before is answered from the inode table, so listing a large cache
    /// again costs no `stat` per artifact: its bytes never change, nor do its size and mode
    /// (one trimmed since and listed by its box is fetched again as the same bytes).
    pub(super) fn listed_attr(&self, ino: u64, node: &Node) -> io::Result<(FileAttr, Duration)> {
        match (node, self.inodes.installed(ino)) {
            (Node::Entry(entry), Some(stat)) => {
                Ok((self.attrs.local(ino, entry, stat), self.held_ttl(entry)))
            }
            _ => self.attr_of(ino, node),
        }
    }

    pub(super) fn scratch_path(&self, relative: &std::path::Path) -> PathBuf {
        self.store.root().join(relative)
    }

    /// The attributes of any node, and how long the kernel may keep them.
    pub(super) fn attr_of(&self, ino: u64, node: &Node) -> io::Result<(FileAttr, Duration)> {
        match node {
            Node::Entry(entry) => self.entry_attr(ino, entry),
            Node::Link(entry) => Ok((self.link_attr(ino, entry), TTL_IMMUTABLE)),
            Node::Scratch(relative) => {
                let meta = fs::symlink_metadata(self.scratch_path(relative))?;
                Ok((self.attrs.real(ino, &meta), TTL_SCRATCH))
            }
            fixed => Ok((self.attrs.fixed(ino, fixed), self.fixed_ttl(fixed))),
        }
    }

    /// Answers a request that names `node` with its number and attributes: the number is
    /// counted as handed to the kernel, so it stays until the kernel forgets it.
    pub(super) fn give_entry(
        &self,
        reply: ReplyEntry,
        node: &Node,
        ttl: &Duration,
        attr: &FileAttr,
    ) {
        self.inodes.handed_out(attr.ino.0, node);
        reply.entry(ttl, attr, Generation(0));
    }

    /// How a lookup shows `entry`, held locally: its node (a link with `--reads links`, if the
    /// store holds it under its name), attributes, and how long they hold.
    fn held_entry(&self, entry: &Entry) -> io::Result<(Node, FileAttr, Duration)> {
        if let Some((link, attr)) = self.held_link(entry) {
            return Ok((link, attr, TTL_IMMUTABLE));
        }
        let (_, attr) = self.local_entry(entry)?;
        Ok((Node::Entry(*entry), attr, self.held_ttl(entry)))
    }

    /// Answers a lookup of `entry`, which is held locally.
    pub(super) fn reply_local_entry(&self, entry: &Entry, reply: ReplyEntry) {
        match self.held_entry(entry) {
            Ok((shown, attr, ttl)) => self.give_entry(reply, &shown, &ttl, &attr),
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    /// Answers a lookup of `entry`, by Dune if `asking`, else by a warming thread, which looks
    /// up only what the store holds, and whose lookups are not Dune asking (`warming`).
    pub(super) fn lookup_entry(self: &Arc<Self>, entry: Entry, asking: bool, reply: ReplyEntry) {
        Stats::bump(&self.stats.entry_lookups);
        let node = Node::Entry(entry);
        match self.held_entry(&entry) {
            Ok((shown, attr, ttl)) => {
                Stats::bump(&self.stats.local_hits);
                self.give_entry(reply, &shown, &ttl, &attr);
                if let (Some(remote), true) = (&self.remote, asking) {
                    self.dune_asked(remote, &entry, false);
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !asking => {
                return reply.error(Errno::ENOENT)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return reply.error(answers::of_io(&e)),
        }
        if let Some((ino, remote)) = self.inodes.known_remote(&node) {
            Stats::bump(&self.stats.remote_known);
            let ttl = entry_ttl(&entry, false);
            return self.give_entry(reply, &node, &ttl, &self.attrs.remote(ino, remote));
        }
        let Some(remote) = self.remote.clone() else {
            return reply.error(Errno::ENOENT);
        };
        if remote.known_absent(&entry) {
            Stats::bump(&self.stats.negative_hits);
            return reply.error(Errno::ENOENT);
        }
        let shared = self.clone();
        if entry.kind != EntryKind::File || self.link_root.is_some() {
            // Dune looks up a rule's metadata only to read it next: fetching it now saves the
            // round trip of asking first, on the path of every rule it restores. With links, an
            // artifact too: fetched, it is a link (to its temp file) rather than a file shown
            // from its box's answer, which Dune 2.9 would touch through the mount.
            return remote.clone().fetch(
                entry,
                Box::new(move |result| match result {
                    Ok(()) => {
                        shared.reply_local_entry(&entry, reply);
                        shared.dune_asked(&remote, &entry, true);
                    }
                    Err(failure) => reply.error(answers::lookup_failed(&failure)),
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
                    let ttl = entry_ttl(&entry, false);
                    shared.give_entry(reply, &node, &ttl, &shared.attrs.remote(ino, attr));
                }
                Lookup::Missing => reply.error(Errno::ENOENT),
            }),
        );
    }

    /// Dune asked for `entry` ([`Remote::asked`]; `fetched`: it waited for its fetch). The
    /// rules this made near Dune whose names the kernel holds already are offered to warming
    /// with their numbers, to be handed their metadata without a lookup first; warming hands
    /// the others once it has looked them up. Not handed here: the kernel locks each page it is
    /// handed, a READ of the same page in flight holds it until a FUSE thread answers, and
    /// every FUSE thread waiting so would hang the mount.
    fn dune_asked(self: &Arc<Self>, remote: &Arc<Remote>, entry: &Entry, fetched: bool) {
        let near = remote.asked(entry, fetched).into_iter();
        let known = |rule: Entry| Some((self.inodes.known(&Node::Entry(rule))?, rule));
        let known: Vec<(u64, Entry)> = near.filter_map(known).collect();
        if !known.is_empty() {
            self.warming.offer_pages(known);
        }
    }

    /// Calls `then` with what `get` takes of `entry` from the landing (its store file, or some
    /// of its bytes): at once if it is held here (telling the fetching ahead that Dune asked for
    /// it, if `asking`), else once fetched from its box; with the errno of the failure
    /// otherwise (`absent` if there is no box to ask).
    pub(super) fn with_entry<T: 'static>(
        self: &Arc<Self>,
        entry: Entry,
        asking: bool,
        absent: Errno,
        get: impl Fn(&Landing) -> io::Result<T> + Send + 'static,
        then: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        match get(&self.landing) {
            Ok(got) => {
                then(Ok(got));
                if let (Some(remote), true) = (&self.remote, asking) {
                    self.dune_asked(remote, &entry, false);
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return then(Err(answers::of_io(&e))),
        }
        let Some(remote) = self.remote.clone() else {
            return then(Err(absent));
        };
        let shared = self.clone();
        remote.fetch(
            entry,
            Box::new(move |result| match result {
                Ok(()) => then(get(&shared.landing).map_err(|e| answers::of_io(&e))),
                Err(failure) => then(Err(answers::open_failed(&failure))),
            }),
        );
    }

    /// [`Shared::with_entry`] with its store file.
    pub(super) fn with_entry_file(
        self: &Arc<Self>,
        entry: Entry,
        asking: bool,
        absent: Errno,
        then: impl FnOnce(Result<File, Errno>) + Send + 'static,
    ) {
        let get = move |landing: &Landing| landing.open(&entry);
        self.with_entry(entry, asking, absent, get, then);
    }

    pub(super) fn open_entry(self: &Arc<Self>, ino: u64, entry: Entry, reply: ReplyOpen) {
        let shared = self.clone();
        self.with_entry_file(entry, true, Errno::ENOENT, move |file| match file {
            Ok(file) => shared.open_entry_file(ino, &entry, file, reply),
            Err(e) => reply.error(e),
        });
    }

    /// Opens an entry's `file`: with passthrough if possible, else for reads in the daemon with
    /// its pages kept. (Passthrough wins for small entries too, measured: reading through the
    /// daemon costs a request per first read, more than registering the file at each open.) A
    /// metadata entry's number must still stand for the value in `file`: if another value has
    /// replaced it, the open fails with ESTALE, and the kernel looks the name up again (to the
    /// number standing for the new value) and retries.
    pub(super) fn open_entry_file(&self, ino: u64, entry: &Entry, file: File, reply: ReplyOpen) {
        if entry.kind != EntryKind::File {
            match meta_value(&file) {
                Ok((value, _)) if self.inodes.holds_value(ino, value) => {}
                Ok(_) => return reply.error(Errno::ESTALE),
                Err(e) => return reply.error(answers::of_io(&e)),
            }
        }
        let file = Arc::new(file);
        let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
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
                        backing: Some((ino, backing.clone())),
                        entry: Some(*entry),
                    });
                    drop(handles);
                    self.inodes.opened(ino);
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
        let fh = lock(&self.handles).insert(Handle::File {
            file,
            backing: None,
            entry: Some(*entry),
        });
        self.inodes.opened(ino);
        Stats::bump(&self.stats.daemon_opens);
        reply.opened(FileHandle(fh), flags);
    }

    /// Reads `size` bytes at `offset` of the open file `fh` (fewer at its end).
    pub(super) fn read_handle(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let file = match lock(&self.handles).open.get(&fh.0) {
            Some(Handle::File { file, .. }) => file.clone(),
            _ => return Err(Errno::EBADF),
        };
        let bytes = read_file_at(&file, offset, size).map_err(|e| answers::of_io(&e))?;
        self.count_daemon_read(bytes.len());
        Ok(bytes)
    }

    /// Counts `bytes` read through the daemon.
    pub(super) fn count_daemon_read(&self, bytes: usize) {
        self.stats
            .daemon_read_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Registers a scratch file, read and written by the daemon, and returns its handle.
    pub(super) fn daemon_handle(&self, file: Arc<File>) -> u64 {
        lock(&self.handles).insert(Handle::File {
            file,
            backing: None,
            entry: None,
        })
    }

    /// Runs `remove`, the trim's removal of `entry` from the store, unless the entry is open or
    /// waiting for its upload (then it stays: `Ok(false)`). Under the handles' lock, so no open
    /// registers meanwhile; an open that has its descriptor but has not registered yet keeps
    /// reading the removed file, and one that comes after finds the entry gone and fetches it
    /// again from its box.
    pub(super) fn remove_unless_open(
        &self,
        entry: &Entry,
        remove: &dyn Fn() -> Result<bool, crate::store::StoreError>,
    ) -> Result<bool, crate::store::StoreError> {
        let handles = lock(&self.handles);
        let uploading = self.uploader.as_ref().is_some_and(|u| u.is_pending(entry));
        if uploading || handles.open_entries.contains_key(entry) {
            Stats::bump(&self.stats.trim_kept_open);
            return Ok(false);
        }
        let removed = remove()?;
        drop(handles);
        if removed {
            self.link_unnamed(entry);
        }
        Ok(removed)
    }

    /// The file behind handle `fh`, if it is one.
    pub(super) fn handle_file(&self, fh: FileHandle) -> Option<Arc<File>> {
        match lock(&self.handles).open.get(&fh.0) {
            Some(Handle::File { file, .. }) => Some(file.clone()),
            _ => None,
        }
    }

    pub(super) fn disable_passthrough(&self, reason: &io::Error) {
        self.passthrough.store(false, Ordering::Relaxed);
        if !self.passthrough_reason_logged.swap(true, Ordering::Relaxed) {
            log::warn!("FUSE passthrough unavailable ({reason}); reading through the daemon");
        }
    }

    /// What `name` in directory `parent` is.
    pub(super) fn child_of(&self, parent: INodeNo, name: &OsStr) -> Result<Child, Errno> {
        let parent = self.inodes.node(parent.0).ok_or(Errno::ENOENT)?;
        changes::open_dir(&parent)?;
        Ok(tree::child(&parent, name))
    }

    /// The kernel's view of a node just created or linked: its number and attributes.
    pub(super) fn reply_entry(&self, node: &Node, reply: ReplyEntry) {
        let ino = self.inodes.ino_of(node);
        match self.attr_of(ino, node) {
            Ok((attr, ttl)) => self.give_entry(reply, node, &ttl, &attr),
            Err(e) => reply.error(answers::of_io(&e)),
        }
    }

    /// Installs a scratch file as a cache entry (Dune renaming or linking it into `files/` or
    /// `meta/`): verified first, refused with EINVAL if it is not what its name says, first value
    /// kept on a metadata collision. With boxes, its upload is recorded durably *before* it is
    /// installed, and if that cannot be done the install is refused with the error met: once
    /// Dune is told an entry is stored, its upload cannot be lost.
    pub(super) fn install(&self, entry: Entry, source: &std::path::Path) -> Result<(), Errno> {
        Stats::bump(&self.stats.stores);
        let recorded = match &self.uploader {
            Some(uploader) => match uploader.record(entry) {
                Ok(recorded) => Some((uploader, recorded)),
                Err(e) => {
                    log::error!("refused to store {entry}: its upload cannot be recorded: {e}");
                    return Err(answers::of_store(&e));
                }
            },
            None => None,
        };
        // A copy fetched for a reader and not yet named is named first: it was there first.
        self.landing.settle_now(&entry);
        let outcome = self.store.install_file(entry, source);
        let installed = answers::installed(&outcome);
        if let Some((uploader, recorded)) = recorded {
            match installed {
                Installed::New => recorded.stored(uploader),
                _ => recorded.not_stored(uploader),
            }
        }
        match (installed, &outcome) {
            (Installed::New, _) => {
                self.listings_changed_by(&entry);
                if let (Some(remote), EntryKind::Meta(_)) = (&self.remote, entry.kind) {
                    remote.record(entry, Asked::Networked);
                }
            }
            (Installed::KeptFirst, _) => {
                Stats::bump(&self.stats.store_collisions);
                log::warn!("{entry}: a different value is already stored; keeping the first");
            }
            (Installed::Refused(Errno::EINVAL), Err(e)) => {
                Stats::bump(&self.stats.stores_refused);
                log::error!("refused to store {}: {e}", source.display());
            }
            (Installed::Refused(_), Err(e)) => {
                log::error!("storing {entry} from {}: {e}", source.display());
            }
            _ => {}
        }
        installed.answer()
    }

    /// Tells the kernel that the listings which may show `entry` (installed just now) changed:
    /// its shard's, and its kind's and top directory's, which may not have listed the shard.
    pub(super) fn listings_changed_by(&self, entry: &Entry) {
        let shard = tree::parent(&Node::Entry(*entry));
        let kind = tree::parent(&shard);
        let top = tree::parent(&kind);
        let inos = [shard, kind, top]
            .iter()
            .filter_map(|node| self.inodes.known(node))
            .collect();
        self.listings.changed(inos);
    }

    /// Removes a scratch file or directory with `remove`; anything else (entries, the layout's
    /// directories) cannot be removed through the mount.
    pub(super) fn remove_scratch(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&std::path::Path) -> io::Result<()>,
    ) {
        match self.child_of(parent, name).and_then(changes::remove) {
            Ok(relative) => match remove(&self.scratch_path(&relative)) {
                Ok(()) => {
                    // Its disk space comes back now, not when the kernel forgets it.
                    if let Some(ino) = self.inodes.known(&Node::Scratch(relative)) {
                        self.created.close(ino);
                    }
                    reply.ok()
                }
                Err(e) => reply.error(answers::of_io(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    /// Where a new scratch name `name` in `parent` would go (relative to the store): the one check
    /// every way of creating a name shares. A layout directory already exists (EEXIST: Dune makes
    /// sure a shard directory exists before renaming into it); entries and names the platform
    /// policy forbids cannot be created (EACCES).
    pub(super) fn new_scratch(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        changes::create(self.child_of(parent, name)?, self.refuses(name))
    }

    /// A scratch name that the platform policy forbids creating.
    pub(super) fn refuses(&self, name: &OsStr) -> bool {
        self.policy.refuses_name(name)
    }
}

/// The metadata value `file` holds (its digest and size), and its attributes: read whole (a
/// value is small) at position 0, leaving the file's offset alone.
fn meta_value(file: &File) -> io::Result<(Value, EntryStat)> {
    let (bytes, stat) = read_whole_file(file, crate::dune::metadata::LIMITS.max_total_len)?;
    Ok((value_of(&bytes), stat))
}

/// A metadata entry held here, landing or settled: the value it holds, its attributes and its
/// bytes.
pub(super) fn held_meta(
    landing: &Landing,
    entry: &Entry,
) -> io::Result<(Value, EntryStat, Vec<u8>)> {
    let (bytes, stat) = landing.read_whole(entry, crate::dune::metadata::LIMITS.max_total_len)?;
    Ok((value_of(&bytes), stat, bytes))
}

/// The value a metadata entry's `bytes` are.
fn value_of(bytes: &[u8]) -> Value {
    Value {
        digest: *blake3::hash(bytes).as_bytes(),
        size: bytes.len() as u64,
    }
}

/// The attributes of a metadata value no longer held here (its size is all that matters).
fn value_stat(value: Value) -> EntryStat {
    EntryStat {
        size: value.size,
        mode: 0o444,
        nlink: 1,
    }
}
