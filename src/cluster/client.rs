//! The HTTP client for one cache box: pooled connections, timeouts, retries, fail-fast, and
//! verification of everything fetched.
//!
//! The client never trusts a box, and checks nothing of what it sends: it streams a body into a
//! sink it does not know ([`BoxClient::fetch`]), and the sink decides (the store's pending entry,
//! which verifies artifacts against their key and parses metadata: see [`crate::fetch`]). A box
//! may be a dumb WebDAV server, or buggy, or lying: the worst it can do is cause a miss.
//!
//! Every request is bounded in time (connect, response, and each read and write), and a box that
//! fails at the transport level is marked down ([`health`](super::health)) so the next requests
//! fail at once instead of each waiting for its own timeout. Idempotent requests (GET, HEAD,
//! listings) are retried once, after a short pause, when a pooled connection turns out to be dead;
//! timeouts are never retried, since retrying a stalled box only doubles the stall.
//!
//! Boxes behind a TLS reverse proxy (docs/deployment.md) can refuse us for our certificate, and we
//! can refuse theirs. Both surface deep in a TLS library or as a proxy's HTML error page; they are
//! turned into [`ClientError::Authentication`], which says in words which certificate is wrong and
//! what to set (the `auth` module), since nothing changes until the config does.
//!
//! A proxy that authenticates with Kerberos answers `401 WWW-Authenticate: Negotiate`. Every
//! request goes through one place, `BoxClient::authorized`, which then sends it again with a
//! token from the user's credential cache (the `kerberos` module), and from then on sends a fresh
//! token with every request to that box. No ticket, an expired one, or a refused one is an
//! [`ClientError::Authentication`] too, and marks the box down with the reason until a probe
//! finds a ticket again (`kinit`): no remount is needed.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ureq::http::{Response, StatusCode};
use ureq::{Body, RequestBuilder};

pub use super::auth::AuthFailure;
use super::auth::{auth_failure_in_error_page, auth_failure_of, CertFiles};
use super::health::{Health, HealthState};
use super::kerberos::{self, KerberosFailure};
use super::listing::parse_listing_line;
pub use super::listing::ListedEntry;
use crate::dune::key::Shard;
use crate::dune::layout::{Entry, EntryKind};

/// The headers of the box protocol the client reads or sends.
const X_BOX: &str = "x-dune-cachefs-box";
const X_NEXT: &str = "x-dune-cachefs-next";
const X_AHEAD: &str = "x-dune-cachefs-ahead";

/// Why a [`BoxClient::fetch`] stopped: the box failed, or the sink refused a chunk.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The request failed, or the body was cut short.
    Box(ClientError),
    /// The sink refused the bytes, with its reason.
    Sink(E),
}

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
    /// The client's TLS material could not be loaded.
    #[error("cannot load TLS material {}: {cause}", path.display())]
    Tls {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// The TLS proxy in front of the box refused our client certificate (or its absence), or we
    /// refused the proxy's certificate. A matter of configuration: the box is unusable to this
    /// client until a certificate or the config changes.
    #[error("box {url} {failure}")]
    Authentication {
        /// The box.
        url: String,
        /// Which certificate is wrong, and what to do about it.
        failure: AuthFailure,
    },
    /// An object store refused our credentials or what they allow (wrong, expired, or not
    /// permitted): the bucket is unusable to this client until the credentials change.
    #[error("S3 bucket {url} refused {what}: {reason}")]
    Refused {
        /// The bucket.
        url: String,
        /// The request.
        what: String,
        /// The store's reason and what to check, in words.
        reason: String,
    },
    /// No credentials for an S3 bucket could be found where the AWS tools keep them.
    #[error("S3 bucket {url}: {cause}")]
    NoCredentials {
        /// The bucket.
        url: String,
        /// Where we looked, and what to set.
        cause: String,
    },
}

