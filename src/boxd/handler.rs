//! Answering one request: route it, refuse what is not ours, serve or store entries.

use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::body::{self, ChannelBody, ChunkPool, ResponseBody};
use super::cached;
use super::hints;
use super::opened::{self, Opened};
use super::route::{self, Route};
use super::state::{drop_unowned, trim_now, BoxState};
use crate::dune::layout::{Entry, EntryKind};
use crate::store::{InstallOutcome, StoreError};

/// Our header names, parsed once rather than on every answer.
const X_EXECUTABLE: HeaderName = HeaderName::from_static("x-executable");
const X_DUNE_CACHEFS_BOX: HeaderName = HeaderName::from_static("x-dune-cachefs-box");
const X_DUNE_CACHEFS_NEXT: HeaderName = HeaderName::from_static("x-dune-cachefs-next");
/// Set by a client on requests it makes ahead of its user (prefetches), which are counted apart.
const X_DUNE_CACHEFS_AHEAD: HeaderName = HeaderName::from_static("x-dune-cachefs-ahead");

/// Answers one request; every answer is counted and names the box.
pub async fn handle(
    state: Arc<BoxState>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let ahead = request.headers().contains_key(X_DUNE_CACHEFS_AHEAD);
    let mut response = dispatch(&state, peer, request).await;
    let status = response.status().as_u16();
    state
        .stats
        .record(&method, status, ahead, started.elapsed());
    response
        .headers_mut()
        .insert(X_DUNE_CACHEFS_BOX, state.url_header.clone());
    Ok(response)
}

async fn dispatch(
    state: &Arc<BoxState>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let route = match route::parse(request.uri().path(), request.uri().query()) {
        Ok(route) => route,
        Err(bad) => return text(StatusCode::BAD_REQUEST, bad.0),
    };
    if let Route::Entry(entry) | Route::Hint(entry) = route {
        // A key the box owned under its config's previous table is still served (it may not
        // have moved yet), never stored.
        let allowed = match request.method() {
            &Method::GET | &Method::HEAD => state.serves(&entry),
            _ => state.owns(&entry),
        };
        if !allowed {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                format!("{entry}: this box ({}) does not own this key", state.url),
            );
        }
    }
    let method = request.method();
    match (route, method) {
        (Route::Entry(entry), &Method::GET) => serve_entry(state, entry, false).await,
        (Route::Entry(entry), &Method::HEAD) => serve_entry(state, entry, true).await,
        (Route::Entry(entry), &Method::PUT) => store_entry(state, peer, entry, request).await,
        (Route::Entry(_), _) => not_allowed("GET, HEAD, PUT"),
        (Route::Hint(entry), &Method::GET) => {
            let path = hints::path(state.store.root(), &entry);
            match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
                Ok(Ok(body)) => text(StatusCode::OK, String::from_utf8_lossy(&body).into_owned()),
                _ => text(StatusCode::NOT_FOUND, format!("no hint of {entry}")),
            }
        }
        (Route::Hint(entry), &Method::PUT) => store_hint(state, entry, request).await,
        (Route::Hint(_), _) => not_allowed("GET, PUT"),
        (Route::Listing(kind, shard), &Method::GET) => {
            let state = state.clone();
            blocking_text(move || state.listing(kind, shard)).await
        }
        (Route::Shards(kind), &Method::GET) => {
            let state = state.clone();
            blocking_text(move || state.shards(kind)).await
        }
        (Route::Status, &Method::GET) => json(state.status()),
        (Route::Metrics, &Method::GET) => {
            let mut response = Response::new(body::full(state.metrics()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        (Route::Collisions, &Method::GET) => json(state.collisions.to_json()),
        (Route::Trim, &Method::POST) => {
            let state = state.clone();
            blocking_json(move || {
                trim_now(&state).map(|r| {
                    serde_json::json!({
                        "size_before": r.size_before,
                        "size_after": r.size_after,
                        "removed_artifacts": r.removed_artifacts,
                        "removed_metadata": r.removed_metadata,
                    })
                })
            })
            .await
        }
        (Route::Trim, _) => not_allowed("POST"),
        (Route::Drop, &Method::POST) => {
            let state = state.clone();
            blocking_json(move || {
                drop_unowned(&state).map(|r| {
                    serde_json::json!({ "removed_entries": r.entries, "removed_bytes": r.bytes })
                })
            })
            .await
        }
        (Route::Drop, _) => not_allowed("POST"),
        (
            Route::Listing(..)
            | Route::Shards(_)
            | Route::Status
            | Route::Metrics
            | Route::Collisions,
            _,
        ) => not_allowed("GET"),
    }
}

async fn serve_entry(state: &Arc<BoxState>, entry: Entry, head: bool) -> Response<ResponseBody> {
    let path = state.store.path_of(&entry);
    let opened = match cached::try_open(&path, entry, head) {
        Some(opened) => Ok(opened),
        None => tokio::task::spawn_blocking(move || opened::open_blocking(path, entry, head))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e))),
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => return server_error(&format!("reading {entry}"), &e),
    };
    let (len, executable, body) = match opened {
        Opened::Missing => return text(StatusCode::NOT_FOUND, format!("{entry}: not held")),
        Opened::Described(len, exe) => (len, exe, body::full(Bytes::new())),
        Opened::Whole(bytes, exe) => (bytes.len() as u64, exe, body::full(bytes)),
        Opened::Streamed(file, len, exe) => (len, exe, stream_file(file).boxed()),
    };
    if !head {
        state.stats.add_out(len);
    }
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if entry.kind == EntryKind::File {
        let exe = if executable { "1" } else { "0" };
        headers.insert(X_EXECUTABLE, HeaderValue::from_static(exe));
    } else if !head {
        let hint = next_rules(state, entry).await;
        if let Some(value) = hint.and_then(|h| HeaderValue::from_str(&h).ok()) {
            response.headers_mut().insert(X_DUNE_CACHEFS_NEXT, value);
        }
    }
    response
}

