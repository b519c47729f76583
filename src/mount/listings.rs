//! Which directory listings the kernel may keep, and telling it when one has changed.
//!
//! Without `FOPEN_CACHE_DIR` the kernel asks the daemon for a directory's items every time it is
//! read, so a second `find` over a large cache costs as many round trips as the first. The
//! layout's directories (`files/`, a kind, a shard) change rarely, so the mount lets the kernel
//! keep their listings, and takes them back (a FUSE "invalidate inode" notification) when it
//! learns they changed:
//!
//! - when an entry is installed through the mount (its shard, its kind and its top directory:
//!   the shard or the kind may be new to the listing);
//! - for a mount with boxes, every [`BOX_LISTING_TTL`]: what other machines push is learnt of
//!   only by asking again, as `ls` did on every call before.
//!
//! A listing computed before a change but read by the kernel after its notification would be
//! kept stale; so every listing carries the change count it was taken at, and reading out one
//! older than the current count notifies once more ([`Listings::read_out`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};
use fuser::{FopenFlags, INodeNo, Notifier};

use crate::sync::lock;

/// How long the kernel may keep a listing that includes what boxes hold.
pub const BOX_LISTING_TTL: Duration = Duration::from_secs(10);

/// The directories whose listings the kernel may be keeping, and the thread that takes them back.
pub struct Listings {
    /// Set once the session exists; until then (and if it never does) nothing is cached.
    notifier: OnceLock<Notifier>,
    /// Directories opened with `FOPEN_CACHE_DIR` since they were last taken back.
    kept: Mutex<HashSet<u64>>,
    /// Changes learnt of so far.
    changes: AtomicU64,
    /// Directories to take back on the notifying thread: those read out stale, which must not
    /// wait for the kernel to finish taking in the listing it is being sent.
    to_notify: Sender<Vec<u64>>,
}

impl Listings {
    /// Starts the notifying thread; `expire` (for mounts with boxes) takes every kept listing
    /// back that often.
    pub fn start(expire: Option<Duration>) -> Arc<Listings> {
        let (to_notify, notify) = crossbeam_channel::unbounded::<Vec<u64>>();
        let listings = Arc::new(Listings {
            notifier: OnceLock::new(),
            kept: Mutex::new(HashSet::new()),
            changes: AtomicU64::new(0),
            to_notify,
        });
        let weak = Arc::downgrade(&listings);
        std::thread::Builder::new()
            .name("listings".into())
            .spawn(move || loop {
                let inos = match expire {
                    Some(every) => notify.recv_timeout(every),
                    None => notify.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                let Some(listings) = weak.upgrade() else {
                    return;
                };
                match inos {
                    Ok(inos) => listings.take_back(inos),
                    Err(RecvTimeoutError::Timeout) => {
                        let all = lock(&listings.kept).iter().copied().collect();
                        listings.take_back(all);
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .expect("cannot start the listings thread");
        listings
    }

    /// Lets listings be kept from now on, taking them back through `notifier`.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The change count to take a listing at (before computing it).
    pub fn now(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// The open flags for a directory `ino` whose listing the kernel may keep.
    pub fn open_flags(&self, ino: u64) -> FopenFlags {
        if self.notifier.get().is_none() {
            return FopenFlags::empty();
        }
        lock(&self.kept).insert(ino);
        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
    }

    /// The listings of `inos` changed: the kernel must ask again. Told before this returns, so
    /// a listing after the request that made the change (a rename into the cache) shows it.
    /// (Taking back a directory's pages takes none of the kernel's directory locks, so this is
    /// safe inside a request on that directory, unlike invalidating a name.)
    pub fn changed(&self, inos: Vec<u64>) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.take_back(inos);
    }

    /// Tells the kernel to forget what it keeps of inode `ino`, a file: its attributes and pages
    /// (a metadata entry stored by a rename, whose value may not be the renamed file's).
    pub fn forget_file(&self, ino: u64) {
        if let Some(notifier) = self.notifier.get() {
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(rustix::io::Errno::NOENT.raw_os_error()) {
                    log::warn!("cannot tell the kernel that file {ino} changed: {e}");
                }
            }
        }
    }

    /// Tells the kernel to forget its name `name` in directory `parent` (so the next path walk
    /// through it looks it up again). Not from inside a request in `parent`: the kernel takes
    /// that directory's lock to do it.
    pub fn forget_name(&self, parent: INodeNo, name: &OsStr) {
        if let Some(notifier) = self.notifier.get() {
            if let Err(e) = notifier.inval_entry(parent, name) {
                if e.raw_os_error() != Some(rustix::io::Errno::NOENT.raw_os_error()) {
                    log::warn!("cannot tell the kernel to forget {name:?} in {parent:?}: {e}");
                }
            }
        }
    }

    /// A listing of `ino` taken at change count `taken` has just been handed to the kernel: if
    /// something changed since, take it back again.
    pub fn read_out(&self, ino: u64, taken: u64) {
        if taken != self.now() && lock(&self.kept).contains(&ino) {
            let _ = self.to_notify.send(vec![ino]);
        }
    }

    fn take_back(&self, inos: Vec<u64>) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        let mut kept = lock(&self.kept);
        for ino in inos {
            if kept.remove(&ino) {
                // ENOENT: the kernel has forgotten the directory already, nothing to take back.
                if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                    if e.raw_os_error() != Some(rustix::io::Errno::NOENT.raw_os_error()) {
                        log::warn!("cannot tell the kernel that directory {ino} changed: {e}");
                    }
                }
            }
        }
    }
}
