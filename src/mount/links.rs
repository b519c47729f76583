//! Artifacts shown as symbolic links to their store files (`--reads links`).
//!
//! Whatever the kernel keeps of a FUSE file, Dune 2.9's touch of each artifact it restores
//! (`utimensat`) is a SETATTR round trip to the daemon, and on a machine whose CPUs are busy,
//! each round trip waits for two threads to be scheduled (`docs/performance.md`). A symbolic
//! link the kernel has read once is kept (`FUSE_CACHE_SYMLINKS`), so a path through it resolves
//! with no request, and what it names is an ordinary file of the store: the kernel opens, reads
//! and touches it itself, as in Dune's own cache. The mount stays the place Dune looks, fetches
//! what the store lacks and takes what Dune stores.
//!
//! Which artifacts are links: every one the store holds, under its name or still landing
//! (fetched and verified, not yet durable: `store::landing`). A landing artifact's link names
//! its temp file, which the landing writes as the artifact lands (none waits in memory), so a
//! cold machine's build reads through links from its first rule on: no SETATTR, no pages handed,
//! no READ of an artifact. (A lookup of an artifact not yet here fetches it before it answers,
//! as a rule's metadata lookup always does, rather than showing a file from its box's answer.) When the artifact settles, its name in the store is a second name of
//! that file; the settler then takes back the target the kernel keeps (it named the temp file;
//! a settling made inside a reader's request hands that to the `links` thread), so the next path
//! through the link reads the store file's, and the temp name goes a while later (`LINGER`,
//! twice over: the target taken back again, then the name gone), time for a reader that followed
//! it just before to open it. A link is a number of its own ([`Node::Link`]), apart from the
//! artifact shown as a file: one the landing could not write to a temp file (a full disk) is
//! shown as a file, read through the mount, and kept by the kernel only briefly, so that it asks
//! again and meets the link once the artifact is under its name; a program holding the file open
//! keeps reading it. Once the store names such artifacts (the landing tells), a warming thread
//! drops their names from the kernel and looks them up again
//! ([`Offer::Relink`](super::warming::Offer::Relink)), so that the next build finds the links
//! kept. (A number must not change kind while the kernel holds it: the kernel would take it for a
//! reused one and fail what it holds open through it.) Metadata entries stay files (a metadata
//! name's value can change, and Dune reads each once, with no touch).
//!
//! What it costs: the mount no longer looks like Dune's own directory (`find -type f` skips
//! the links, `cp -r` copies links, not bytes, and the mount's extended attributes are not on
//! links); Dune's touch changes the store file's times (which is what Dune's own trimming
//! reads, so recently restored artifacts are kept longest); whoever reads through the mount
//! must be able to read the store; and the mount no longer stands between a writer and an
//! artifact's bytes. Dune never writes to an entry (it copies out, and stores new names), and
//! a store file is read-only, but root ignores that: a write through a link, as root, would
//! change the store file itself (the mount warns when it runs as root in this mode).
//!
//! A link whose store file was trimmed while the kernel kept it is taken back from the kernel
//! (its name and its kept target are dropped), and the next path through it fetches the
//! artifact again; a program that followed the link just before the trim and opens just after
//! finds no file, as with any file removed between a `stat` and an `open`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, INodeNo, ReplyData};

use super::attrs::{entry_ttl, TTL_IMMUTABLE};
use super::shared::Shared;
use super::tree::{self, Node};
use crate::dune::layout::{Entry, EntryKind};
use crate::store::landing::{Landing, ToldOn};

