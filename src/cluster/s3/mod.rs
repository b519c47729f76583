//! The client of one S3 bucket node: the box protocol's questions (HEAD, GET, PUT, shard
//! listings) asked of any S3-compatible object store.
//!
//! It is a second kind of node, not a second client: the connection pool, the timeouts, the
//! retry of an idempotent request, the down-marking of a failed node and the streaming of a body
//! into a sink are the box client's ([`BoxClient`], built on the bucket's URL), so a bucket
//! fails exactly as a box does (fast, marked down, a miss for the mount, never a lie). What is
//! the store's own lives here: every request is signed (SigV4, as a presigned URL from
//! `rusty-s3`, so the blocking client sends it unchanged, signed headers included), objects are
//! named like the entries under the node's prefix, the executable bit travels as object
//! metadata (`x-amz-meta-executable`; a Kerberos `Authorization` the box client would add is never
//! sent: the presigned URL is the request's authentication), listings are the store's prefix listings page by page,
//! and its errors (an XML `Code` and `Message`) become plain words: a refused credential marks
//! the bucket down with the reason, a `503 SlowDown` is a node in trouble.
//!
//! Nothing fetched is trusted: bytes go to the caller's sink (the store's verification, see
//! [`crate::fetch`]) and the executable bit the object claims is checked against the key.
//!
//! First writer wins for metadata: a store that honours `If-None-Match: *` on PUT refuses the
//! second writer (412) and the bucket's value is compared with ours (identical, or a
//! collision). A store that ignores it (found by [`S3Client::conditional_writes`], said once in
//! the log) gets read-after-write detection instead: read before writing, write, read back and
//! compare; docs/object-store.md describes the window in which two writers can still race.

pub mod credentials;

use std::fs::File;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use rusty_s3::{actions::ListObjectsV2, Bucket, Credentials, S3Action};
use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::client::{
    header_str, header_u64, read_body, Agent, BoxClient, ClientError, ListedEntry, PutOutcome,
    RemoteEntry, StreamError,
};
use super::config::{S3Bucket, UrlStyle};
use crate::dune::key::{Key, Shard};
use crate::dune::layout::{Entry, EntryKind};
use crate::sync::lock;

/// How long a signed URL stays valid: long enough for a slow transfer to start, short enough
/// that a leaked log line is soon useless.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// The object metadata that carries an artifact's executable bit (`0` or `1`).
const X_EXECUTABLE: &str = "x-amz-meta-executable";

/// The largest metadata object read back to compare with ours (Dune's are a few hundred bytes).
const MAX_METADATA: usize = 16 << 20;

/// Where the write probe goes, under the node's prefix: apart from `files/` and `meta/`, so
/// no listing of entries sees it.
const PROBE_OBJECT: &str = ".dune-cachefs/conditional-write-probe";

/// The client of one bucket node.
#[derive(Debug)]
pub struct S3Client {
    /// The HTTP side (pool, health, retries, streaming), under the bucket's URL.
    http: BoxClient,
    bucket: Bucket,
    location: S3Bucket,
    credentials: Credentials,
    /// Where the credentials came from, for refusals.
    credentials_source: String,
    /// Whether the store honours `If-None-Match: *` on PUT, once found out; held while it is
    /// being found out, so one probe runs.
    conditional: Mutex<Option<bool>>,
}

/// What a fetch found out besides the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectFacts {
    /// The executable bit the object's metadata claims, if it has one.
    pub executable: Option<bool>,
}

/// Whether a PUT stored the object or found one there.
enum Sent {
    Stored,
    Exists,
}

impl S3Client {
    /// A client for the bucket `location` (named `url` in messages), over a shared agent.
    pub fn new(
        location: &S3Bucket,
        url: &str,
        agent: Agent,
        found: credentials::Found,
    ) -> S3Client {
        let style = match location.style() {
            UrlStyle::Path => rusty_s3::UrlStyle::Path,
            UrlStyle::VirtualHost => rusty_s3::UrlStyle::VirtualHost,
        };
        let endpoint = location
            .endpoint()
            .as_str()
            .parse()
            .expect("the config checked the endpoint: http(s), with a host");
        let bucket = Bucket::new(
            endpoint,
            style,
            location.bucket().to_string(),
            location.region().to_string(),
        )
        .expect("the config checked the endpoint: http(s), with a host");
        S3Client {
            http: BoxClient::new(url, agent),
            bucket,
            location: location.clone(),
            credentials: found.credentials,
            credentials_source: found.source,
            conditional: Mutex::new(None),
        }
    }

    /// The bucket's URL (endpoint, bucket and prefix).
    pub fn url(&self) -> &str {
        self.http.url()
    }

    /// The HTTP side, for the node's health.
    pub fn http(&self) -> &BoxClient {
        &self.http
    }

