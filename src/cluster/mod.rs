//! The cluster of cache boxes: which box owns which key, and how to reach it.
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
//! [`Cluster`] pairs the table with one [`client::BoxClient`] per box, sharing one connection
//! pool, so routing a key gives a client ready to use.
//!
//! While a config names the table it replaces (`(previous ...)`, as boxes are added or removed),
//! entries are still moving from their previous owners to their new ones. Every reader then asks
//! through [`Cluster::read`]: a miss at a key's owner is asked of its previous owner, so no read
//! fails because an entry has not moved yet. Writes go to the owner alone. Three pieces of the
//! client that are not requests live apart: `auth` (why a TLS proxy refused us, in words),
//! `kerberos` (the SPNEGO token a Kerberos proxy asks for) and `listing` (the lines of a shard
//! listing).

mod auth;
pub mod client;
pub mod config;
pub mod health;
mod kerberos;
mod listing;
mod sexp;

use crate::dune::key::{Key, Shard};
use client::{BoxClient, ClientError, ClientOptions};
use config::{ClusterConfig, Node};

/// The range table and a client for each box in it.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    /// One per node, in the order of `config.nodes()`, then one per node of the previous table
    /// that is not in the config any more (a box leaving the cluster).
    clients: Vec<BoxClient>,
    /// For each node of the previous table, the index of its client in `clients`.
    previous: Vec<usize>,
}

impl Cluster {
    /// Builds the clients (and loads the TLS material) for every box of `config`.
    pub fn new(config: ClusterConfig, options: &ClientOptions) -> Result<Cluster, ClientError> {
        let agent = client::make_agent(options)?;
        let mut clients: Vec<BoxClient> = config
            .nodes()
            .iter()
            .map(|node| BoxClient::new(node.url().as_str(), agent.clone()))
            .collect();
        let mut previous = Vec::new();
        for node in config.previous_nodes() {
            let current = config.nodes().iter().position(|n| n.url() == node.url());
            previous.push(current.unwrap_or_else(|| {
                clients.push(BoxClient::new(node.url().as_str(), agent.clone()));
                clients.len() - 1
            }));
        }
        Ok(Cluster {
            config,
            clients,
            previous,
        })
    }

    /// The range table.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The client of the box that owns `key`.
    pub fn owner(&self, key: &Key) -> &BoxClient {
        &self.clients[self.config.owner_index(key)]
    }

    /// Every box's client, in config order.
    pub fn clients(&self) -> &[BoxClient] {
        &self.clients[..self.config.nodes().len()]
    }

    /// Every box that may hold entries: those of the config, then those of the previous table
    /// that left it.
    pub fn every_client(&self) -> &[BoxClient] {
        &self.clients
    }

    /// The client of the node at `index` in the config's previous table.
    pub fn previous_client(&self, index: usize) -> &BoxClient {
        &self.clients[self.previous[index]]
    }

    /// The client of the box that owned `key` under the previous table, if the config names
    /// one and that box is not `key`'s owner now: where `key` may still be, not yet moved.
    pub fn previous_owner(&self, key: &Key) -> Option<&BoxClient> {
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
        mut ask: impl FnMut(&BoxClient) -> Result<Option<T>, E>,
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

    /// The clients of the boxes whose ranges meet `shard`, under the config or its previous
    /// table: a shard's keys can live on several boxes, and only these can hold any of them.
    pub fn clients_for_shard(&self, shard: Shard) -> Vec<&BoxClient> {
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
