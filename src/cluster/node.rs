//! The client of one node, whatever kind it is: a cache box, or a bucket of an S3-compatible
//! object store. The callers (the mount, `push`, `get`, the uploads) ask every node the same
//! questions through this one type and never learn which kind answered.

use std::fs::File;

use super::client::{BoxClient, ClientError, ListedEntry, PutOutcome, RemoteEntry, StreamError};
use super::health::HealthState;
use super::s3::S3Client;
use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind};

/// A node's client.
#[derive(Debug)]
pub enum NodeClient {
    /// A cache box (docs/protocol.md).
    Box(BoxClient),
    /// A bucket of an object store (docs/object-store.md).
    S3(Box<S3Client>),
}

/// What a fetch delivered besides the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// For a rule's metadata, the rules the node's hint says come next (advice: unverified).
    pub next: Vec<Entry>,
    /// The executable bit the node claims for an artifact, to check against its key.
    pub executable: Option<bool>,
}

impl NodeClient {
    /// The node's URL (a box's, or the bucket's with its prefix).
    pub fn url(&self) -> &str {
        match self {
            NodeClient::Box(client) => client.url(),
            NodeClient::S3(client) => client.url(),
        }
    }

    /// The node's failure state as this process sees it.
    pub fn health(&self) -> HealthState {
        match self {
            NodeClient::Box(client) => client.health(),
            NodeClient::S3(client) => client.http().health(),
        }
    }

    /// Whether the node may keep hints: a box that answered as a `dune-cachefs box`, or has not
    /// answered yet.
    pub fn may_keep_hints(&self) -> bool {
        matches!(self, NodeClient::Box(client) if client.may_keep_hints())
    }

    /// Whether the node keeps hints (only a `dune-cachefs box` does).
    pub fn keeps_hints(&self) -> bool {
        matches!(self, NodeClient::Box(client) if client.keeps_hints())
    }

    /// Whether the node holds `entry`, and its size and mode if so.
    pub fn head(&self, entry: &Entry) -> Result<Option<RemoteEntry>, ClientError> {
        match self {
            NodeClient::Box(client) => client.head(entry),
            NodeClient::S3(client) => client.head(entry),
        }
    }

    /// Streams `entry` into `sink` (see [`BoxClient::fetch`]); `Ok(None)` if the node does not
    /// hold it.
    pub fn fetch<E>(
        &self,
        entry: &Entry,
        ahead: bool,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<Delivered>, StreamError<E>> {
        Ok(match self {
            NodeClient::Box(client) => client.fetch(entry, ahead, sink)?.map(|next| Delivered {
                next,
                executable: None,
            }),
            NodeClient::S3(client) => client.fetch(entry, sink)?.map(|facts| Delivered {
                next: Vec::new(),
                executable: facts.executable,
            }),
        })
    }

    /// Uploads `entry` from a local file.
    pub fn put(
        &self,
        entry: &Entry,
        file: &File,
        executable: bool,
    ) -> Result<PutOutcome, ClientError> {
        match self {
            NodeClient::Box(client) => client.put(entry, file, executable),
            NodeClient::S3(client) => client.put(entry, file, executable),
        }
    }

    /// The rules the node's hint for a rule's metadata `entry` says come next, if it keeps one
    /// (a bucket keeps none).
    pub fn get_hint(&self, entry: &Entry) -> Result<Option<Vec<Entry>>, ClientError> {
        match self {
            NodeClient::Box(client) => client.get_hint(entry),
            NodeClient::S3(_) => Ok(None),
        }
    }

    /// Replaces the hint for a rule's metadata `entry`; a node that keeps no hints
    /// ([`NodeClient::keeps_hints`]) is sent nothing.
    pub fn put_hint(&self, entry: &Entry, next: &[Entry]) -> Result<(), ClientError> {
        match self {
            NodeClient::Box(client) => client.put_hint(entry, next),
            NodeClient::S3(_) => Ok(()),
        }
    }

    /// The entries of one kind the node holds in one shard.
    pub fn list(&self, kind: EntryKind, shard: Shard) -> Result<Vec<ListedEntry>, ClientError> {
        match self {
            NodeClient::Box(client) => client.list(kind, shard),
            NodeClient::S3(client) => client.list(kind, shard),
        }
    }

    /// The shards of `kind` in which the node holds entries.
    pub fn list_shards(&self, kind: EntryKind) -> Result<Vec<Shard>, ClientError> {
        match self {
            NodeClient::Box(client) => client.list_shards(kind),
            NodeClient::S3(client) => client.list_shards(kind),
        }
    }
}