/// Has the landing tell the mount of the artifacts each settling names, so that what the kernel
/// keeps of them (a link's target naming the temp file, a name held as a file) is taken back.
/// On a settler thread that is done there and then; a settling made for a reader's request (a
/// READLINK that settles its artifact) hands it to the `links` thread instead, because to drop a
/// link's kept target the kernel waits for that very request. An error if that thread cannot
/// start.
pub(super) fn start_retargeting(shared: &Arc<Shared>, landing: &Landing) -> std::io::Result<()> {
    let (handed, named) = crossbeam_channel::unbounded::<Vec<Entry>>();
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("links".into())
        .spawn(move || {
            for entries in named {
                match weak.upgrade() {
                    Some(shared) => shared.retarget_links(entries),
                    None => return,
                }
            }
        })?;
    let weak = Arc::downgrade(shared);
    landing.on_artifacts_named(move |entries, on| match (on, weak.upgrade()) {
        (ToldOn::Settler, Some(shared)) => shared.retarget_links(entries),
        (ToldOn::Reader, _) => {
            let _ = handed.send(entries);
        }
        (ToldOn::Settler, None) => {}
    });
    Ok(())
}

impl Shared {
    /// Artifact `entry` as a lookup shows it with links: its link's node and attributes if the
    /// store holds it, under its name or landing in a temp file (none otherwise: it is shown as
    /// a file).
    pub(super) fn held_link(&self, entry: &Entry) -> Option<(Node, FileAttr)> {
        let target = self.target_now(entry)?;
        let node = Node::Link(*entry);
        let ino = self.inodes.ino_of(&node);
        Some((node, self.attrs.link(ino, target.as_os_str().len())))
    }

    /// The attributes of inode `ino`, artifact `entry` shown as a link.
    pub(super) fn link_attr(&self, ino: u64, entry: &Entry) -> FileAttr {
        let target = self.target_now(entry).or_else(|| self.link_target(entry));
        self.attrs
            .link(ino, target.map_or(0, |t| t.as_os_str().len()))
    }

    /// Where artifact `entry`'s link points now, if artifacts are shown as links and the store
    /// holds it: its temp file while it lands (its bytes are there, verified, and they stay
    /// there a while after it settles: see `Landing::keep_temp_names`), its store file once it
    /// is under its name.
    fn target_now(&self, entry: &Entry) -> Option<PathBuf> {
        let store_file = self.link_target(entry)?;
        if let Some(temp) = self.landing.temp_name(entry) {
            let root = self.link_root.as_ref()?;
            return match temp.strip_prefix(self.store.root()) {
                Ok(inside) => Some(root.join(inside)),
                Err(_) => Some(temp),
            };
        }
        self.store.path_of(entry).exists().then_some(store_file)
    }

    /// How long the kernel may keep what it learns of `entry`, held locally. With links, an
    /// artifact shown as a file (it was not yet under its name in the store) is kept briefly:
    /// the kernel asks again soon, and meets its link once it is.
    pub(super) fn held_ttl(&self, entry: &Entry) -> Duration {
        let a_link_later = self.link_target(entry).is_some();
        entry_ttl(entry, !a_link_later)
    }

    /// Where artifact `entry`'s link points, if artifacts are shown as links: its store file,
    /// by an absolute path.
    pub(super) fn link_target(&self, entry: &Entry) -> Option<PathBuf> {
        let root = self.link_root.as_ref()?;
        (entry.kind == EntryKind::File).then(|| root.join(entry.relative_path()))
    }

    /// Answers a READLINK of artifact `entry`, shown as a link: with its store file's path once
    /// the store holds it under its name, fetching it first if it was trimmed since (by Dune if
    /// `asking`, else by a warming thread). Only then does it settle an entry itself, on the
    /// thread answering (the kernel asks once per link it keeps, and the trim took it back).
    pub(super) fn read_link(self: &Arc<Self>, entry: Entry, asking: bool, reply: ReplyData) {
        let Some(target) = self.link_target(&entry) else {
            return reply.error(Errno::EINVAL);
        };
        if let Some(landing) = self.target_now(&entry).filter(|now| *now != target) {
            return reply.data(landing.as_os_str().as_encoded_bytes());
        }
        let named = move |landing: &crate::store::landing::Landing| {
            landing.settle_now(&entry);
            landing.stat(&entry).map(drop)
        };
        self.with_entry(
            entry,
            asking,
            Errno::ENOENT,
            named,
            move |named| match named {
                Ok(()) => reply.data(target.as_os_str().as_encoded_bytes()),
                Err(e) => reply.error(e),
            },
        );
    }