impl ClientError {
    /// Whether this failure means "the box is unavailable" (a miss for the mount) rather than a
    /// problem with the entry or the local side.
    pub fn is_box_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::BoxDown { .. }
                | ClientError::Transport { .. }
                | ClientError::Authentication { .. }
                | ClientError::Refused { .. }
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

/// The connection pool and TLS configuration shared by the clients of one cluster, with the
/// files it was built from (named when a certificate is refused). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Agent {
    http: ureq::Agent,
    files: CertFiles,
}

/// The client of one box. Cheap to share between threads; its connection pool and failure state
/// are shared by all requests to that box.
#[derive(Debug)]
pub struct BoxClient {
    url: String,
    agent: Agent,
    health: Health,
    /// Whether the box answered as a `dune-cachefs box` (not a dumb WebDAV server): only such a
    /// box keeps hints, so only it is sent them.
    keeps_hints: std::sync::atomic::AtomicBool,
    /// Whether the box has answered a request that tells its kind yet.
    kind_known: std::sync::atomic::AtomicBool,
    /// Whether the box's proxy has asked for Kerberos (`401 WWW-Authenticate: Negotiate`): every
    /// request then carries a token.
    negotiates: std::sync::atomic::AtomicBool,
}

/// How much of a body is read per step when streaming it into a sink.
const CHUNK: usize = 256 * 1024;

thread_local! {
    /// Each fetching thread's one read buffer: a mount fetches thousands of small entries, and a
    /// fresh zeroed buffer for each cost more than their bytes.
    static CHUNK_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; CHUNK]);
}

/// Longest error body read for its explanation: enough for a line or a proxy's error page, not
/// enough to flood a log.
const MAX_MESSAGE: u64 = 4096;

/// Builds the connection pool and TLS configuration shared by the clients of one cluster.
pub fn make_agent(options: &ClientOptions) -> Result<Agent, ClientError> {
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
    Ok(Agent {
        http: config.into(),
        files: CertFiles {
            ca_file: options.ca_file.clone(),
            client_cert: options.client_cert.as_ref().map(|(cert, _)| cert.clone()),
        },
    })
}

fn tls_error(path: &Path, cause: String) -> ClientError {
    ClientError::Tls {
        path: path.to_path_buf(),
        cause,
    }
}

