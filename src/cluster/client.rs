//! The HTTP client for one cache box: pooled connections, timeouts, retries, fail-fast, and
//! verification of everything fetched.
//!
//! The client never trusts a box. Fetched artifacts stream into a [`PendingEntry`] of the local
//! store, which verifies them against their key before they get a name; metadata must parse. A box
//! may be a dumb WebDAV server, or buggy, or lying: the worst it can do is cause a miss.
//!
//! Every request is bounded in time (connect, response, and each read and write), and a box that
//! fails at the transport level is marked down ([`health`](super::health)) so the next requests
//! fail at once instead of each waiting for its own timeout. Idempotent requests (GET, HEAD,
//! listings) are retried once, after a short pause, when a pooled connection turns out to be dead;
//! timeouts are never retried, since retrying a stalled box only doubles the stall.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::health::{Health, HealthState};
use crate::dune::key::{Key, Shard};
use crate::dune::layout::{Entry, EntryKind};
use crate::store::{InstallOutcome, Store, StoreError};

/// Timeouts and TLS settings shared by the clients of all boxes of a cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response headers, and the longest a
    /// transfer may stall between two reads or writes.
    pub io_timeout: Duration,
    /// PEM file of the CA(s) that sign the boxes' (or their proxy's) certificates; `None` uses the
    /// standard web roots.
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key, for proxies that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Default for ClientOptions {
    /// Generous enough for a loaded box on a LAN, short enough that a build never hangs on one:
    /// a dead box costs at most one connect timeout before it is marked down.
    fn default() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
            ca_file: None,
            client_cert: None,
        }
    }
}

/// A failed request to a box, with the box and the entry concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Not tried: the box failed recently and is in its back-off period.
    #[error("box {url} is down (retrying in {}ms): {cause}", retry_in.as_millis())]
    BoxDown {
        /// The box.
        url: String,
        /// Time until the next probe.
        retry_in: Duration,
        /// The failure that put it down.
        cause: String,
    },
    /// The request failed in transit: refused, reset, timed out, cut short, TLS refused.
    #[error("box {url}: {what}: {cause}")]
    Transport {
        /// The box.
        url: String,
        /// The request, e.g. `GET files/v4/ab/ab12...`.
        what: String,
        /// What went wrong, in words.
        cause: String,
    },
    /// The box answered with a status this request does not expect.
    #[error("box {url}: {what}: HTTP {status}: {message}")]
    Status {
        /// The box.
        url: String,
        /// The request.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The first line of the box's explanation, if any.
        message: String,
    },
    /// The box sent bytes that are not the entry: the wrong content for an artifact's key, or
    /// metadata that does not parse. Nothing was installed.
    #[error("box {url} sent a bad copy of {entry}: {cause}")]
    BadCopy {
        /// The box.
        url: String,
        /// The entry requested.
        entry: Entry,
        /// What verification found.
        cause: String,
    },
    /// The local side failed (disk full, unreadable file): not the box's fault.
    #[error(transparent)]
    Local(#[from] StoreError),
    /// The client's TLS material could not be loaded.
    #[error("cannot load TLS material {}: {cause}", path.display())]
    Tls {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
}

impl ClientError {
    /// Whether this failure means "the box is unavailable" (a miss for the mount) rather than a
    /// problem with the entry or the local side.
    pub fn is_box_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::BoxDown { .. } | ClientError::Transport { .. }
        ) || matches!(self, ClientError::Status { status, .. } if *status >= 500)
    }
}

/// What `HEAD` tells about an entry a box holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Its size in bytes.
    pub size: u64,
    /// The executable bit, if the box says (a dumb box does not; verification recovers it).
    pub executable: Option<bool>,
}

/// One line of a shard listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    /// The key.
    pub key: Key,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the artifact is executable.
    pub executable: bool,
}

/// What a `PUT` achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The box stored it (201).
    Stored,
    /// The box already had it (200).
    AlreadyPresent,
    /// The box holds a different metadata value for this rule key (409) and kept it.
    Collision {
        /// The box's explanation.
        message: String,
    },
}

/// The client of one box. Cheap to share between threads; its connection pool and failure state
/// are shared by all requests to that box.
#[derive(Debug)]
pub struct BoxClient {
    url: String,
    agent: ureq::Agent,
    health: Health,
}

/// How much of a body is read per step when streaming into the store.
const CHUNK: usize = 256 * 1024;

/// Longest explanation kept from an error body: enough for a line, not enough to flood a log.
const MAX_MESSAGE: u64 = 4096;

