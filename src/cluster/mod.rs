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
//! client ready to use. Two pieces of the client that are not
//! requests live apart: `auth` (why a TLS proxy refused us, in words) and `listing` (the lines
//! of a shard listing).

mod auth;
pub mod client;
pub mod config;
pub mod health;
mod listing;
pub mod node;
pub mod s3;
mod sexp;

use crate::dune::key::{Key, Shard};
use client::{BoxClient, ClientError, ClientOptions};
use config::ClusterConfig;
use node::NodeClient;

/// The range table and a client for each box in it.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    /// One per node, in the order of `config.nodes()`.
    clients: Vec<NodeClient>,
}

impl Cluster {
    /// Builds the clients (and loads the TLS material) for every node of `config`, and finds
    /// the credentials of its S3 buckets if it has any.
    pub fn new(config: ClusterConfig, options: &ClientOptions) -> Result<Cluster, ClientError> {
        let agent = client::make_agent(options)?;
        let clients = config
            .nodes()
            .iter()
            .map(|node| match node.s3() {
                None => Ok(NodeClient::Box(BoxClient::new(
                    node.url().as_str(),
                    agent.clone(),
                ))),
                Some(bucket) => {
                    let found = s3::credentials::find(|name| std::env::var(name).ok()).map_err(
                        |cause| ClientError::NoCredentials {
                            url: node.url().to_string(),
                            cause,
                        },
                    )?;
                    let client =
                        s3::S3Client::new(bucket, node.url().as_str(), agent.clone(), found);
                    Ok(NodeClient::S3(Box::new(client)))
                }
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Cluster { config, clients })
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

    /// The client of the box that owns `key`.
    pub fn owner(&self, key: &Key) -> &NodeClient {
        &self.clients[self.config.owner_index(key)]
    }

    /// Every box's client, in config order.
    pub fn clients(&self) -> &[NodeClient] {
        &self.clients
    }

    /// The clients of the boxes whose ranges meet `shard`: a shard's keys can live on several
    /// boxes, and only these can hold any of them.
    pub fn clients_for_shard(&self, shard: Shard) -> Vec<&NodeClient> {
        let mut first = [0u8; 16];
        first[0] = shard.0;
        let mut last = [0xffu8; 16];
        last[0] = shard.0;
        let (first, last) = (Key::from_bytes(first), Key::from_bytes(last));
        self.config
            .nodes()
            .iter()
            .zip(&self.clients)
            .filter(|(node, _)| {
                node.ranges()
                    .iter()
                    .any(|r| r.first() <= last && r.last() >= first)
            })
            .map(|(_, client)| client)
            .collect()
    }
}
