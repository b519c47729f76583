//! Moving entries to their new owners when boxes are added or removed (`dune-cachefs rebalance`).
//!
//! A config that names the table it replaces (`(previous ...)`) says which key ranges changed
//! owner ([`ClusterConfig::moves`](crate::cluster::config::ClusterConfig::moves)). For each, the
//! previous owner's shard listings name the entries it holds there; each is fetched from it and
//! verified as any fetch is ([`crate::fetch`]: an artifact against its key, metadata parsed),
//! then `PUT` to its new owner, which verifies it again and keeps the first value of a rule's
//! metadata: a collision is recorded (by the box, and in the report), never overwritten. All
//! artifacts move before any metadata, and metadata naming an artifact that failed to move is
//! held back, so a box never offers a rule whose files did not arrive.
//!
//! Boxes keep serving throughout: readers ask a key's previous owner when its new owner misses
//! ([`Cluster::read`]), and nothing is removed here. Each settled entry is recorded in a
//! [`Journal`], so a rebalance that was killed resumes where it stopped. Once a run reports
//! every entry settled, each previous owner may drop what it no longer owns
//! ([`drop_unowned`]: the box's `POST /_drop`).

pub mod journal;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::cluster::client::{ClientError, PutOutcome};
use crate::cluster::config::{KeyRange, Move};
use crate::cluster::node::NodeClient;
use crate::cluster::Cluster;
use crate::dune::key::{mode_is_executable, Key, Shard};
use crate::dune::layout::{Entry, EntryKind};
use crate::dune::metadata::Metadata;
use crate::fetch::{fetch_verified, FetchError};
use crate::store::Store;
use crate::sync::lock;
use crate::upload::push::{parallel_each, Progress};
pub use journal::Journal;