/// Builds the connection pool and TLS configuration shared by the clients of one cluster.
pub fn make_agent(options: &ClientOptions) -> Result<ureq::Agent, ClientError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = &options.ca_file {
        let certs = read_certs(ca)?;
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    if let Some((cert, key)) = &options.client_cert {
        let chain = read_certs(cert)?;
        let pem = std::fs::read(key).map_err(|e| tls_error(key, e.to_string()))?;
        let key_pem = ureq::tls::PrivateKey::from_pem(&pem)
            .map_err(|e| tls_error(key, format!("no private key: {e}")))?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key_pem)));
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.io_timeout))
        .timeout_per_read(Some(options.io_timeout))
        .timeout_per_write(Some(options.io_timeout))
        .max_idle_connections(256)
        .max_idle_connections_per_host(64)
        .user_agent(concat!("dune-cachefs/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build();
    Ok(config.into())
}

fn tls_error(path: &std::path::Path, cause: String) -> ClientError {
    ClientError::Tls {
        path: path.to_path_buf(),
        cause,
    }
}

fn read_certs(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
    let pem = std::fs::read(path).map_err(|e| tls_error(path, e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| tls_error(path, e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file".into()));
    }
    Ok(certs)
}

impl BoxClient {
    /// A client for the box at `url` (scheme, host, port, no trailing slash) using a shared agent.
    pub fn new(url: &str, agent: ureq::Agent) -> BoxClient {
        BoxClient {
            url: url.trim_end_matches('/').to_string(),
            agent,
            health: Health::default(),
        }
    }

    /// The box's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The box's failure state as this process sees it.
    pub fn health(&self) -> HealthState {
        self.health.state()
    }

    /// Whether the box holds `entry`, and its size and mode if so.
    pub fn head(&self, entry: &Entry) -> Result<Option<RemoteEntry>, ClientError> {
        let what = format!("HEAD {entry}");
        let response = self.idempotent(&what, || self.agent.head(self.entry_url(entry)).call())?;
        match response.status() {
            StatusCode::OK => Ok(Some(RemoteEntry {
                size: header_u64(&response, "content-length").ok_or_else(|| {
                    self.status_error(&what, 200, "answer has no Content-Length".into())
                })?,
                executable: header_str(&response, "x-executable").map(|v| v == "1"),
            })),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&what, response)),
        }
    }

    /// Fetches `entry` into `store`: verified (artifact bytes against the key, metadata parsed)
    /// and installed atomically. `Ok(None)` if the box does not hold it.
    pub fn fetch_into(
        &self,
        entry: &Entry,
        store: &Store,
    ) -> Result<Option<InstallOutcome>, ClientError> {
        let what = format!("GET {entry}");
        let response = self.idempotent(&what, || self.agent.get(self.entry_url(entry)).call())?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.unexpected(&what, response)),
        }
        let mut body = response.into_body();
        let mut reader = body.as_reader();
        let mut pending = store.begin(*entry)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.transport_failed(&what, &e.to_string())),
            };
            pending
                .write_chunk(&buf[..n])
                .map_err(|e| self.bad_copy(entry, e))?;
        }
        let outcome = pending.commit().map_err(|e| self.bad_copy(entry, e))?;
        Ok(Some(outcome))
    }

    /// Uploads `entry` from a local file (its bytes are sent with their length).
    pub fn put(
        &self,
        entry: &Entry,
        file: &File,
        executable: bool,
    ) -> Result<PutOutcome, ClientError> {
        let what = format!("PUT {entry}");
        self.admit()?;
        let mut request = self.agent.put(self.entry_url(entry));
        if entry.kind == EntryKind::File {
            request = request.header("x-executable", if executable { "1" } else { "0" });
        }
        let response = match request.send(file) {
            Ok(response) => response,
            Err(e) => return Err(self.transport_failed(&what, &e.to_string())),
        };
        self.health_from_status(response.status());
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(PutOutcome::Stored),
            StatusCode::OK => Ok(PutOutcome::AlreadyPresent),
            StatusCode::CONFLICT => Ok(PutOutcome::Collision {
                message: read_message(response),
            }),
            _ => Err(self.unexpected(&what, response)),
        }
    }

    /// The entries of one kind this box holds in one shard.
    pub fn list(&self, kind: EntryKind, shard: Shard) -> Result<Vec<ListedEntry>, ClientError> {
        let what = format!("GET {kind}/{shard}/");
        let url = format!("{}/{kind}/{shard}/", self.url);
        let response = self.idempotent(&what, || self.agent.get(&url).call())?;
        if response.status() != StatusCode::OK {
            return Err(self.unexpected(&what, response));
        }
        let text = response
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.transport_failed(&what, &e.to_string()))?;
        text.lines()
            .map(|line| {
                parse_listing_line(line, shard).ok_or_else(|| {
                    self.status_error(&what, 200, format!("malformed listing line {line:?}"))
                })
            })
            .collect()
    }

    /// The shards of `kind` in which this box holds entries.
    pub fn list_shards(&self, kind: EntryKind) -> Result<Vec<Shard>, ClientError> {
        let what = format!("GET {kind}/");
        let url = format!("{}/{kind}/", self.url);
        let response = self.idempotent(&what, || self.agent.get(&url).call())?;
        if response.status() != StatusCode::OK {
            return Err(self.unexpected(&what, response));
        }
        let text = response
            .into_body()
            .with_config()
            .limit(4096)
            .read_to_string()
            .map_err(|e| self.transport_failed(&what, &e.to_string()))?;
        text.lines()
            .map(|line| {
                Shard::from_name(line).ok_or_else(|| {
                    self.status_error(&what, 200, format!("malformed shard line {line:?}"))
                })
            })
            .collect()
    }

    /// Sends an idempotent request, retrying once after a pause if the connection failed for a
    /// reason other than a timeout (typically a pooled connection the box had closed).
    fn idempotent(
        &self,
        what: &str,
        send: impl Fn() -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, ClientError> {
        self.admit()?;
        let mut result = send();
        if let Err(e) = &result {
            if !matches!(e, ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed) {
                log::debug!("box {}: {what}: {e}; retrying once", self.url);
                std::thread::sleep(Duration::from_millis(50));
                result = send();
            }
        }
        match result {
            Ok(response) => {
                self.health_from_status(response.status());
                Ok(response)
            }
            Err(e) => Err(self.transport_failed(what, &e.to_string())),
        }
    }

    fn admit(&self) -> Result<(), ClientError> {
        self.health
            .admit(Instant::now())
            .map_err(|refusal| ClientError::BoxDown {
                url: self.url.clone(),
                retry_in: refusal.retry_in,
                cause: refusal.cause,
            })
    }

    /// A gateway error means the proxy in front of the box cannot reach it: the box is down.
    fn health_from_status(&self, status: StatusCode) {
        if matches!(status.as_u16(), 502..=504) {
            self.health
                .record_failure(Instant::now(), format!("proxy answered HTTP {status}"));
        } else {
            self.health.record_success();
        }
    }

    fn transport_failed(&self, what: &str, cause: &str) -> ClientError {
        self.health
            .record_failure(Instant::now(), cause.to_string());
        log::warn!("box {}: {what}: {cause}; marked down", self.url);
        ClientError::Transport {
            url: self.url.clone(),
            what: what.to_string(),
            cause: cause.to_string(),
        }
    }

    fn bad_copy(&self, entry: &Entry, err: StoreError) -> ClientError {
        match err {
            StoreError::KeyMismatch { .. } | StoreError::BadMetadata { .. } => {
                log::error!("box {} sent a bad copy of {entry}: {err}", self.url);
                ClientError::BadCopy {
                    url: self.url.clone(),
                    entry: *entry,
                    cause: err.to_string(),
                }
            }
            local => ClientError::Local(local),
        }
    }

    fn unexpected(&self, what: &str, response: Response<Body>) -> ClientError {
        let status = response.status().as_u16();
        self.status_error(what, status, read_message(response))
    }

    fn status_error(&self, what: &str, status: u16, message: String) -> ClientError {
        ClientError::Status {
            url: self.url.clone(),
            what: what.to_string(),
            status,
            message,
        }
    }

    fn entry_url(&self, entry: &Entry) -> String {
        format!("{}/{}", self.url, entry.relative_path().display())
    }
}

