//! The cluster of cache boxes: which box owns which key, and how to reach it. A node may also be
//! a bucket of an S3-compatible object store (`s3`, docs/object-store.md): it answers the same
//! questions through [`node::NodeClient`], the one client type the callers use.
//!
//! There is no replication and no discovery: a static range table, the [`config`], names for
//! every key the one box that owns it. Every party reads the same file and so agrees without
//! talking: the mount sends a fetch or an upload straight to the owner, and a box refuses a key
//! outside its own ranges (HTTP 421) instead of storing it where no client would look. A dead box
//! therefore costs exactly its keys (they become misses that Dune rebuilds), nothing more.
//!
//! The file format is the 2020 `dune-distributed-cache` one, read more strictly: the ranges must
//! cover every key exactly once. See [`config`] and `docs/cluster-config.md`.
//!
//! [`Cluster`] pairs the table with one [`node::NodeClient`] per node (a [`client::BoxClient`],
//! or an [`s3::S3Client`] built on one), sharing one connection pool, so routing a key gives a
//! client ready to use.
//!
//! While a config names the table it replaces (`(previous ...)`, as nodes are added or removed),
//! entries are still moving from their previous owners to their new ones. Every reader then asks
//! through [`Cluster::read`]: a miss at a key's owner is asked of its previous owner (a box or a
//! bucket alike), so no read fails because an entry has not moved yet. Writes go to the owner
//! alone. Three pieces of the client that are not requests live apart: `auth` (why a TLS proxy
//! refused us, in words), `kerberos` (the SPNEGO token a Kerberos proxy asks for) and `listing`
//! (the lines of a shard listing).

mod auth;
pub mod client;
pub mod config;
pub mod health;
mod kerberos;
mod listing;
pub mod node;
pub mod s3;
mod sexp;

use crate::dune::key::{Key, Shard};
use client::{BoxClient, ClientError, ClientOptions};
use config::{ClusterConfig, Node};
use node::NodeClient;

/// The range table and a client for each node in it.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    /// One per node, in the order of `config.nodes()`, then one per node of the previous table
    /// that is not in the config any more (a node leaving the cluster).
    clients: Vec<NodeClient>,
    /// For each node of the previous table, the index of its client in `clients`.
    previous: Vec<usize>,
}

impl Cluster {
    /// Builds the clients (and loads the TLS material) for every node of `config` and of its
    /// previous table, and finds the credentials of its S3 buckets if it has any. Each node's
    /// client has its own connection pool: a pool finds an idle connection to its host by
    /// comparing it with every connection it holds, and one pool for all the boxes of a mount
    /// fetching at full speed held them all (16 each), which cost as much CPU as hashing
    /// what was fetched.
    pub fn new(config: ClusterConfig, options: &ClientOptions) -> Result<Cluster, ClientError> {
        let node_client = |node: &Node| node_client(node, &client::make_agent(options)?);
        let mut clients = config
            .nodes()
            .iter()
            .map(node_client)
            .collect::<Result<Vec<_>, ClientError>>()?;
        let mut previous = Vec::new();
        for node in config.previous_nodes() {
            let index = match config.nodes().iter().position(|n| n.url() == node.url()) {
                Some(current) => current,
                None => {
                    clients.push(node_client(node)?);
                    clients.len() - 1
                }
            };
            previous.push(index);
        }
        Ok(Cluster {
            config,
            clients,
            previous,
        })
    }

    /// Checks that every S3 bucket answers and takes our credentials for reading, and
    /// (`uploads`) whether each honours conditional writes, saying so in the log: a refused
    /// read is an error in words at start-up; a bucket that cannot be reached, or refuses
    /// writes, is only logged (its keys are misses until it comes back, as for a box).
    pub fn check_object_stores(&self, uploads: bool) -> Result<(), ClientError> {
        for client in &self.clients {
            let NodeClient::S3(bucket) = client else {
                continue;
            };
            match bucket.check() {
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => log::warn!("{e}"),
                Ok(()) => {}
            }
            // Credentials that may read but not write serve a mount all the same: said, not
            // refused (each upload is refused, and retried, as for a box).
            if uploads {
                if let Err(e) = bucket.conditional_writes() {
                    log::warn!("{e}");
                }
            }
        }
        Ok(())
    }

    /// The range table.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The client of the node that owns `key`.
    pub fn owner(&self, key: &Key) -> &NodeClient {
        &self.clients[self.config.owner_index(key)]
    }

    /// Every node's client, in config order.
    pub fn clients(&self) -> &[NodeClient] {
        &self.clients[..self.config.nodes().len()]
    }

