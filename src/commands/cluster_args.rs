//! The arguments every command that talks to the nodes (boxes or S3 buckets) shares: the cluster config and TLS overrides.

use std::path::PathBuf;

use anyhow::Context;
use dune_cachefs::cluster::client::ClientOptions;
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::Cluster;

/// How to reach the boxes.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// The cluster config (the 2020 `dune-distributed-cache` format; see docs/cluster-config.md).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How to reach the boxes, for commands that can also work without them.
#[derive(clap::Args)]
pub struct OptionalClusterArgs {
    /// The cluster config; without it only the local store is presented.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS settings that override the config's.
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM file of the CA that signs the boxes' certificates (overrides the config's `ca_file`).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate for a proxy that requires one (with --client-key).
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ClusterArgs {
    /// Loads the config and builds one client per node (see [`TlsArgs::connect`]).
    pub fn connect(&self, uploads: bool) -> anyhow::Result<Cluster> {
        self.tls.connect(&self.config, uploads)
    }

    /// The cluster config's path.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }
}

impl OptionalClusterArgs {
    /// Loads the config and builds one client per node, if a config was given.
    pub fn connect(&self, uploads: bool) -> anyhow::Result<Option<Cluster>> {
        self.config
            .as_ref()
            .map(|config| self.tls.connect(config, uploads))
            .transpose()
    }
}

impl TlsArgs {
    /// Loads the config and builds one client per node; an S3 bucket that refuses our
    /// credentials is refused here, in words, and (`uploads`) each bucket's support of
    /// conditional writes is found out and logged (`Cluster::check_object_stores`).
    fn connect(&self, config_path: &std::path::Path, uploads: bool) -> anyhow::Result<Cluster> {
        let config = ClusterConfig::load(config_path)?;
        let mut options = ClientOptions::default();
        if let Some(timeout) = config.timeout() {
            options.io_timeout = timeout;
        }
        options.ca_file = self
            .ca_file
            .clone()
            .or_else(|| config.ca_file().map(PathBuf::from));
        options.client_cert = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => config
                .client_identity()
                .map(|id| (id.cert.clone(), id.key.clone())),
        };
        let cluster = Cluster::new(config, &options)
            .with_context(|| format!("setting up the boxes of {}", config_path.display()))?;
        cluster
            .check_object_stores(uploads)
            .with_context(|| format!("checking the S3 buckets of {}", config_path.display()))?;
        Ok(cluster)
    }
}