fn read_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ClientError> {
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
    pub fn new(url: &str, agent: Agent) -> BoxClient {
        BoxClient {
            url: url.trim_end_matches('/').to_string(),
            agent,
            health: Health::default(),
            keeps_hints: std::sync::atomic::AtomicBool::new(false),
            kind_known: std::sync::atomic::AtomicBool::new(false),
            negotiates: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the box may keep hints: it answered as a `dune-cachefs box`, or has not answered
    /// yet.
    pub fn may_keep_hints(&self) -> bool {
        self.keeps_hints() || !self.kind_known.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the box has shown it keeps hints (it answered as a `dune-cachefs box`).
    pub fn keeps_hints(&self) -> bool {
        self.keeps_hints.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The box's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool requests are sent through (for clients of other kinds of node built on this one).
    pub(super) fn http(&self) -> &ureq::Agent {
        &self.agent.http
    }

    /// Marks the box down for `cause` (a refusal that nothing but a change of configuration or
    /// credentials will lift), so the next requests fail at once and say why.
    pub(super) fn mark_down(&self, cause: String) {
        self.health.record_failure(Instant::now(), cause);
    }

    /// The box's failure state as this process sees it.
    pub fn health(&self) -> HealthState {
        self.health.state()
    }

    /// Whether the box holds `entry`, and its size and mode if so.
    pub fn head(&self, entry: &Entry) -> Result<Option<RemoteEntry>, ClientError> {
        let what = format!("HEAD {entry}");
        let url = self.entry_url(entry);
        let response = self.idempotent(&what, |auth| {
            with_authorization(self.agent.http.head(&url), auth).call()
        })?;
        self.note_kind(&response);
        match response.status() {
            StatusCode::OK => Ok(Some(RemoteEntry {
                size: header_u64(&response, "content-length").ok_or_else(|| {
                    self.status_error(&what, 200, "answer has no Content-Length".into())
                })?,
                executable: header_str(&response, "x-executable").map(|v| v == "1"),
            })),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::BAD_REQUEST => Err(self.explain_bad_head(&what, &url)),
            _ => Err(self.unexpected(&what, response)),
        }
    }

    /// An answer to `HEAD` has no body to say why it is a 400 (a malformed path, or a proxy
    /// refusing our certificate): asks again with `GET`, whose answer has one.
    fn explain_bad_head(&self, what: &str, url: &str) -> ClientError {
        match self.authorized(|auth| with_authorization(self.agent.http.get(url), auth).call()) {
            Ok(Ok(response)) if response.status() == StatusCode::BAD_REQUEST => {
                self.unexpected(what, response)
            }
            _ => self.status_error(what, 400, String::new()),
        }
    }

    /// Streams `entry`'s body from the box into `sink`, chunk by chunk as it arrives. `Ok(None)`:
    /// the box does not hold it; else the rules its hint says come next (a rule's metadata only;
    /// read leniently, see [`crate::hints::parse_lenient`]). The client checks nothing of the
    /// bytes; a sink that refuses one (a wrong byte for the key, a full disk) stops the transfer
    /// with its own error, [`StreamError::Sink`]. A fetch `ahead` of the mount's user (a
    /// prefetch) says so, and the box counts it apart.
    pub fn fetch<E>(
        &self,
        entry: &Entry,
        ahead: bool,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<Vec<Entry>>, StreamError<E>> {
        let what = format!("GET {entry}");
        let response = self
            .idempotent(&what, |auth| {
                let request = with_authorization(self.agent.http.get(self.entry_url(entry)), auth);
                match ahead {
                    true => request.header(X_AHEAD, "1").call(),
                    false => request.call(),
                }
            })
            .map_err(StreamError::Box)?;
        self.note_kind(&response);
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(StreamError::Box(self.unexpected(&what, response))),
        }
        let next = header_str(&response, X_NEXT).map_or_else(Vec::new, crate::hints::parse_lenient);
        self.stream_body(&what, response, sink)?;
        Ok(Some(next))
    }

    /// Streams a response's body into `sink`, chunk by chunk as it arrives; a body cut short is
    /// a transport failure (the box is marked down).
    pub(super) fn stream_body<E>(
        &self,
        what: &str,
        response: Response<Body>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), StreamError<E>> {
        let mut body = response.into_body();
        let mut reader = body.as_reader();
        CHUNK_BUFFER.with_borrow_mut(|buf| loop {
            let n = match reader.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StreamError::Box(
                        self.transport_failed(what, &e.to_string()),
                    ))
                }
            };
            sink(&buf[..n]).map_err(StreamError::Sink)?;
        })
    }

    /// Notes whether the box answered as a `dune-cachefs box` (which keeps hints).
    fn note_kind(&self, response: &Response<Body>) {
        self.kind_known
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if response.headers().contains_key(X_BOX) {
            self.keeps_hints
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The rules the box's hint for a rule's metadata `entry` says come next (read leniently:
    /// the box may lie), or `None` if it keeps none for it. Asked ahead of Dune.
    pub fn get_hint(&self, entry: &Entry) -> Result<Option<Vec<Entry>>, ClientError> {
        let what = format!("GET hint of {entry}");
        let url = format!("{}/_hints/{}", self.url, entry.relative_path().display());
        let response = self.idempotent(&what, |auth| {
            with_authorization(self.agent.http.get(&url), auth)
                .header(X_AHEAD, "1")
                .call()
        })?;
        self.note_kind(&response);
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let text = response
                    .into_body()
                    .with_config()
                    .limit(crate::hints::MAX_BODY as u64)
                    .read_to_string()
                    .map_err(|e| self.transport_failed(&what, &e.to_string()))?;
                Ok(Some(crate::hints::parse_lenient(&text)))
            }
            _ => Err(self.unexpected(&what, response)),
        }
    }

    /// Replaces the box's hint for a rule's metadata `entry`: the rules that came `next`.
    pub fn put_hint(&self, entry: &Entry, next: &[Entry]) -> Result<(), ClientError> {
        let what = format!("PUT hint of {entry}");
        self.admit()?;
        let url = format!("{}/_hints/{}", self.url, entry.relative_path().display());
        let body = crate::hints::body(next);
        let response = match self.authorized(|auth| {
            with_authorization(self.agent.http.put(&url), auth).send(body.as_bytes())
        })? {
            Ok(response) => response,
            Err(e) => return Err(self.failed(&what, &e)),
        };
        self.health_from_status(response.status());
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::CREATED => Ok(()),
            _ => Err(self.unexpected(&what, response)),
        }
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
        let url = self.entry_url(entry);
        let response = match self.authorized(|auth| {
            // A request sent again (with a token) sends the whole file again.
            let mut body = file;
            body.seek(io::SeekFrom::Start(0))?;
            let mut request = with_authorization(self.agent.http.put(&url), auth);
            if entry.kind == EntryKind::File {
                request = request.header("x-executable", if executable { "1" } else { "0" });
            }
            request.send(body)
        })? {
            Ok(response) => response,
            Err(e) => return Err(self.failed(&what, &e)),
        };
        self.note_kind(&response);
        self.health_from_status(response.status());
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(PutOutcome::Stored),
            StatusCode::OK => Ok(PutOutcome::AlreadyPresent),
            StatusCode::CONFLICT => Ok(PutOutcome::Collision {
                message: read_message(response),
            }),
            // A Kerberos proxy that lets only some principals write (docs/deployment.md).
            StatusCode::FORBIDDEN if self.negotiates() => {
                Err(self.refused(AuthFailure::Kerberos(KerberosFailure::WriteRefused)))
            }
            // A proxy that lets anyone read and only certified clients write (docs/deployment.md).
            StatusCode::FORBIDDEN if self.agent.files.client_cert.is_none() => {
                Err(self.refused(AuthFailure::ClientCertMissing {
                    writes_only: true,
                    configured: None,
                }))
            }
            _ => Err(self.unexpected(&what, response)),
        }
    }

    /// The entries of one kind this box holds in one shard.
    pub fn list(&self, kind: EntryKind, shard: Shard) -> Result<Vec<ListedEntry>, ClientError> {
        self.get_lines(&format!("{kind}/{shard}/"), 64 << 20, |line| {
            parse_listing_line(line, shard)
        })
    }

    /// The shards of `kind` in which this box holds entries.
    pub fn list_shards(&self, kind: EntryKind) -> Result<Vec<Shard>, ClientError> {
        self.get_lines(&format!("{kind}/"), 4096, Shard::from_name)
    }

    /// GETs a text listing (at most `limit` bytes) at `path` and parses it line by line; a line
    /// that does not parse makes the whole answer an error, since a box that sends one is broken.
    fn get_lines<T>(
        &self,
        path: &str,
        limit: u64,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ClientError> {
        let what = format!("GET {path}");
        let url = format!("{}/{path}", self.url);
        let response = self.idempotent(&what, |auth| {
            with_authorization(self.agent.http.get(&url), auth).call()
        })?;
        if response.status() != StatusCode::OK {
            return Err(self.unexpected(&what, response));
        }
        let text = response
            .into_body()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| self.transport_failed(&what, &e.to_string()))?;
        text.lines()
            .map(|line| {
                parse(line).ok_or_else(|| {
                    self.status_error(&what, 200, format!("malformed listing line {line:?}"))
                })
            })
            .collect()
    }

    /// Asks the box to remove every entry it does not own (`POST /_drop`): for after a
    /// rebalance moved them to their new owners. Returns the entries and bytes it removed.
    pub fn drop_unowned(&self) -> Result<(u64, u64), ClientError> {
        let what = "POST /_drop";
        self.admit()?;
        let url = format!("{}/_drop", self.url);
        let response = match self
            .authorized(|auth| with_authorization(self.agent.http.post(&url), auth).send_empty())?
        {
            Ok(response) => response,
            Err(e) => return Err(self.failed(what, &e)),
        };
        self.health_from_status(response.status());
        if response.status() != StatusCode::OK {
            return Err(self.unexpected(what, response));
        }
        let report: serde_json::Value = serde_json::from_str(&read_body(response))
            .map_err(|e| self.status_error(what, 200, format!("not JSON: {e}")))?;
        let count = |name: &str| report[name].as_u64().unwrap_or(0);
        Ok((count("removed_entries"), count("removed_bytes")))
    }

    /// Sends an idempotent request (built and sent by `send`, given the `Authorization` value),
    /// retrying once after a pause if the connection failed for a reason other than a timeout or
    /// a refused certificate (typically a pooled connection the box had closed).
    pub(super) fn idempotent(
        &self,
        what: &str,
        send: impl Fn(Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, ClientError> {
        self.admit()?;
        let mut result = self.authorized(&send)?;
        if let Err(e) = &result {
            if !matches!(e, ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed)
                && self.tls_failure(e).is_none()
            {
                log::debug!("box {}: {what}: {e}; retrying once", self.url);
                std::thread::sleep(Duration::from_millis(50));
                result = self.authorized(&send)?;
            }
        }
        match result {
            Ok(response) => {
                self.health_from_status(response.status());
                Ok(response)
            }
            Err(e) => Err(self.failed(what, &e)),
        }
    }

    /// Sends one request through `send`, which builds it with the `Authorization` value it is
    /// given: none until the box's proxy asks for Kerberos, then a fresh token from the
    /// credential cache for every request. A request answered `401 WWW-Authenticate: Negotiate`
    /// is sent again with a token. The error is ours (no ticket, or the proxy refused the one we
    /// sent); what `send` returns is the caller's to judge.
    fn authorized(
        &self,
        send: impl Fn(Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Result<Response<Body>, ureq::Error>, ClientError> {
        let sent_token = self.negotiates();
        let first = match sent_token {
            true => send(Some(&self.authorization()?)),
            false => send(None),
        };
        let asked = matches!(&first, Ok(response) if kerberos::asks_negotiate(response));
        if !asked {
            return Ok(first);
        }
        let service = kerberos::service_of(&self.url);
        if sent_token {
            return Err(self.refused(AuthFailure::Kerberos(KerberosFailure::Rejected { service })));
        }
        log::debug!("box {} asks for Kerberos ({service})", self.url);
        self.negotiates
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let again = send(Some(&self.authorization()?));
        match &again {
            Ok(response) if kerberos::asks_negotiate(response) => {
                Err(self.refused(AuthFailure::Kerberos(KerberosFailure::Rejected { service })))
            }
            _ => Ok(again),
        }
    }

    /// Whether the box's proxy has asked for Kerberos.
    fn negotiates(&self) -> bool {
        self.negotiates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An `Authorization` value with a fresh token for the box's proxy.
    fn authorization(&self) -> Result<String, ClientError> {
        kerberos::authorization(&kerberos::service_of(&self.url))
            .map_err(|failure| self.refused(AuthFailure::Kerberos(failure)))
    }

    /// A request that failed before an answer: a refused certificate, or a transport failure.
    pub(super) fn failed(&self, what: &str, error: &ureq::Error) -> ClientError {
        match self.tls_failure(error) {
            Some(failure) => self.refused(failure),
            None => self.transport_failed(what, &error.to_string()),
        }
    }

    /// What a TLS error says about certificates, if anything.
    fn tls_failure(&self, error: &ureq::Error) -> Option<AuthFailure> {
        let rustls = match error {
            ureq::Error::Rustls(e) => e,
            // The handshake's own errors come back as I/O errors carrying rustls's.
            ureq::Error::Io(e) => e.get_ref()?.downcast_ref::<rustls::Error>()?,
            _ => return None,
        };
        auth_failure_of(rustls, &self.agent.files)
    }

    /// An authentication failure. Unless it concerns writes only, the box is unusable until the
    /// config changes: it is marked down with the reason, so the next requests fail at once and
    /// say why, and `status` shows it.
    fn refused(&self, failure: AuthFailure) -> ClientError {
        let writes_only = failure.writes_only();
        let error = ClientError::Authentication {
            url: self.url.clone(),
            failure,
        };
        if !writes_only {
            self.health
                .record_failure(Instant::now(), error.to_string());
        }
        log::warn!("{error}");
        error
    }

    pub(super) fn admit(&self) -> Result<(), ClientError> {
        self.health
            .admit(Instant::now())
            .map_err(|refusal| ClientError::BoxDown {
                url: self.url.clone(),
                retry_in: refusal.retry_in,
                cause: refusal.cause,
            })
    }

    /// A gateway error means the proxy in front of the box cannot reach it: the box is down.
    pub(super) fn health_from_status(&self, status: StatusCode) {
        if matches!(status.as_u16(), 502..=504) {
            self.health
                .record_failure(Instant::now(), format!("proxy answered HTTP {status}"));
        } else {
            self.health.record_success();
        }
    }

    pub(super) fn transport_failed(&self, what: &str, cause: &str) -> ClientError {
        self.health
            .record_failure(Instant::now(), cause.to_string());
        log::warn!("box {}: {what}: {cause}; marked down", self.url);
        ClientError::Transport {
            url: self.url.clone(),
            what: what.to_string(),
            cause: cause.to_string(),
        }
    }

    fn unexpected(&self, what: &str, response: Response<Body>) -> ClientError {
        let status = response.status().as_u16();
        let body = read_body(response);
        if status == 400 {
            if let Some(failure) = auth_failure_in_error_page(&body, &self.agent.files) {
                return self.refused(failure);
            }
        }
        self.status_error(what, status, explanation(&body))
    }

    pub(super) fn status_error(&self, what: &str, status: u16, message: String) -> ClientError {
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

/// `request` with an `Authorization` header, if there is one to send.
fn with_authorization<B>(request: RequestBuilder<B>, value: Option<&str>) -> RequestBuilder<B> {
    match value {
        Some(value) => request.header("authorization", value),
        None => request,
    }
}

/// An error body, bounded, as text.
pub(super) fn read_body(response: Response<Body>) -> String {
    response
        .into_body()
        .with_config()
        .limit(MAX_MESSAGE)
        .lossy_utf8(true)
        .read_to_string()
        .unwrap_or_default()
}

/// The explanation in an error body: its first line, or the title of an HTML page (a proxy's
/// error pages, e.g. nginx's `400 The plain HTTP request was sent to HTTPS port`).
fn explanation(body: &str) -> String {
    let title = body.trim_start().starts_with('<').then(|| {
        let start = body.find("<title>")? + "<title>".len();
        let len = body[start..].find("</title>")?;
        Some(body[start..start + len].trim().to_string())
    });
    match title.flatten() {
        Some(title) => title,
        None => body.lines().next().unwrap_or("").to_string(),
    }
}

/// The explanation in an error body (see [`explanation`]).
fn read_message(response: Response<Body>) -> String {
    explanation(&read_body(response))
}

pub(super) fn header_str<'r>(response: &'r Response<Body>, name: &str) -> Option<&'r str> {
    response.headers().get(name)?.to_str().ok()
}

pub(super) fn header_u64(response: &Response<Body>, name: &str) -> Option<u64> {
    header_str(response, name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_of_error_bodies() {
        assert_eq!(explanation("key out of range\nmore\n"), "key out of range");
        assert_eq!(explanation(""), "");
        let nginx = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port\
                     </title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n";
        assert_eq!(
            explanation(nginx),
            "400 The plain HTTP request was sent to HTTPS port"
        );
        assert_eq!(explanation("<html>no title"), "<html>no title");
    }
}