    /// Every node that may hold entries: those of the config, then those of the previous table
    /// that left it.
    pub fn every_client(&self) -> &[NodeClient] {
        &self.clients
    }

    /// The client of the node at `index` in the config's previous table.
    pub fn previous_client(&self, index: usize) -> &NodeClient {
        &self.clients[self.previous[index]]
    }

    /// The client of the node that owned `key` under the previous table, if the config names
    /// one and that node is not `key`'s owner now: where `key` may still be, not yet moved.
    pub fn previous_owner(&self, key: &Key) -> Option<&NodeClient> {
        let index = self.previous[self.config.previous_owner_index(key)?];
        (index != self.config.owner_index(key)).then(|| &self.clients[index])
    }

    /// Reads `key` with `ask`, from its owner and, while entries move, from its previous owner:
    /// a miss (`Ok(None)`) or an unavailable owner is asked of the previous owner, and if that
    /// one does not hold it either, of the owner once more (the entry may have moved in
    /// between, and the previous owner dropped it). An answer from the previous owner wins; else
    /// the owner's last answer stands, unless only the previous owner failed, whose error then
    /// says why the key cannot be had. Any other error of the owner (a bad copy) is final.
    pub fn read<T, E: Unavailable>(
        &self,
        key: &Key,
        mut ask: impl FnMut(&NodeClient) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let owner = self.owner(key);
        let Some(previous) = self.previous_owner(key) else {
            return ask(owner);
        };
        let first = match ask(owner) {
            Ok(None) => None,
            Err(e) if e.is_box_unavailable() => Some(e),
            answer => return answer,
        };
        match (ask(previous), first) {
            (Ok(Some(found)), _) => Ok(Some(found)),
            (Ok(None), None) => ask(owner),
            (Ok(None), Some(owner_failed)) => Err(owner_failed),
            (Err(previous_failed), None) => Err(previous_failed),
            (Err(_), Some(owner_failed)) => Err(owner_failed),
        }
    }

    /// The clients of the nodes whose ranges meet `shard`, under the config or its previous
    /// table: a shard's keys can live on several nodes, and only these can hold any of them.
    pub fn clients_for_shard(&self, shard: Shard) -> Vec<&NodeClient> {
        let mut first = [0u8; 16];
        first[0] = shard.0;
        let mut last = [0xffu8; 16];
        last[0] = shard.0;
        let (first, last) = (Key::from_bytes(first), Key::from_bytes(last));
        let meets = |node: &Node| {
            node.ranges()
                .iter()
                .any(|r| r.first() <= last && r.last() >= first)
        };
        let now = (0..self.config.nodes().len()).filter(|&i| meets(&self.config.nodes()[i]));
        let before = (self.config.previous_nodes().iter().zip(&self.previous))
            .filter(|(node, _)| meets(node))
            .map(|(_, &i)| i);
        let mut indices: Vec<usize> = now.chain(before).collect();
        indices.sort_unstable();
        indices.dedup();
        indices.into_iter().map(|i| &self.clients[i]).collect()
    }
}

/// The client of one node: a box's, or a bucket's with the credentials found for it.
fn node_client(node: &Node, agent: &client::Agent) -> Result<NodeClient, ClientError> {
    let Some(bucket) = node.s3() else {
        return Ok(NodeClient::Box(BoxClient::new(
            node.url().as_str(),
            agent.clone(),
        )));
    };
    let found = s3::credentials::find(|name| std::env::var(name).ok()).map_err(|cause| {
        ClientError::NoCredentials {
            url: node.url().to_string(),
            cause,
        }
    })?;
    let client = s3::S3Client::new(bucket, node.url().as_str(), agent.clone(), found);
    Ok(NodeClient::S3(Box::new(client)))
}

/// An error that may mean "the box is unavailable" (a miss for a reader) rather than a problem
/// with the entry: what [`Cluster::read`] asks another box about.
pub trait Unavailable {
    /// Whether the box could not be reached or failed.
    fn is_box_unavailable(&self) -> bool;
}