/// Why one entry (or one box's listing) did not settle.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// A listing of the previous owner could not be had: its entries there are unknown.
    #[error("listing {what} on {url}: {source}")]
    List {
        /// The previous owner.
        url: String,
        /// The listing: `<kind>/` or `<kind>/<hh>/`.
        what: String,
        /// What went wrong.
        source: Box<ClientError>,
    },
    /// The entry could not be fetched from its previous owner, or did not verify.
    #[error("{entry}: fetching it from {url}: {source}")]
    Fetch {
        /// The entry.
        entry: Entry,
        /// The previous owner.
        url: String,
        /// What went wrong.
        source: Box<FetchError>,
    },
    /// Its new owner did not take it.
    #[error("{entry}: {source}")]
    Put {
        /// The entry.
        entry: Entry,
        /// What went wrong.
        source: Box<ClientError>,
    },
    /// Metadata held back because an artifact it names did not reach its new owner.
    #[error("{entry}: held back because artifact {missing} did not move")]
    HeldBack {
        /// The metadata entry.
        entry: Entry,
        /// The artifact it names.
        missing: Entry,
    },
    /// The journal could not be written: the entry moved, but a re-run will move it again.
    #[error("{entry}: recording it in the journal: {source}")]
    Journal {
        /// The entry.
        entry: Entry,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What a rebalance did.
#[derive(Debug, Default)]
pub struct RebalanceReport {
    /// Entries sent to their new owner now.
    pub moved: u64,
    /// Their bytes.
    pub moved_bytes: u64,
    /// Entries their new owner already held (the same value).
    pub already_there: u64,
    /// Entries an earlier run settled (from the journal).
    pub settled_before: u64,
    /// Entries listed by their previous owner that were gone when fetched (trimmed meanwhile).
    pub vanished: u64,
    /// Metadata whose new owner holds another value and kept it: `(entry, the box's message)`.
    pub collisions: Vec<(Entry, String)>,
    /// What did not settle, with the reason.
    pub failures: Vec<MoveError>,
}

impl RebalanceReport {
    /// Whether every entry whose owner changed is on its new owner now (collisions count as
    /// settled: the new owner keeps its first value, which is the design).
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One entry to move.
#[derive(Clone, Copy)]
struct Moving {
    entry: Entry,
    /// Its previous owner's client.
    from: usize,
    /// Its new owner, an index in the config's nodes.
    to: usize,
}

/// The digest naming this transition (its moves, by URL), for the journal: a journal of another
/// transition does not count.
pub fn transition_digest(cluster: &Cluster) -> String {
    let config = cluster.config();
    let mut text = String::new();
    for m in config.moves() {
        text.push_str(&format!(
            "{} {} {}\n",
            m.range,
            config.previous_nodes()[m.from].url(),
            config.nodes()[m.to].url()
        ));
    }
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Moves every entry whose owner changed under `cluster`'s config from its previous owner to its
/// new one, `parallelism` at a time, through `scratch` (a store where fetched entries are
/// verified; nothing is named there), skipping what `journal` says is settled and recording what
/// settles. `progress` is called after each entry (from any worker thread).
pub fn rebalance(
    cluster: &Cluster,
    scratch: &Store,
    journal: &Journal,
    parallelism: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> RebalanceReport {
    let report = Mutex::new(RebalanceReport::default());
    let moves = cluster.config().moves();
    let mut to_move = Vec::new();
    for from in moves.iter().map(|m| m.from).collect::<HashSet<_>>() {
        let theirs: Vec<&Move> = moves.iter().filter(|m| m.from == from).collect();
        match listed(cluster.previous_client(from), &theirs) {
            Ok(entries) => {
                to_move.extend(
                    entries
                        .into_iter()
                        .map(|(entry, to)| Moving { entry, from, to }),
                )
            }
            Err(e) => lock(&report).failures.extend(e),
        }
    }
    let before = to_move.len();
    to_move.retain(|m| !journal.settled(&m.entry));
    lock(&report).settled_before = (before - to_move.len()) as u64;
    let (artifacts, metadata): (Vec<Moving>, Vec<Moving>) = to_move
        .into_iter()
        .partition(|m| m.entry.kind == EntryKind::File);

    let total = (artifacts.len() + metadata.len()) as u64;
    let done = AtomicU64::new(0);
    let failed_artifacts = Mutex::new(HashSet::new());
    let record = |moving: &Moving, result: Result<Option<(PutOutcome, u64)>, MoveError>| {
        let entry = moving.entry;
        let settled = match &result {
            Ok(None) => None,
            Ok(Some((PutOutcome::Stored, _))) => Some("moved"),
            Ok(Some((PutOutcome::AlreadyPresent, _))) => Some("there"),
            Ok(Some((PutOutcome::Collision { .. }, _))) => Some("collision"),
            Err(_) => None,
        };
        let recorded = settled.map_or(Ok(()), |outcome| {
            journal
                .record(&entry, outcome)
                .map_err(|source| MoveError::Journal { entry, source })
        });
        let mut report = lock(&report);
        match result {
            Ok(None) => report.vanished += 1,
            Ok(Some((PutOutcome::Stored, bytes))) => {
                report.moved += 1;
                report.moved_bytes += bytes;
            }
            Ok(Some((PutOutcome::AlreadyPresent, _))) => report.already_there += 1,
            Ok(Some((PutOutcome::Collision { message }, _))) => {
                report.collisions.push((entry, message))
            }
            Err(e) => {
                log::warn!("{e}");
                if entry.kind == EntryKind::File {
                    lock(&failed_artifacts).insert(entry.key);
                }
                report.failures.push(e);
            }
        }
        if let Err(e) = recorded {
            report.failures.push(e);
        }
        let failed = report.failures.len() as u64;
        drop(report);
        progress(Progress {
            done: done.fetch_add(1, Ordering::Relaxed) + 1,
            total,
            failed,
        });
    };
    parallel_each(&artifacts, parallelism, |moving| {
        record(moving, move_one(cluster, scratch, moving, &HashSet::new()));
    });
    let failed_artifacts = std::mem::take(&mut *lock(&failed_artifacts));
    parallel_each(&metadata, parallelism, |moving| {
        record(
            moving,
            move_one(cluster, scratch, moving, &failed_artifacts),
        );
    });
    report.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The entries `from` holds in the ranges of `moves` (all of them its own), each with its new
/// owner. Only the shards those ranges meet are listed.
fn listed(from: &NodeClient, moves: &[&Move]) -> Result<Vec<(Entry, usize)>, Vec<MoveError>> {
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    for kind in EntryKind::ALL {
        let shards = match from.list_shards(kind) {
            Ok(shards) => shards,
            Err(source) => {
                failures.push(MoveError::List {
                    url: from.url().to_string(),
                    what: format!("{kind}/"),
                    source: Box::new(source),
                });
                continue;
            }
        };
        for shard in shards {
            let theirs: Vec<&&Move> = moves.iter().filter(|m| meets(&m.range, shard)).collect();
            if theirs.is_empty() {
                continue;
            }
            match from.list(kind, shard) {
                Ok(listing) => entries.extend(listing.into_iter().filter_map(|listed| {
                    let m = theirs.iter().find(|m| m.range.contains(&listed.key))?;
                    Some((
                        Entry {
                            kind,
                            key: listed.key,
                        },
                        m.to,
                    ))
                })),
                Err(source) => failures.push(MoveError::List {
                    url: from.url().to_string(),
                    what: format!("{kind}/{shard}/"),
                    source: Box::new(source),
                }),
            }
        }
    }
    match failures.is_empty() {
        true => Ok(entries),
        false => Err(failures),
    }
}

/// Whether `range` holds any key of `shard`.
fn meets(range: &KeyRange, shard: Shard) -> bool {
    let first = range.first().as_bytes()[0];
    let last = range.last().as_bytes()[0];
    (first..=last).contains(&shard.0)
}

/// Moves one entry: unless its new owner holds it already (artifacts are asked first: their key
/// fixes their bytes), fetches it verified from its previous owner and sends it on. `Ok(None)`:
/// the previous owner no longer holds it. Metadata naming one of `failed_artifacts` is held back.
fn move_one(
    cluster: &Cluster,
    scratch: &Store,
    moving: &Moving,
    failed_artifacts: &HashSet<Key>,
) -> Result<Option<(PutOutcome, u64)>, MoveError> {
    let entry = moving.entry;
    let (from, to) = (
        cluster.previous_client(moving.from),
        &cluster.clients()[moving.to],
    );
    let put_err = |source| MoveError::Put {
        entry,
        source: Box::new(source),
    };
    if entry.kind == EntryKind::File {
        if let Some(held) = to.head(&entry).map_err(put_err)? {
            return Ok(Some((PutOutcome::AlreadyPresent, held.size)));
        }
    }
    let fetch_err = |source| MoveError::Fetch {
        entry,
        url: from.url().to_string(),
        source: Box::new(source),
    };
    let Some(fetched) = fetch_verified(from, scratch, &entry, None, |_| true).map_err(fetch_err)?
    else {
        return Ok(None);
    };
    let verified = fetched.verified;
    if entry.kind != EntryKind::File {
        let bytes = verified
            .read()
            .map_err(|e| fetch_err(FetchError::Local(local_error(scratch, &entry, e))))?;
        if let Ok(metadata) = Metadata::parse(&bytes) {
            if let Some(key) = metadata
                .artifact_keys()
                .find(|k| failed_artifacts.contains(k))
            {
                return Err(MoveError::HeldBack {
                    entry,
                    missing: Entry {
                        kind: EntryKind::File,
                        key,
                    },
                });
            }
        }
    }
    let file = verified
        .open()
        .map_err(|e| fetch_err(FetchError::Local(local_error(scratch, &entry, e))))?;
    let executable = mode_is_executable(verified.stat().mode);
    let outcome = to.put(&entry, &file, executable).map_err(put_err)?;
    Ok(Some((outcome, verified.size())))
}

fn local_error(scratch: &Store, entry: &Entry, error: std::io::Error) -> crate::store::StoreError {
    crate::store::StoreError::io("read back", &scratch.path_of(entry))(error)
}

/// Asks every box that held keys it no longer owns to drop them (`POST /_drop`): for after a
/// rebalance settled every entry. Nodes that left the cluster are not asked (they are to be
/// stopped), nor are S3 buckets, which have no such request: theirs is reported as `Ok(None)`.
pub fn drop_unowned(cluster: &Cluster) -> Vec<Dropped> {
    let config = cluster.config();
    let mut asked = HashSet::new();
    let mut results = Vec::new();
    for m in config.moves() {
        let url = config.previous_nodes()[m.from].url();
        if config.node_by_url(url).is_none() || !asked.insert(m.from) {
            continue;
        }
        let client = cluster.previous_client(m.from);
        let result = match client {
            NodeClient::Box(node) => node.drop_unowned().map(Some),
            NodeClient::S3(_) => Ok(None),
        };
        results.push(Dropped {
            url: client.url().to_string(),
            result,
        });
    }
    results
}

/// What one node dropped ([`drop_unowned`]).
pub struct Dropped {
    /// The node.
    pub url: String,
    /// The entries and bytes it removed; `None` for an S3 bucket, which was not asked (the
    /// objects of keys it no longer owns stay there); or why it could not.
    pub result: Result<Option<(u64, u64)>, ClientError>,
}