    /// The node a lookup of fixed `node` answers. With links, the kernel keeps every link's
    /// target, but the status file names a new snapshot at each read, and taking a kept target
    /// back after a read races the reader's next path: so each lookup of the status file is a
    /// new number with nothing kept, and the kernel keeps the name for no time
    /// ([`Shared::fixed_ttl`]), so each path through it looks it up.
    pub(super) fn looked_up_fixed(&self, node: Node) -> Node {
        match node {
            Node::Status(_) if self.link_root.is_some() => {
                Node::Status(self.status_lookups.fetch_add(1, Ordering::Relaxed) + 1)
            }
            node => node,
        }
    }

    /// How long the kernel may keep fixed `node` and its name.
    pub(super) fn fixed_ttl(&self, node: &Node) -> Duration {
        match node {
            Node::Status(_) if self.link_root.is_some() => Duration::ZERO,
            _ => TTL_IMMUTABLE,
        }
    }

    /// Drops artifact `entry`'s name from the kernel if the kernel may hold it as a file while
    /// the store names it now (`--reads links`), so that its next lookup meets the link (from a
    /// warming thread, never a FUSE thread: the kernel takes the shard's lock). True if it did.
    /// A program reading the file reads on.
    pub(super) fn drop_file_name(&self, entry: &Entry) -> bool {
        let file = Node::Entry(*entry);
        let shard = self.inodes.known(&tree::parent(&file));
        let (true, Some(_), Some(shard)) =
            (self.link_root.is_some(), self.inodes.known(&file), shard)
        else {
            return false;
        };
        if !self.store.path_of(entry).exists() {
            return false;
        }
        let name = entry.key.to_string();
        self.listings.forget_name(INodeNo(shard), OsStr::new(&name));
        true
    }

    /// Whether the kernel holds artifact `entry` as a link.
    pub(super) fn kept_as_link(&self, entry: &Entry) -> bool {
        self.inodes.known(&Node::Link(*entry)).is_some()
    }

    /// Called with the artifacts a settling just named in the store, and again before their
    /// temp names go (never on a FUSE thread): the kernel drops the target it keeps of each one's
    /// link, which may name the temp file, so that the next path through it reads the store
    /// file's; then warming looks them up again, ahead of Dune.
    pub(super) fn retarget_links(&self, named: Vec<Entry>) {
        for entry in &named {
            let Some(ino) = self.inodes.known(&Node::Link(*entry)) else {
                continue;
            };
            if let Err(e) = self.pages.drop_kept(ino) {
                log::debug!("cannot take back the kept target of {entry}'s link: {e}");
            }
        }
        self.warming.offer_relink(named);
    }

    /// Called once artifact `entry` left the store (by the trimming thread, never a FUSE
    /// thread: the kernel takes the shard's lock to drop a name). If the kernel keeps it as a
    /// link, the name and the link's target are dropped from its caches, so the next path
    /// through it asks: a READLINK from a program holding the link fetches it again; a lookup
    /// finds it on its box (shown as a file until it is in the store again), or finds it gone
    /// when no box has it, and then Dune may store it anew.
    pub(super) fn link_unnamed(&self, entry: &Entry) {
        if self.link_root.is_none() {
            return;
        }
        let link = Node::Link(*entry);
        let Some(ino) = self.inodes.known(&link) else {
            return;
        };
        if let Some(shard) = self.inodes.known(&tree::parent(&link)) {
            let name = entry.key.to_string();
            self.listings.forget_name(INodeNo(shard), OsStr::new(&name));
        }
        if let Err(e) = self.pages.drop_kept(ino) {
            log::debug!("cannot take back the kept link of {entry}: {e}");
        }
    }
}
