//! Keeping the inode table within a bound: the kernel is asked to drop the names of the
//! entries it has not used for longest.
//!
//! The table holds a number for every name the kernel holds ([`inodes`](super::inodes)), and
//! the kernel keeps names until memory runs short: a `find` over a million entries would make
//! the mount hold a million numbers, about 130 MB. So once the kernel holds more than the bound
//! (`--max-inodes`), this module's thread asks it to drop names (a FUSE "invalidate entry"
//! notification) until it holds an eighth less. The kernel drops a name nothing uses at once,
//! with its inode, and sends `forget`, which takes the number out of the table. A name dropped
//! is simply looked up again when next used (a hash look-up and a `stat`), under the same
//! number: the table only forgets a number when the kernel has.
//!
//! Which names: a second-chance sweep over the table ([`pass`](super::inodes::pass)). A request
//! marks the number it uses; the sweep unmarks what is marked and picks what is not, so a name
//! goes only if nothing used it since the sweep last went by. Only entries go: never a
//! directory (its name pins every name under it), a scratch path (Dune's work in progress) or
//! an open entry. The cost per request is one flag; the sweep's cost, at most two laps of a
//! table the bound keeps small, is paid on this thread.
//!
//! The notifications are sent from this thread only, with no lock held: the kernel handles one
//! by taking the directory's lock, which a request on that directory may hold while it waits
//! for the mount's answer, so a notification sent from inside a request could wait for itself.
//! One side effect: the kernel takes back the kept listing of a directory a name was dropped
//! from ([`listings`](super::listings)), so listing it again asks the mount.
//!
//! A fast `find` hands out numbers (in `readdirplus` replies) faster than this thread has the
//! kernel drop them: while the kernel holds a quarter more than the bound
//! ([`Inodes::crowded`]), each batch of a listing waits 1 ms for it. The wait holds no lock, so
//! nothing but that listing waits on it.

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock, Weak};

use fuser::{INodeNo, Notifier};

use super::inodes::Inodes;

/// The numbers the kernel may hold by default: a large build's working set several times over,
/// and above `find` over 100 000 entries (which at 100 000 lost the listings the kernel kept),
/// for a mount that peaks at 94 MiB while `find` walks a million entries.
pub const DEFAULT_MOST: usize = 131_072;

/// The thread keeping the table within its bound.
pub struct Evictor {
    /// Set once the session exists; until then nothing is asked of the kernel.
    notifier: OnceLock<Notifier>,
}

impl Evictor {
    /// Bounds `inodes` to `most` numbers held by the kernel, and starts the thread that keeps
    /// it so.
    pub fn start(inodes: &Arc<Inodes>, most: usize) -> Arc<Evictor> {
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        inodes.bound(most, wake);
        let evictor = Arc::new(Evictor {
            notifier: OnceLock::new(),
        });
        let (weak_inodes, weak_evictor): (Weak<Inodes>, Weak<Evictor>) =
            (Arc::downgrade(inodes), Arc::downgrade(&evictor));
        std::thread::Builder::new()
            .name("evict".into())
            .spawn(move || {
                // Where the sweep goes on from, in the table's order.
                let mut hand = 0;
                while woken.recv().is_ok() {
                    let (Some(inodes), Some(evictor)) =
                        (weak_inodes.upgrade(), weak_evictor.upgrade())
                    else {
                        return;
                    };
                    evictor.evict(&inodes, &mut hand);
                }
            })
            .expect("cannot start the evicting thread");
        evictor
    }

    /// Lets names be dropped from now on, through `notifier`.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Asks the kernel to drop names until the table is back within its bound.
    fn evict(&self, inodes: &Inodes, hand: &mut usize) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        loop {
            let victims = inodes.victims(hand);
            if victims.is_empty() {
                return;
            }
            for (parent, entry) in victims {
                let name = entry.key.to_string();
                match notifier.inval_entry(INodeNo(parent), OsStr::new(&name)) {
                    Ok(()) => {}
                    // The kernel holds no such name any more (dropped meanwhile, or the file
                    // is open under a name dropped before): nothing to do.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => {
                    }
                    // Anything else would fail for every name: tried again when next woken.
                    Err(e) => {
                        log::warn!("cannot ask the kernel to drop {entry}: {e}");
                        return;
                    }
                }
            }
        }
    }
}
