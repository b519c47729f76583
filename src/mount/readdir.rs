//! Answering `readdir`: a directory's items, from the store and (for the layout's directories)
//! every box that may hold entries there, listed at the directory's first read on a worker when
//! that asks the boxes, never on a FUSE thread. What the items are is composed by
//! [`directory`]; this is the I/O around it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::{Errno, FileHandle, FileType};

use super::answers;
use super::attrs;
use super::directory;
use super::pools::Waited;
use super::shared::{DirHandle, DirItem, Handle, Shared};
use super::stats::Stats;
use super::tree::{self, Node, Top};
use crate::dune::key::Key;
use crate::dune::layout::{Entry, EntryKind};
use crate::store::EntryStat;
use crate::sync::lock;

impl Shared {
    /// The items of a directory other than a shard (shards need the boxes: see `opendir`).
    pub(super) fn local_dir_items(
        &self,
        node: &Node,
    ) -> io::Result<Vec<(OsString, u64, FileType)>> {
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
                let kind = item.file_type().map(attrs::file_type)?;
                let child = Node::Scratch(relative.join(&name));
                items.push((name, self.inodes.ino_of(&child), kind));
            }
        }
        Ok(items)
    }

    /// A top directory's items: the kinds that hold entries here or on any box, so a copy of
    /// a Dune 2.9 cache has no empty `meta/v5`. Every kind can still be looked up and used.
    pub(super) fn top_items(&self, top: Top) -> io::Result<Vec<(OsString, u64, FileType)>> {
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
    pub(super) fn kind_items(&self, kind: EntryKind) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let local = self
            .store
            .non_empty_shards(kind)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let listed = self.remote.as_ref().map(|r| r.list_shards(kind));
        Ok(directory::kind_shards(local, listed.unwrap_or_default())
            .into_iter()
            .map(|shard| {
                let ino = self.inodes.ino_of(&Node::Shard(kind, shard));
                (OsString::from(shard.to_string()), ino, FileType::Directory)
            })
            .collect())
    }

    /// A shard's items: the store's entries and every owning box's, each once, in the order of
    /// their inode numbers, which is the order `cp` reads them in (see `through`).
    pub(super) fn shard_items(
        &self,
        kind: EntryKind,
        shard: crate::dune::key::Shard,
    ) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let store_err = |e: crate::store::StoreError| io::Error::other(e.to_string());
        // An artifact's attributes never change: stat'ed here, relative to the directory read,
        // they answer the listing's items (see `listed_attr`) with no path walked per item.
        let (local, stated): (Vec<Key>, HashMap<Key, EntryStat>) = match kind {
            EntryKind::File => {
                let stated = self
                    .store
                    .list_shard_stated(kind, shard)
                    .map_err(store_err)?;
                (
                    stated.iter().map(|(key, _)| *key).collect(),
                    stated.into_iter().collect(),
                )
            }
            _ => (
                self.store.list_shard(kind, shard).map_err(store_err)?,
                HashMap::new(),
            ),
        };
        let listed = self.remote.as_ref().map(|r| r.list_shard(kind, shard));
        let mut entries: Vec<(u64, Entry, bool)> =
            directory::shard_keys(local, listed.unwrap_or_default())
                .into_iter()
                .map(|(key, remote)| {
                    let entry = Entry { kind, key };
                    let stat = stated.get(&key);
                    // With links, what the store holds is listed as its link (see `links`).
                    if let (Some(_), Some(_)) = (stat, self.link_target(&entry)) {
                        return (self.inodes.ino_of(&Node::Link(entry)), entry, true);
                    }
                    let node = Node::Entry(entry);
                    let ino = match remote {
                        Some(attr) => self.inodes.set_remote(&node, attr),
                        None => self.inodes.ino_of(&node),
                    };
                    if let Some(stat) = stat {
                        self.inodes.set_installed(ino, *stat);
                    }
                    (ino, entry, false)
                })
                .collect();
        entries.sort_unstable_by_key(|(ino, ..)| *ino);
        let items = entries
            .iter()
            .map(|(ino, entry, link)| {
                let kind = if *link {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                (OsString::from(entry.key.to_string()), *ino, kind)
            })
            .collect();
        if kind == EntryKind::File {
            // A program reading a shard through reads files, not links.
            let files = entries.into_iter().filter(|(.., link)| !link);
            self.through
                .listed(files.map(|(ino, entry, _)| (ino, entry)).collect());
        }
        Ok(items)
    }

    /// A shard's items for its first read: the listing made ahead if usable, else its own. The
    /// next shards are then listed ahead (see [`listed_ahead`](super::listed_ahead)).
    fn read_shard_items(
        &self,
        kind: EntryKind,
        shard: crate::dune::key::Shard,
    ) -> io::Result<Vec<(OsString, u64, FileType)>> {
        let items = match self.listed_ahead.take(kind, shard, self.listings.now()) {
            Some(items) => {
                Stats::bump(&self.stats.listed_ahead_used);
                items
            }
            None => self.shard_items(kind, shard)?,
        };
        self.listed_ahead.after(kind, shard);
        Ok(items)
    }

    /// The open directory `fh`.
    pub(super) fn dir_handle(&self, fh: FileHandle) -> Option<Arc<DirHandle>> {
        match lock(&self.handles).open.get(&fh.0) {
            Some(Handle::Dir(dir)) => Some(dir.clone()),
            _ => None,
        }
    }

    /// Serves a read of the open directory `fh`: `fill` answers with its items (or the errno to
    /// answer), and then a listing read out stale is taken back (see
    /// [`Listings::read_out`](super::listings::Listings::read_out)).
    pub(super) fn read_dir(
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
                Err(e) => fill(shared, Err(answers::of_io(&e))),
            }
            shared.listings.read_out(ino, taken);
        });
    }

    /// Calls `then` with the items of `dir`, listing them first if this is its first read: on a
    /// worker if that asks the boxes, never on a FUSE thread.
    pub(super) fn with_items(
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
                Node::Shard(kind, shard) => shared.read_shard_items(*kind, *shard)?,
                Node::Kind(kind) => shared.kind_items(*kind)?,
                Node::Top(top) => shared.top_items(*top)?,
                other => shared.local_dir_items(other)?,
            });
            Ok(dir.items.get_or_init(|| Arc::new(all)).clone())
        };
        match &self.remote {
            Some(remote) if asks_boxes => {
                let shared = self.clone();
                remote.spawn(move |waited| match waited {
                    Waited::InTime => then(&shared, list(&shared)),
                    Waited::TooLong => {
                        let busy = io::Error::other("the boxes are too busy to list it now");
                        then(&shared, Err(busy))
                    }
                });
            }
            _ => then(self, list(self)),
        }
    }
}