impl Unavailable for ClientError {
    fn is_box_unavailable(&self) -> bool {
        ClientError::is_box_unavailable(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A grown cluster (box d takes keys from c), and a key that moved.
    fn grown() -> (Cluster, Key) {
        let config = ClusterConfig::parse(
            "(lang dune-distributed-cache 1.0)
             (node (hostname http://a) (range 0x00 0x7f))
             (node (hostname http://d) (range 0x80 0xff))
             (previous
               (node (hostname http://a) (range 0x00 0x3f))
               (node (hostname http://c) (range 0x40 0xff)))",
        )
        .unwrap();
        let cluster = Cluster::new(config, &ClientOptions::default()).unwrap();
        (cluster, "90000000000000000000000000000000".parse().unwrap())
    }

    fn down(url: &str) -> ClientError {
        ClientError::Transport {
            url: url.into(),
            what: "GET".into(),
            cause: "refused".into(),
        }
    }

    /// A box's answer in these tests: a value, none, or down (`Err`).
    type Answer = Result<Option<u8>, ()>;

    /// Reads with boxes answering from `answers` (URL to a list of answers, taken in turn), and
    /// returns the result and the boxes asked, in order.
    fn read_with(
        cluster: &Cluster,
        key: &Key,
        answers: &[(&str, &[Answer])],
    ) -> (Result<Option<u8>, String>, Vec<String>) {
        let asked = RefCell::new(Vec::new());
        let result = cluster.read(key, |client| {
            let url = client.url().to_string();
            let turn = asked.borrow().iter().filter(|u| **u == url).count();
            asked.borrow_mut().push(url.clone());
            let (_, theirs) = answers
                .iter()
                .find(|(u, _)| *u == url)
                .expect("an asked box");
            theirs[turn].map_err(|_| down(&url))
        });
        (result.map_err(|e| e.to_string()), asked.into_inner())
    }

    #[test]
    fn a_read_falls_back_to_the_previous_owner_only_while_entries_move() {
        let (cluster, moved) = grown();
        assert_eq!(cluster.previous_owner(&moved).unwrap().url(), "http://c");
        assert_eq!(cluster.every_client().len(), 3);
        assert_eq!(cluster.clients().len(), 2);
        // A key whose owner did not change has no previous owner to ask.
        let stayed: Key = "10000000000000000000000000000000".parse().unwrap();
        assert!(cluster.previous_owner(&stayed).is_none());
        let (result, asked) = read_with(&cluster, &stayed, &[("http://a", &[Ok(None)])]);
        assert_eq!((result, asked), (Ok(None), vec!["http://a".to_string()]));

        // Found at the owner: nobody else is asked.
        let (result, asked) = read_with(&cluster, &moved, &[("http://d", &[Ok(Some(1))])]);
        assert_eq!((result, asked.len()), (Ok(Some(1)), 1));
        // Not moved yet: the previous owner answers.
        let (result, asked) = read_with(
            &cluster,
            &moved,
            &[("http://d", &[Ok(None)]), ("http://c", &[Ok(Some(2))])],
        );
        assert_eq!(
            (result, asked),
            (Ok(Some(2)), vec!["http://d".into(), "http://c".into()])
        );
        // Moved (and dropped) between the two questions: the owner, asked again, has it.
        let (result, asked) = read_with(
            &cluster,
            &moved,
            &[
                ("http://d", &[Ok(None), Ok(Some(3))]),
                ("http://c", &[Ok(None)]),
            ],
        );
        assert_eq!((result, asked.len()), (Ok(Some(3)), 3));
        // The owner down: the previous owner still serves; if it lacks the key, the owner's
        // failure is what the reader is told.
        let (result, _) = read_with(
            &cluster,
            &moved,
            &[("http://d", &[Err(())]), ("http://c", &[Ok(Some(4))])],
        );
        assert_eq!(result, Ok(Some(4)));
        let (result, asked) = read_with(
            &cluster,
            &moved,
            &[("http://d", &[Err(())]), ("http://c", &[Ok(None)])],
        );
        assert!(result.unwrap_err().contains("http://d"));
        assert_eq!(asked.len(), 2);
        // The previous owner down and the owner without it: the key cannot be had, and the
        // reader is told why (it may be on the box that is down).
        let (result, _) = read_with(
            &cluster,
            &moved,
            &[("http://d", &[Ok(None)]), ("http://c", &[Err(())])],
        );
        assert!(result.unwrap_err().contains("http://c"));
    }

    #[test]
    fn a_shard_is_listed_by_its_owners_and_previous_owners() {
        let (cluster, _) = grown();
        let urls = |shard: u8| -> Vec<String> {
            cluster
                .clients_for_shard(Shard(shard))
                .iter()
                .map(|c| c.url().to_string())
                .collect()
        };
        assert_eq!(urls(0x10), ["http://a"]);
        assert_eq!(urls(0x50), ["http://a", "http://c"]);
        assert_eq!(urls(0x90), ["http://d", "http://c"]);
    }
}
