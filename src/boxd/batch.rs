//! Answering a batch (`POST /_batch`; the format is `crate::batch`): the entries asked for, one
//! after another, each behind its head.
//!
//! A batch exists to cost less than its entries' `GET`s, so it is answered the way a `GET` of
//! an entry in the page cache is (see `cached.rs`): on the runtime's own thread, as long as each
//! entry (and a rule's hint) is read without waiting for the disk, and into one body. From the
//! first entry that needs the disk (or is large), the rest is produced on the blocking pool as
//! one task, small entries gathered into pieces of [`body::CHUNK`] rather than sent one by one:
//! each piece sent wakes the runtime's thread. A read that fails midway cuts the connection, as
//! a streamed `GET` does: the client sees a short answer, never a wrong one.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::body::{self, ChannelBody, ChunkPool, ResponseBody};
use super::cached;
use super::hints;
use super::opened::{self, Opened};
use super::state::BoxState;
use crate::batch::{absent_head, held_head, parse_request, MAX_BODY};
use crate::dune::layout::{Entry, EntryKind};

/// Bytes of an answer built on the runtime's thread at most; the rest is produced on the
/// blocking pool.
const BUILT_AT_ONCE: usize = 1 << 20;

/// Answers a batch request. Each item is counted as a `GET` of its entry, `ahead` or not.
pub(super) async fn serve(
    state: &Arc<BoxState>,
    ahead: bool,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return super::handler::text(StatusCode::PAYLOAD_TOO_LARGE, format!("batch: {e}"))
        }
    };
    let entries = match parse_request(&body) {
        Ok(entries) => entries,
        Err(e) => return super::handler::text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut built = Vec::new();
    let mut done = 0;
    for entry in &entries {
        if built.len() >= BUILT_AT_ONCE {
            break;
        }
        let started = Instant::now();
        let Some(item) = item_now(state, *entry) else {
            break;
        };
        // Never a file to stream: `item_now` leaves large entries to the blocking pool.
        let (status, _) = item.encode(state, entry, &mut built);
        record(state, status, ahead, started);
        done += 1;
    }
    let answer = match done == entries.len() {
        true => body::full(built),
        false => {
            let (sender, answer) = ChannelBody::new();
            let rest = entries[done..].to_vec();
            let state = state.clone();
            tokio::task::spawn_blocking(move || produce(&state, ahead, rest, built, &sender));
            answer.boxed()
        }
    };
    let mut response = Response::new(answer);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-dune-cachefs-batch"),
    );
    response
}

fn record(state: &BoxState, status: u16, ahead: bool, started: Instant) {
    state
        .stats
        .record(&Method::GET, status, ahead, started.elapsed());
}

/// One item of a batch, opened.
enum Item {
    /// Not sent: not held (`served`), or a key the box does not serve.
    Absent { served: bool },
    /// Held, read whole.
    Whole {
        bytes: Bytes,
        executable: Option<bool>,
        next: String,
    },
    /// Held, to be streamed from its file.
    Streamed {
        file: File,
        len: u64,
        executable: Option<bool>,
        next: String,
    },
}

impl Item {
    /// The item from what opening its entry found, with the executable bit of an artifact and
    /// the hint of a rule (`next`); `None` if it was only described (opened for a `HEAD`).
    fn of(entry: &Entry, opened: Opened, next: String) -> Option<Item> {
        let executable = |exe| (entry.kind == EntryKind::File).then_some(exe);
        Some(match opened {
            Opened::Missing => Item::Absent { served: true },
            Opened::Whole(bytes, exe) => Item::Whole {
                bytes,
                executable: executable(exe),
                next,
            },
            Opened::Streamed(file, len, exe) => Item::Streamed {
                file,
                len,
                executable: executable(exe),
                next,
            },
            Opened::Described(..) => return None,
        })
    }