/// The hint of a rule's metadata entry, as a header value: read at once if the page cache holds
/// it (or knows it is absent), else on the blocking pool.
async fn next_rules(state: &Arc<BoxState>, entry: Entry) -> Option<String> {
    let path = hints::path(state.store.root(), &entry);
    match cached::try_read(&path) {
        Some(body) => body.as_deref().and_then(hints::header_of),
        None => {
            let root = state.store.root().to_path_buf();
            tokio::task::spawn_blocking(move || hints::read(&root, &entry))
                .await
                .ok()
                .flatten()
        }
    }
}

/// Stores the hint of a rule's metadata entry: a small body, read whole (up to the hint limit),
/// checked ([`crate::hints::parse_body`]), then replacing the old one. `204` once stored.
async fn store_hint(
    state: &Arc<BoxState>,
    entry: Entry,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let limited = http_body_util::Limited::new(request.into_body(), crate::hints::MAX_BODY);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("hint of {entry}: {e}"),
            )
        }
    };
    if let Err(e) = crate::hints::parse_body(&body) {
        return text(StatusCode::BAD_REQUEST, format!("hint of {entry}: {e}"));
    }
    let state = state.clone();
    let stored =
        tokio::task::spawn_blocking(move || hints::replace(&state.store, &entry, &body)).await;
    match stored.unwrap_or_else(|e| Err(io::Error::other(e))) {
        Ok(()) => {
            let mut response = Response::new(body::full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(e) => server_error(&format!("storing the hint of {entry}"), &e),
    }
}

fn stream_file(mut file: File) -> ChannelBody {
    let (sender, body) = ChannelBody::new();
    tokio::task::spawn_blocking(move || {
        let pool = ChunkPool::new();
        loop {
            let mut buf = pool.take();
            let piece = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(pool.piece(buf, n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if sender.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    body
}

/// A piece of a `PUT` body on its way to the writer on the blocking pool.
enum Piece {
    Data(Bytes),
    End,
}

async fn store_entry(
    state: &Arc<BoxState>,
    peer: SocketAddr,
    entry: Entry,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let max = state.options.max_body;
    let headers = request.headers();
    let declared: Option<u64> = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|len| len > max) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{entry}: body of {} bytes exceeds the limit of {max}",
                declared.unwrap_or(0)
            ),
        );
    }
    if declared.is_none() && !headers.contains_key(TRANSFER_ENCODING) {
        return text(
            StatusCode::LENGTH_REQUIRED,
            format!("{entry}: a PUT needs Content-Length or chunked encoding"),
        );
    }
    // The bit is optional: the key fixes it. A sender that states it must agree with the key.
    let claimed_executable = match headers.get("x-executable").map(|v| v.as_bytes()) {
        None => None,
        Some(b"0") => Some(false),
        Some(b"1") => Some(true),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{entry}: X-Executable must be 0 or 1"),
            )
        }
    };
    let origin = Origin {
        peer,
        forwarded_for: header_string(headers, "x-forwarded-for"),
        user: header_string(headers, X_USER),
    };

    let (sender, mut receiver) = mpsc::channel::<Piece>(8);
    let writer_state = state.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut pending = writer_state.store.begin(entry);
        if let Some(executable) = claimed_executable {
            pending.expect_executable(executable);
        }
        while let Some(piece) = receiver.blocking_recv() {
            match piece {
                Piece::Data(bytes) => pending.write_chunk(&bytes)?,
                Piece::End => return writer_state.install(&pending.verify()?).map(Some),
            }
        }
        Ok::<_, StoreError>(None)
    });

    let mut body = request.into_body();
    let mut received = 0u64;
    let refusal = loop {
        let frame = match tokio::time::timeout(state.options.io_timeout, body.frame()).await {
            Err(_) => {
                break Some(text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("{entry}: body stalled"),
                ))
            }
            Ok(None) => {
                let _ = sender.send(Piece::End).await;
                break None;
            }
            Ok(Some(Err(e))) => {
                break Some(text(
                    StatusCode::BAD_REQUEST,
                    format!("{entry}: bad body: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > max {
            break Some(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{entry}: body exceeds the limit of {max} bytes"),
            ));
        }
        if sender.send(Piece::Data(data)).await.is_err() {
            // The writer stopped early (bad metadata, disk full): its result says why.
            break None;
        }
    };
    drop(sender);
    let written = writer.await;
    if let Some(refusal) = refusal {
        return refusal;
    }
    match written {
        Ok(Ok(Some(outcome))) => {
            state.stats.add_in(received);
            answer_outcome(state, &origin, entry, outcome)
        }
        Ok(Ok(None)) => server_error(
            &format!("storing {entry}"),
            &io::Error::other("writer aborted"),
        ),
        Ok(Err(e)) => store_refusal(state, entry, e),
        Err(e) => server_error(&format!("storing {entry}"), &io::Error::other(e)),
    }
}

/// The header in which an authenticating proxy names the user it authenticated (its Kerberos
/// principal), having removed any the client sent (docs/deployment.md).
const X_USER: &str = "x-dune-cachefs-user";

/// Who sent a `PUT`, as far as the box can tell: the connection's peer (the proxy, behind one),
/// the client the proxy names, and the user it authenticated.
struct Origin {
    peer: SocketAddr,
    forwarded_for: Option<String>,
    user: Option<String>,
}

fn header_string(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn answer_outcome(
    state: &BoxState,
    origin: &Origin,
    entry: Entry,
    outcome: InstallOutcome,
) -> Response<ResponseBody> {
    let peer = origin.peer;
    match outcome {
        InstallOutcome::Stored => {
            // Behind a proxy that authenticates, the log names who stored what.
            if let Some(user) = &origin.user {
                log::info!("{entry} stored by {user}");
            }
            text(StatusCode::CREATED, format!("{entry}: stored"))
        }
        InstallOutcome::AlreadyPresent => text(StatusCode::OK, format!("{entry}: already held")),
        InstallOutcome::Collision { held, offered } => {
            let held = hex(&held);
            let offered = hex(&offered);
            let by = origin
                .user
                .as_deref()
                .unwrap_or("an unauthenticated client");
            log::warn!("collision on {entry} from {peer} ({by}): held {held}, offered {offered}");
            state.stats.add_collision();
            state.collisions.record(serde_json::json!({
                "entry": entry.to_string(),
                "held_blake3": held,
                "offered_blake3": offered,
                "time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "client": peer.to_string(),
                "forwarded_for": origin.forwarded_for,
                "user": origin.user,
            }));
            text(
                StatusCode::CONFLICT,
                format!("{entry}: a different value is held (blake3 {held}) and kept; yours (blake3 {offered}) is refused"),
            )
        }
    }
}

fn store_refusal(state: &BoxState, entry: Entry, error: StoreError) -> Response<ResponseBody> {
    match &error {
        StoreError::KeyMismatch { .. }
        | StoreError::ExecutableMismatch { .. }
        | StoreError::BadMetadata { .. } => {
            log::warn!("refused {entry}: {error}");
            state.stats.add_verification_failure();
            text(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        _ if error.io_kind() == Some(io::ErrorKind::StorageFull) => {
            log::error!("disk full storing {entry}: {error}");
            text(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("{entry}: the box's disk is full"),
            )
        }
        _ => server_error(
            &format!("storing {entry}"),
            &io::Error::other(error.to_string()),
        ),
    }
}

async fn blocking_text(
    work: impl FnOnce() -> Result<String, StoreError> + Send + 'static,
) -> Response<ResponseBody> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(body)) => {
            let mut response = Response::new(body::full(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        Ok(Err(e)) => server_error("listing", &io::Error::other(e.to_string())),
        Err(e) => server_error("listing", &io::Error::other(e)),
    }
}

async fn blocking_json(
    work: impl FnOnce() -> Result<serde_json::Value, StoreError> + Send + 'static,
) -> Response<ResponseBody> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => json(value),
        Ok(Err(e)) => server_error("status", &io::Error::other(e.to_string())),
        Err(e) => server_error("status", &io::Error::other(e)),
    }
}

fn json(value: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(value.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(message + "\n"));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this path takes {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn server_error(what: &str, error: &io::Error) -> Response<ResponseBody> {
    log::error!("{what}: {error}");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what}: {error}"),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