/// The first line of an error body, bounded.
fn read_message(response: Response<Body>) -> String {
    response
        .into_body()
        .with_config()
        .limit(MAX_MESSAGE)
        .lossy_utf8(true)
        .read_to_string()
        .map(|s| s.lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn header_str<'r>(response: &'r Response<Body>, name: &str) -> Option<&'r str> {
    response.headers().get(name)?.to_str().ok()
}

fn header_u64(response: &Response<Body>, name: &str) -> Option<u64> {
    header_str(response, name)?.parse().ok()
}

/// Parses `<key> <size> <0|1>`; the key must belong to the shard listed.
fn parse_listing_line(line: &str, shard: Shard) -> Option<ListedEntry> {
    let mut fields = line.split(' ');
    let key: Key = fields.next()?.parse().ok()?;
    let size = fields.next()?.parse().ok()?;
    let executable = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    (fields.next().is_none() && key.shard() == shard).then_some(ListedEntry {
        key,
        size,
        executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines() {
        let shard = Shard(0xab);
        let line = "ab23456789abcdef0123456789abcdef 123 1";
        assert_eq!(
            parse_listing_line(line, shard),
            Some(ListedEntry {
                key: "ab23456789abcdef0123456789abcdef".parse().unwrap(),
                size: 123,
                executable: true
            })
        );
        for bad in [
            "",
            "ab23456789abcdef0123456789abcdef 123",
            "ab23456789abcdef0123456789abcdef 123 2",
            "ab23456789abcdef0123456789abcdef -1 0",
            "ab23456789abcdef0123456789abcdef 1 0 extra",
            "cd23456789abcdef0123456789abcdef 1 0",
        ] {
            assert_eq!(parse_listing_line(bad, shard), None, "{bad:?}");
        }
    }
}