    fn object(&self, entry: &Entry) -> String {
        self.location
            .object_name(&entry.relative_path().to_string_lossy())
    }

    /// Whether the bucket holds `entry`, and its size and executable bit if so.
    pub fn head(&self, entry: &Entry) -> Result<Option<RemoteEntry>, ClientError> {
        let what = format!("HEAD {entry}");
        let object = self.object(entry);
        let url = self
            .bucket
            .head_object(Some(&self.credentials), &object)
            .sign(SIGNED_FOR);
        let response = self
            .http
            .idempotent(&what, |_| self.http.http().head(url.as_str()).call())?;
        match response.status() {
            StatusCode::OK => Ok(Some(RemoteEntry {
                size: header_u64(&response, "content-length").ok_or_else(|| {
                    self.http
                        .status_error(&what, 200, "answer has no Content-Length".into())
                })?,
                executable: executable_of(&response),
            })),
            StatusCode::NOT_FOUND => Ok(None),
            // An answer to HEAD has no body to say why: ask again with GET, whose answer has.
            _ => Err(self.failure(&what, self.explain_head(&object, response))),
        }
    }

    fn explain_head(&self, object: &str, head: Response<Body>) -> Response<Body> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), object)
            .sign(SIGNED_FOR);
        match self.http.http().get(url.as_str()).call() {
            Ok(get) if get.status() == head.status() => get,
            _ => head,
        }
    }

    /// Streams `entry`'s object into `sink`; `Ok(None)` if the bucket does not hold it. The
    /// facts returned (the claimed executable bit) are for the caller to check, like the bytes.
    pub fn fetch<E>(
        &self,
        entry: &Entry,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<ObjectFacts>, StreamError<E>> {
        let what = format!("GET {entry}");
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &self.object(entry))
            .sign(SIGNED_FOR);
        let response = self
            .http
            .idempotent(&what, |_| self.http.http().get(url.as_str()).call())
            .map_err(StreamError::Box)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(StreamError::Box(self.failure(&what, response))),
        }
        let facts = ObjectFacts {
            executable: executable_of(&response),
        };
        self.http.stream_body(&what, response, sink)?;
        Ok(Some(facts))
    }

    /// Uploads `entry` from a local file. An artifact's key fixes its content, so an object
    /// already there is the same artifact; metadata is compared (first writer wins).
    pub fn put(
        &self,
        entry: &Entry,
        file: &File,
        executable: bool,
    ) -> Result<PutOutcome, ClientError> {
        match entry.kind {
            EntryKind::File => match self.send(entry, file, Some(executable), true)? {
                Sent::Stored => Ok(PutOutcome::Stored),
                Sent::Exists => Ok(PutOutcome::AlreadyPresent),
            },
            EntryKind::Meta(_) => {
                let mut ours = Vec::new();
                file.take(MAX_METADATA as u64)
                    .read_to_end(&mut ours)
                    // As for a box, whose body streams from the file: a failed read of it is
                    // a failed transfer.
                    .map_err(|e| ClientError::Transport {
                        url: self.url().to_string(),
                        what: format!("PUT {entry}"),
                        cause: format!("cannot read the local copy: {e}"),
                    })?;
                self.put_metadata(entry, &ours)
            }
        }
    }

    /// First writer wins: by a conditional write where the store honours one, else by reading
    /// before and after writing.
    fn put_metadata(&self, entry: &Entry, ours: &[u8]) -> Result<PutOutcome, ClientError> {
        if self.conditional_writes()? {
            return match self.send(entry, ours, None, true)? {
                Sent::Stored => Ok(PutOutcome::Stored),
                Sent::Exists => self.compare(entry, ours),
            };
        }
        if self.read_small(entry)?.is_some() {
            return self.compare(entry, ours);
        }
        self.send(entry, ours, None, false)?;
        match self.compare(entry, ours)? {
            PutOutcome::AlreadyPresent => Ok(PutOutcome::Stored),
            other => {
                log::warn!(
                    "S3 bucket {}: {entry}: another writer stored a different value at the same \
                     time (the store does not honour conditional writes)",
                    self.url()
                );
                Ok(other)
            }
        }
    }

    /// Compares the bucket's copy of `entry` with ours.
    fn compare(&self, entry: &Entry, ours: &[u8]) -> Result<PutOutcome, ClientError> {
        match self.read_small(entry)? {
            Some(theirs) if theirs == ours => Ok(PutOutcome::AlreadyPresent),
            Some(_) => Ok(PutOutcome::Collision {
                message: "the bucket holds a different value for this rule and keeps it \
                          (first writer wins)"
                    .into(),
            }),
            None => Err(self.http.status_error(
                &format!("PUT {entry}"),
                412,
                "the store said the object exists, then that it does not".into(),
            )),
        }
    }

    /// The bucket's copy of a small object, whole.
    fn read_small(&self, entry: &Entry) -> Result<Option<Vec<u8>>, ClientError> {
        let mut bytes = Vec::new();
        let take = |chunk: &[u8]| match bytes.len() + chunk.len() <= MAX_METADATA {
            true => {
                bytes.extend_from_slice(chunk);
                Ok(())
            }
            false => Err(()),
        };
        match self.fetch(entry, take) {
            Ok(Some(_)) => Ok(Some(bytes)),
            Ok(None) => Ok(None),
            Err(StreamError::Box(e)) => Err(e),
            Err(StreamError::Sink(())) => Err(self.http.status_error(
                &format!("GET {entry}"),
                200,
                format!("larger than {MAX_METADATA} bytes: not a metadata entry"),
            )),
        }
    }

    /// PUTs one object, `if_absent` with `If-None-Match: *`; the executable bit, if given, as
    /// object metadata. Both headers are signed.
    fn send(
        &self,
        entry: &Entry,
        body: impl ureq::AsSendBody,
        executable: Option<bool>,
        if_absent: bool,
    ) -> Result<Sent, ClientError> {
        let what = format!("PUT {entry}");
        let object = self.object(entry);
        let (url, headers) = self.signed_put(&object, executable, if_absent);
        self.put_signed(&what, &url, &headers, body)
    }

    fn signed_put(
        &self,
        object: &str,
        executable: Option<bool>,
        if_absent: bool,
    ) -> (String, Vec<(&'static str, &'static str)>) {
        let mut headers = Vec::new();
        if let Some(executable) = executable {
            headers.push((X_EXECUTABLE, if executable { "1" } else { "0" }));
        }
        if if_absent {
            headers.push(("if-none-match", "*"));
        }
        let mut put = self.bucket.put_object(Some(&self.credentials), object);
        for (name, value) in &headers {
            put.headers_mut().insert(*name, *value);
        }
        (put.sign(SIGNED_FOR).to_string(), headers)
    }

    fn put_signed(
        &self,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: impl ureq::AsSendBody,
    ) -> Result<Sent, ClientError> {
        self.http.admit()?;
        let mut request = self.http.http().put(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send(body.as_body())
            .map_err(|e| self.http.failed(what, &e))?;
        self.http.health_from_status(response.status());
        match response.status() {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(Sent::Stored),
            // 409: a conditional write racing another on AWS; the value is then compared.
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => Ok(Sent::Exists),
            _ => Err(self.failure(what, response)),
        }
    }

    /// Whether the store honours `If-None-Match: *` on PUT, found out once by writing a probe
    /// object twice, and said in the log.
    pub fn conditional_writes(&self) -> Result<bool, ClientError> {
        let mut known = lock(&self.conditional);
        if let Some(honoured) = *known {
            return Ok(honoured);
        }
        let what = "PUT (the conditional-write probe)";
        let object = self.location.object_name(PROBE_OBJECT);
        let (url, headers) = self.signed_put(&object, None, true);
        let mut honoured = false;
        for _ in 0..2 {
            if let Sent::Exists = self.put_signed(what, &url, &headers, &b"probe"[..])? {
                honoured = true;
                break;
            }
        }
        match honoured {
            true => log::info!(
                "S3 bucket {}: the store honours If-None-Match: the first writer of each rule's \
                 metadata wins by conditional writes",
                self.url()
            ),
            false => log::warn!(
                "S3 bucket {}: the store ignores If-None-Match on PUT; metadata falls back to \
                 read-after-write detection, so two machines storing the same rule within the \
                 same moment can still both write it (docs/object-store.md)",
                self.url()
            ),
        }
        *known = Some(honoured);
        Ok(honoured)
    }

    /// Checks that the bucket answers and takes our credentials (one listing of at most one
    /// object): a refusal is an error in words, at start-up rather than at the first entry.
    pub fn check(&self) -> Result<(), ClientError> {
        let prefix = self.location.object_name("");
        self.list_pages("GET (start-up check)", &prefix, None, Some(1), |_| {
            Ok(false)
        })
    }

    /// The entries of one kind the bucket holds in one shard.
    pub fn list(&self, kind: EntryKind, shard: Shard) -> Result<Vec<ListedEntry>, ClientError> {
        let prefix = self.location.object_name(&format!("{kind}/{shard}/"));
        let mut listed = Vec::new();
        self.list_pages(
            &format!("GET {kind}/{shard}/"),
            &prefix,
            None,
            None,
            |page| {
                for object in &page.contents {
                    let name = object.key.strip_prefix(&prefix).unwrap_or(&object.key);
                    match name.parse::<Key>() {
                        Ok(key) if key.shard() == shard => listed.push(ListedEntry {
                            key,
                            size: object.size,
                            // A listing carries no object metadata: the executable bit is known
                            // once the entry is looked up or fetched (and checked then).
                            executable: false,
                        }),
                        _ => log::debug!(
                            "S3 bucket {}: skipping object {:?}",
                            self.url(),
                            object.key
                        ),
                    }
                }
                Ok(true)
            },
        )?;
        Ok(listed)
    }

    /// The shards of `kind` in which the bucket holds entries.
    pub fn list_shards(&self, kind: EntryKind) -> Result<Vec<Shard>, ClientError> {
        let prefix = self.location.object_name(&format!("{kind}/"));
        let mut shards = Vec::new();
        self.list_pages(&format!("GET {kind}/"), &prefix, Some("/"), None, |page| {
            shards.extend(page.common_prefixes.iter().filter_map(|p| {
                Shard::from_name(p.prefix.strip_prefix(&prefix)?.strip_suffix('/')?)
            }));
            Ok(true)
        })?;
        Ok(shards)
    }

    /// Lists the objects under `prefix`, page by page, giving each page to `page` until it
    /// says stop or the listing ends.
    fn list_pages(
        &self,
        what: &str,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: Option<usize>,
        mut page: impl FnMut(&rusty_s3::actions::ListObjectsV2Response) -> Result<bool, ClientError>,
    ) -> Result<(), ClientError> {
        let mut token: Option<String> = None;
        loop {
            let mut list = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            list.with_prefix(prefix);
            if let Some(delimiter) = delimiter {
                list.with_delimiter(delimiter);
            }
            if let Some(max_keys) = max_keys {
                list.with_max_keys(max_keys);
            }
            if let Some(token) = &token {
                list.with_continuation_token(token.as_str());
            }
            let url = list.sign(SIGNED_FOR);
            let response = self
                .http
                .idempotent(what, |_| self.http.http().get(url.as_str()).call())?;
            if response.status() != StatusCode::OK {
                return Err(self.failure(what, response));
            }
            let text = response
                .into_body()
                .with_config()
                .limit(64 << 20)
                .read_to_string()
                .map_err(|e| self.http.transport_failed(what, &e.to_string()))?;
            let parsed = ListObjectsV2::parse_response(&text).map_err(|e| {
                self.http
                    .status_error(what, 200, format!("unreadable listing: {e}"))
            })?;
            if !page(&parsed)? {
                return Ok(());
            }
            match parsed.next_continuation_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// The error for an answer this request does not expect: a refusal of our credentials (the
    /// bucket marked down with the reason, unless only writing was refused), or a status.
    fn failure(&self, what: &str, response: Response<Body>) -> ClientError {
        let status = response.status().as_u16();
        let body = read_body(response);
        let (code, message) = (xml_text(&body, "Code"), xml_text(&body, "Message"));
        let said = match (&code, &message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            _ => body.lines().next().unwrap_or("").to_string(),
        };
        let code = code.as_deref().unwrap_or("");
        let refusal = matches!(status, 401 | 403)
            || matches!(
                code,
                "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" | "InvalidAccessKeyId"
            );
        if !refusal {
            return self.http.status_error(what, status, said);
        }
        let advice = match code {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" => format!(
                "the credentials from {} are wrong for this store",
                self.credentials_source
            ),
            "ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" => format!(
                "the credentials from {} have expired: renew them",
                self.credentials_source
            ),
            _ => format!(
                "the credentials from {} are not allowed this (check the bucket's policy)",
                self.credentials_source
            ),
        };
        let said = match said.is_empty() {
            true => format!("HTTP {status}"),
            false => format!("HTTP {status} {said}"),
        };
        let error = ClientError::Refused {
            url: self.url().to_string(),
            what: what.to_string(),
            reason: format!("{said}; {advice}"),
        };
        // Only writing refused (a read-only key): reads go on.
        if !(what.starts_with("PUT") && code == "AccessDenied") {
            self.http.mark_down(error.to_string());
        }
        log::warn!("{error}");
        error
    }
}

/// The executable bit an object's metadata claims.
fn executable_of(response: &Response<Body>) -> Option<bool> {
    match header_str(response, X_EXECUTABLE)? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The text of the first `<tag>...</tag>` of an S3 error document (its `Code` and `Message`
/// are plain text; the few XML escapes S3 uses are undone).
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = body[start..].find(&format!("</{tag}>"))?;
    let text = body[start..start + len]
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_documents() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate &amp; retry.</Message>\
                    <Resource>/b/k</Resource></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("SlowDown"));
        assert_eq!(
            xml_text(body, "Message").as_deref(),
            Some("Please reduce your request rate & retry.")
        );
        assert_eq!(xml_text(body, "RequestId"), None);
        assert_eq!(xml_text("not xml", "Code"), None);
    }
}