    /// Appends the item's head to `out`, and its bytes if it holds them whole. Returns the
    /// status it answers, and for a streamed item its file and length, whose bytes are to
    /// follow.
    fn encode(
        self,
        state: &BoxState,
        entry: &Entry,
        out: &mut Vec<u8>,
    ) -> (u16, Option<(File, u64)>) {
        match self {
            Item::Absent { served } => {
                out.extend_from_slice(absent_head(entry, served).as_bytes());
                (if served { 404 } else { 421 }, None)
            }
            Item::Whole {
                bytes,
                executable,
                next,
            } => {
                let len = bytes.len() as u64;
                out.extend_from_slice(held_head(entry, len, executable, &next).as_bytes());
                out.extend_from_slice(&bytes);
                state.stats.add_out(len);
                (200, None)
            }
            Item::Streamed {
                file,
                len,
                executable,
                next,
            } => {
                out.extend_from_slice(held_head(entry, len, executable, &next).as_bytes());
                state.stats.add_out(len);
                (200, Some((file, len)))
            }
        }
    }
}

/// The item of `entry` read on the runtime's thread, or `None` if that would wait for the disk
/// (or the entry is large, or its atime is due a stamp: see `cached.rs`).
fn item_now(state: &BoxState, entry: Entry) -> Option<Item> {
    if !state.serves(&entry) {
        return Some(Item::Absent { served: false });
    }
    let opened = cached::try_open(&state.store.path_of(&entry), entry, false)?;
    if matches!(opened, Opened::Streamed(..)) {
        return None;
    }
    let next = match entry.kind {
        EntryKind::File => String::new(),
        EntryKind::Meta(_) => {
            let hint = cached::try_read(&hints::path(state.store.root(), &entry))?;
            hint.as_deref()
                .and_then(hints::header_of)
                .unwrap_or_default()
        }
    };
    Item::of(&entry, opened, next)
}

/// The item of `entry`, read on a thread that may wait for the disk.
fn item_blocking(state: &BoxState, entry: Entry) -> io::Result<Item> {
    if !state.serves(&entry) {
        return Ok(Item::Absent { served: false });
    }
    let opened = opened::open_blocking(state.store.path_of(&entry), entry, false)?;
    let next = match entry.kind {
        EntryKind::File => String::new(),
        EntryKind::Meta(_) => hints::read(state.store.root(), &entry).unwrap_or_default(),
    };
    Item::of(&entry, opened, next)
        .ok_or_else(|| io::Error::other(format!("{entry}: opened without its bytes")))
}

/// Produces the rest of a batch answer on the blocking pool: `built` (what the runtime's thread
/// built), then the items of `entries`, small ones gathered into pieces of [`body::CHUNK`].
fn produce(
    state: &BoxState,
    ahead: bool,
    entries: Vec<Entry>,
    mut built: Vec<u8>,
    sender: &mpsc::Sender<io::Result<Bytes>>,
) {
    let pool = ChunkPool::new();
    let send = |piece: Vec<u8>| sender.blocking_send(Ok(piece.into())).is_ok();
    let fail = |entry: Entry, e: io::Error| {
        log::warn!("batch: reading {entry}: {e}");
        let _ = sender.blocking_send(Err(e));
    };
    for entry in entries {
        let started = Instant::now();
        let item = match item_blocking(state, entry) {
            Ok(item) => item,
            Err(e) => return fail(entry, e),
        };
        let (status, stream) = item.encode(state, &entry, &mut built);
        if let Some((file, len)) = stream {
            if !send(std::mem::take(&mut built)) {
                return;
            }
            if let Err(e) = stream_exact(file, len, &pool, sender) {
                return fail(entry, e);
            }
        }
        record(state, status, ahead, started);
        if built.len() >= body::CHUNK && !send(std::mem::take(&mut built)) {
            return;
        }
    }
    if !built.is_empty() {
        send(built);
    }
}

/// Sends exactly `len` bytes of `file` through `sender`, in pieces of `pool`'s buffers.
fn stream_exact(
    mut file: File,
    len: u64,
    pool: &ChunkPool,
    sender: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let mut buf = pool.take();
        let n = match file.read(&mut buf) {
            Ok(0) => {
                let short = format!("the file ended {left} bytes short of its {len}");
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, short));
            }
            Ok(n) => n.min(usize::try_from(left).unwrap_or(usize::MAX)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        left -= n as u64;
        if sender.blocking_send(Ok(pool.piece(buf, n))).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            ));
        }
    }
    Ok(())
}
