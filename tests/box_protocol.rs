//! What a real cache box refuses, and what a refusal leaves behind (nothing): bytes that do not
//! match their key (422), a second metadata value for a rule key (409, first kept, recorded), keys
//! of another box (421), paths that try to leave the root (400), bodies over the limit (413,
//! without holding them in memory), unknown methods (405), and clients too slow to send their
//! request (cut off, while everyone else is served).
//!
//! Requests go over raw TCP (`common::raw_request`), so the box sees exactly the bytes written
//! here: no client library normalises a path or fixes a header first.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    entries, parse_response, raw_get, raw_put, raw_request, BoxCluster, BoxProcess, RawResponse,
    WAIT_DEADLINE,
};
use dune_cachefs::dune::key::{self, Era, Key};
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::dune::metadata::Metadata;

/// Two boxes: the first owns keys `00..` to `7f..`, the second the rest.
fn two_boxes(box_args: &[&str]) -> BoxCluster {
    BoxCluster::start(&[&[("0x00", "0x7f")], &[("0x80", "0xff")]], "", box_args)
}

fn owned_by_first(key: &Key) -> bool {
    key.as_bytes()[0] < 0x80
}

/// Small artifact bytes whose key satisfies `want`, and that key.
fn artifact(want: impl Fn(&Key) -> bool, executable: bool) -> (Vec<u8>, Key) {
    (0..)
        .map(|i| format!("artifact number {i}\n").into_bytes())
        .map(|bytes| {
            let key = key::file_key(Era::Md5, &bytes[..], executable).unwrap();
            (bytes, key)
        })
        .find(|(_, key)| want(key))
        .expect("some key qualifies")
}

/// Dune 2.9 metadata naming one target and its artifact key; parsed here so a malformed example
/// cannot pass for a box bug.
fn metadata(target: &str, artifact: &Key) -> Vec<u8> {
    let bytes = format!(
        "((8:metadata)(5:files({}:{target}32:{artifact})))",
        target.len()
    )
    .into_bytes();
    Metadata::parse(&bytes).expect("the test's metadata is valid");
    bytes
}

fn path_of(entry: &Entry) -> String {
    format!("/{}", entry.relative_path().display())
}

fn file_entry(key: Key) -> Entry {
    Entry {
        kind: EntryKind::File,
        key,
    }
}

fn meta_entry(key: Key) -> Entry {
    Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key,
    }
}

/// Every file under `dir`, recursively, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(items) = std::fs::read_dir(dir) else {
            return;
        };
        for item in items {
            let path = item.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The box holds no entry and no temp file: only its collision log.
fn assert_box_holds_nothing(b: &BoxProcess) {
    assert_eq!(
        files_under(b.root()),
        vec![PathBuf::from("dune-cachefs-collisions.jsonl")],
        "files under the root of {}",
        b.url()
    );
}

fn assert_status(answer: &RawResponse, status: u16, what: &str) {
    assert_eq!(
        answer.status,
        status,
        "{what}: got {} {:?}",
        answer.status,
        answer.text()
    );
}

/// The value of the unlabelled metric `name` on the box's `GET /metrics`.
fn metric(b: &BoxProcess, name: &str) -> u64 {
    let answer = raw_get(b.addr(), "/metrics");
    assert_status(&answer, 200, "GET /metrics");
    let page = answer.text();
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
        .parse()
        .expect("a whole number")
}

#[test]
fn bytes_that_do_not_match_the_key_are_422_and_leave_nothing() {
    let cluster = two_boxes(&[]);
    let b = &cluster.boxes[0];
    let (bytes, key) = artifact(owned_by_first, false);
    let path = path_of(&file_entry(key));

    let answer = raw_put(b.addr(), &path, "", b"these are not the bytes of the key\n");
    assert_status(&answer, 422, "wrong bytes");
    assert!(answer.text().contains(&key.to_string()), "{answer:?}");
    assert_eq!(answer.header("x-dune-cachefs-box"), Some(b.url().as_str()));

    let answer = raw_put(b.addr(), &path, "\r\nX-Executable: 1", &bytes);
    assert_status(
        &answer,
        422,
        "right bytes, but X-Executable contradicts the key",
    );
    let answer = raw_put(b.addr(), &path, "\r\nX-Executable: yes", &bytes);
    assert_status(&answer, 400, "an X-Executable that is neither 0 nor 1");

    let rule = artifact(owned_by_first, true).1;
    let answer = raw_put(
        b.addr(),
        &path_of(&meta_entry(rule)),
        "",
        b"((8:metadata)(5:fi",
    );
    assert_status(&answer, 422, "metadata that does not parse");

    assert_box_holds_nothing(b);
    assert_eq!(
        metric(b, "dune_cachefs_box_verification_failures_total"),
        3,
        "each refusal counted"
    );

    // The same request with the right bytes and bit is fine: the refusals were about the bytes.
    let answer = raw_put(b.addr(), &path, "\r\nX-Executable: 0", &bytes);
    assert_status(&answer, 201, "the right bytes");
    let answer = raw_put(b.addr(), &path, "", &bytes);
    assert_status(&answer, 200, "the right bytes again");
    let answer = raw_get(b.addr(), &path);
    assert_status(&answer, 200, "GET");
    assert_eq!(answer.body, bytes);
    assert_eq!(answer.header("x-executable"), Some("0"));
}

#[test]
fn a_second_metadata_value_is_409_the_first_is_kept_and_the_collision_listed() {
    let mut cluster = two_boxes(&[]);
    let rule = artifact(owned_by_first, true).1;
    let entry = meta_entry(rule);
    let path = path_of(&entry);
    let first = metadata("default/out.txt", &artifact(|_| true, false).1);
    let second = metadata("default/out.txt", &artifact(|_| true, true).1);
    let b = &cluster.boxes[0];

    assert_status(&raw_put(b.addr(), &path, "", &first), 201, "first value");
    assert_status(
        &raw_put(b.addr(), &path, "", &first),
        200,
        "same value again",
    );
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let answer = raw_put(b.addr(), &path, "", &second);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_status(&answer, 409, "a different value");
    assert!(answer.text().contains(&rule.to_string()), "{answer:?}");

    let on_disk = std::fs::read(b.root().join(entry.relative_path())).unwrap();
    assert!(on_disk == first, "the held value changed on disk");
    let answer = raw_get(b.addr(), &path);
    assert_status(&answer, 200, "GET");
    assert!(
        answer.body == first,
        "the box serves another value than the first"
    );

    let check_listed = |b: &BoxProcess| {
        let answer = raw_get(b.addr(), "/_collisions");
        assert_status(&answer, 200, "GET /_collisions");
        let listed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let records = listed.as_array().expect("a JSON array");
        assert_eq!(records.len(), 1, "{listed}");
        let record = &records[0];
        assert_eq!(record["entry"], entry.to_string());
        assert_eq!(
            record["held_blake3"],
            blake3::hash(&first).to_hex().as_str()
        );
        assert_eq!(
            record["offered_blake3"],
            blake3::hash(&second).to_hex().as_str()
        );
        let time = record["time"].as_u64().expect("a time in seconds");
        assert!(
            (before..=after).contains(&time),
            "time {time} not in {before}..={after}"
        );
        let client = record["client"].as_str().expect("the client's address");
        assert!(client.starts_with("127.0.0.1:"), "client {client}");
    };
    check_listed(b);
    assert_eq!(metric(b, "dune_cachefs_box_collisions_total"), 1);
    // The record outlives the box.
    cluster.boxes[0].restart();
    check_listed(&cluster.boxes[0]);
}

#[test]
fn a_key_of_another_box_is_421_and_is_not_stored() {
    let cluster = two_boxes(&[]);
    let (first, second) = (&cluster.boxes[0], &cluster.boxes[1]);
    let (bytes, key) = artifact(|k| !owned_by_first(k), false);
    let path = path_of(&file_entry(key));

    let answer = raw_put(first.addr(), &path, "", &bytes);
    assert_status(&answer, 421, "PUT of another box's key");
    assert!(answer.text().contains(&key.to_string()), "{answer:?}");
    for method in ["GET", "HEAD"] {
        let answer = raw_request(
            first.addr(),
            &format!("{method} {path} HTTP/1.1\r\nHost: t"),
            b"",
        );
        assert_status(&answer, 421, &format!("{method} of another box's key"));
    }
    let meta = path_of(&meta_entry(key));
    let answer = raw_put(first.addr(), &meta, "", &metadata("default/x", &key));
    assert_status(&answer, 421, "PUT of another box's rule key");
    assert_box_holds_nothing(first);

    assert_status(
        &raw_put(second.addr(), &path, "", &bytes),
        201,
        "the owner takes it",
    );
}

#[test]
fn paths_that_try_to_leave_the_root_are_400_and_touch_nothing() {
    let cluster = two_boxes(&[]);
    let b = &cluster.boxes[0];
    let (bytes, key) = artifact(owned_by_first, false);
    let hh = &key.to_string()[..2];
    // The box's root is `<dir>/box0`: an escape would reach `<dir>`.
    let outside = cluster.dir();
    std::fs::write(outside.join("secret"), b"not for clients").unwrap();
    let targets = [
        "/files/v4/../../escaped".to_string(),
        format!("/files/v4/{hh}/../../../escaped"),
        format!("/files/v4/{hh}/../{hh}/{key}"),
        format!("/files/v4/{hh}/./{key}"),
        "/files/v4/%2e%2e/%2e%2e/escaped".to_string(),
        "/%2e%2e/escaped".to_string(),
        format!("/files/v4/{hh}/..%2f..%2f..%2fescaped"),
        format!("/files%2fv4%2f{hh}%2f{key}"),
        format!("//files/v4/{hh}/{key}"),
        format!("/files/v4/{hh}/{key}/"),
        format!("/files/v4/{hh}/{key}/.."),
        "/../escaped".to_string(),
        "../escaped".to_string(),
        format!("{}/escaped", outside.display()),
        format!("{}/files/v4/{hh}/{key}", b.root().display()),
        format!("http://127.0.0.1:{}/files/v4/../../escaped", b.port()),
        "/.dune-cachefs-tmp/escaped".to_string(),
    ];
    for target in &targets {
        let answer = raw_put(b.addr(), target, "", &bytes);
        assert_status(&answer, 400, &format!("PUT {target}"));
        let secret = target.replace("escaped", "secret");
        let answer = raw_get(b.addr(), &secret);
        assert_status(&answer, 400, &format!("GET {secret}"));
    }
    assert_box_holds_nothing(b);
    let mut outside_files = files_under(outside);
    outside_files.retain(|p| !p.starts_with("box0") && !p.starts_with("box1"));
    assert_eq!(
        outside_files,
        ["box0.log", "box1.log", "cluster.sexp", "secret"].map(PathBuf::from),
        "files next to the box's root"
    );
    assert_box_holds_nothing(&cluster.boxes[1]);
}

/// The box's limit in these tests, and the body offered: 32 times more.
const MAX_BODY: &str = "64MiB";
const MAX_BODY_BYTES: u64 = 64 << 20;
const HUGE: u64 = 2 << 30;
/// What the box may hold at its peak while refusing a huge body: its own needs, a few pieces of
/// the body in flight, and much less than the body.
const RSS_LIMIT_KIB: u64 = 200 << 10;

fn assert_peak_rss_small(b: &BoxProcess) {
    let peak = b.peak_rss_kib();
    assert!(
        peak < RSS_LIMIT_KIB,
        "the box's peak RSS is {peak} KiB while refusing a {HUGE}-byte body"
    );
}

#[test]
fn a_declared_2gib_body_is_413_before_any_of_it_is_sent() {
    let cluster = two_boxes(&["--max-body", MAX_BODY]);
    let b = &cluster.boxes[0];
    let path = path_of(&file_entry(artifact(owned_by_first, false).1));
    for expect in ["", "\r\nExpect: 100-continue"] {
        // Headers only: if the box waited for the body before answering, this would hang (and
        // fail at the read timeout).
        let head = format!("PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {HUGE}{expect}");
        let answer = raw_request(b.addr(), &head, b"");
        assert_status(&answer, 413, &format!("declared {HUGE} bytes{expect:?}"));
    }
    assert_peak_rss_small(b);
    assert_box_holds_nothing(b);
}

#[test]
fn a_chunked_2gib_body_is_cut_off_at_the_limit() {
    let cluster = two_boxes(&["--max-body", MAX_BODY]);
    let b = &cluster.boxes[0];
    let path = path_of(&file_entry(artifact(owned_by_first, false).1));
    let mut stream = TcpStream::connect(b.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
    stream.set_write_timeout(Some(WAIT_DEADLINE)).unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();

    // A generator of zeros, 1 MiB per chunk, up to 2 GiB, until the box answers or hangs up.
    let answered = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let answered = answered.clone();
        std::thread::spawn(move || {
            const PIECE: usize = 1 << 20;
            let mut chunk = format!("{PIECE:x}\r\n").into_bytes();
            chunk.resize(chunk.len() + PIECE, 0);
            chunk.extend_from_slice(b"\r\n");
            let mut sent = 0u64;
            while sent < HUGE && !answered.load(Ordering::Relaxed) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
                sent += PIECE as u64;
            }
            sent
        })
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the box hangs up; a reset after the answer (the unread rest of the body) is fine.
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    answered.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let answer = parse_response(&answer).unwrap_or_else(|| {
        panic!(
            "no answer to a chunked body; sent {sent} bytes; box log:\n{}",
            b.log()
        )
    });
    assert_status(&answer, 413, "a chunked body past the limit");
    // The box stopped reading at the limit; what was sent beyond it sits in socket buffers.
    assert!(
        sent < 2 * MAX_BODY_BYTES,
        "the box read {sent} bytes of a body limited to {MAX_BODY_BYTES}"
    );
    assert_peak_rss_small(b);
    assert_box_holds_nothing(b);
}

#[test]
fn unknown_methods_are_405_with_the_allowed_ones() {
    let cluster = two_boxes(&[]);
    let b = &cluster.boxes[0];
    let path = path_of(&file_entry(artifact(owned_by_first, false).1));
    for method in ["DELETE", "POST", "PATCH", "OPTIONS", "FROB"] {
        let answer = raw_request(
            b.addr(),
            &format!("{method} {path} HTTP/1.1\r\nHost: t"),
            b"",
        );
        assert_status(&answer, 405, &format!("{method} of an entry"));
        assert_eq!(answer.header("allow"), Some("GET, HEAD, PUT"), "{method}");
    }
    for (method, target, allow) in [
        ("PUT", "/_status", "GET"),
        ("DELETE", "/_collisions", "GET"),
        ("GET", "/_trim", "POST"),
        ("PUT", "/files/v4/00/", "GET"),
    ] {
        let answer = raw_request(
            b.addr(),
            &format!("{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0"),
            b"",
        );
        assert_status(&answer, 405, &format!("{method} {target}"));
        assert_eq!(answer.header("allow"), Some(allow), "{method} {target}");
    }
    assert_box_holds_nothing(b);

    // Regression: the status counters were keyed by the request's method verbatim, so every
    // new made-up method name grew the box's memory and its /_status for good.
    for i in 0..50 {
        let head = format!("FROB{i} {path} HTTP/1.1\r\nHost: t");
        assert_status(&raw_request(b.addr(), &head, b""), 405, "a made-up method");
    }
    let answer = raw_get(b.addr(), "/_status");
    assert_status(&answer, 200, "GET /_status");
    let status: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let counters = status["requests"].as_object().expect("request counters");
    assert!(
        !counters.keys().any(|k| k.starts_with("FROB")),
        "a request counter per made-up method name: {counters:?}"
    );
    assert_eq!(counters["other 405"], 51, "{counters:?}");
}

#[test]
fn a_client_too_slow_with_its_headers_is_cut_off_while_others_are_served() {
    let cluster = two_boxes(&["--io-timeout", "1"]);
    let b = &cluster.boxes[0];
    let request = b"GET /_status HTTP/1.1\r\nHost: a-slow-client\r\n\r\n";
    let mut slow = TcpStream::connect(b.addr()).unwrap();
    // A byte every 250 ms: the whole request would take 12 s, far past the 1 s timeout.
    slow.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut cut_off_after = None;
    for (i, byte) in request.iter().enumerate() {
        if slow.write_all(&[*byte]).is_err() {
            cut_off_after = Some(i);
            break;
        }
        if i == 1 {
            let answer = raw_get(b.addr(), "/_status");
            assert_status(
                &answer,
                200,
                "another client, while the slow one is connected",
            );
        }
        // The read is the pause between bytes, and hears the box hang up.
        match slow.read(&mut buf) {
            Ok(0) => {
                cut_off_after = Some(i + 1);
                break;
            }
            Ok(n) => panic!(
                "the box answered a request it has not received: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                cut_off_after = Some(i + 1);
                break;
            }
        }
    }
    let sent = cut_off_after.unwrap_or_else(|| {
        panic!(
            "the box waited for all {} header bytes, sent one per 250 ms, with --io-timeout 1",
            request.len()
        )
    });
    assert!(sent < request.len());
    assert_status(
        &raw_get(b.addr(), "/_status"),
        200,
        "a client after the slow one",
    );
}

#[test]
fn a_client_stalling_in_its_body_gets_408_and_leaves_nothing() {
    let cluster = two_boxes(&["--io-timeout", "1"]);
    let b = &cluster.boxes[0];
    let (bytes, key) = artifact(owned_by_first, false);
    let mut stream = TcpStream::connect(b.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        path_of(&file_entry(key)),
        bytes.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // Half the body, then silence.
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = parse_response(&answer).expect("an answer to a stalled body");
    assert_status(&answer, 408, "a body that stalls past --io-timeout");
    assert_box_holds_nothing(b);
    assert!(entries(b.root()).is_empty());
}

#[test]
fn a_body_cut_short_by_the_client_leaves_nothing() {
    let cluster = two_boxes(&[]);
    let b = &cluster.boxes[0];
    // Big enough that the box has written part of it to a temp file when the client hangs up;
    // it never arrives whole, so it need not match the key.
    let bytes = vec![7u8; 3 << 20];
    let key = artifact(owned_by_first, false).1;
    let path = path_of(&file_entry(key));
    let half = &bytes[..bytes.len() / 2];
    let chunked_half = [format!("{:x}\r\n", half.len()).as_bytes(), half, b"\r\n"].concat();
    for (framing, sent) in [
        (format!("Content-Length: {}", bytes.len()), half),
        ("Transfer-Encoding: chunked".to_string(), &chunked_half[..]),
    ] {
        let mut stream = TcpStream::connect(b.addr()).unwrap();
        stream.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
        let head = format!("PUT {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(sent).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if let Some(answer) = parse_response(&answer) {
            assert_status(&answer, 400, &format!("a body cut short ({framing})"));
        }
        // The box may still be cleaning up after the connection: wait for it, bounded.
        common::wait_until(
            &format!("the box drops the partial body ({framing})"),
            || files_under(b.root()) == [PathBuf::from("dune-cachefs-collisions.jsonl")],
        );
    }
}

/// Whether `/proc/net/tcp` shows an established connection from `local` to `remote` (ports on
/// 127.0.0.1).
fn established(local: u16, remote: u16) -> bool {
    let (local, remote) = (
        format!("0100007F:{local:04X}"),
        format!("0100007F:{remote:04X}"),
    );
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str())
                && fields.get(2) == Some(&remote.as_str())
                && fields.get(3) == Some(&"01")
        })
}

#[test]
fn a_client_that_stops_reading_its_answer_is_cut_off_while_others_are_served() {
    let cluster = BoxCluster::start(&[&[("0", "f")]], "", &["--io-timeout", "1"]);
    let b = &cluster.boxes[0];
    // Far more than the socket buffers on both sides hold, so the box's writes stall.
    let bytes = vec![7u8; 32 << 20];
    let key = key::file_key(Era::Md5, &bytes[..], false).unwrap();
    let path = path_of(&file_entry(key));
    let answer = raw_put(b.addr(), &path, "", &bytes);
    assert_status(&answer, 201, "a 32 MiB artifact");

    let mut reader = TcpStream::connect(b.addr()).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: a-client-that-never-reads\r\n\r\n");
    reader.write_all(head.as_bytes()).unwrap();
    let reader_port = reader.local_addr().unwrap().port();
    wait_until_cut_off(b.port(), reader_port);
    let answer = raw_get(b.addr(), &path);
    assert_status(&answer, 200, "another client, after the stalled one");
    assert!(answer.body == bytes, "the other client got other bytes");
}

fn wait_until_cut_off(box_port: u16, client_port: u16) {
    common::wait_until(
        "the box drops a connection whose client stopped reading (--io-timeout 1)",
        || !established(box_port, client_port),
    );
}

/// `/_status`'s `held` as `[count, bytes]` per kind, and its `held_counted`.
fn held(b: &BoxProcess) -> (Vec<[u64; 2]>, bool) {
    let answer = raw_get(b.addr(), "/_status");
    assert_status(&answer, 200, "GET /_status");
    let status: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let held = EntryKind::ALL
        .iter()
        .map(|kind| {
            let kind = &status["held"][kind.dir()];
            [
                kind["count"].as_u64().unwrap(),
                kind["bytes"].as_u64().unwrap(),
            ]
        })
        .collect();
    let counted = status["held_counted"].as_bool();
    (held, counted.expect("held_counted, true or false"))
}

/// What the box's root really holds, as `held` reports it.
fn walked(root: &Path) -> Vec<[u64; 2]> {
    let all = entries(root);
    EntryKind::ALL
        .iter()
        .map(|&kind| {
            let sizes: Vec<u64> = all
                .iter()
                .filter(|(entry, _)| entry.kind == kind)
                .map(|(_, path)| std::fs::metadata(path).unwrap().len())
                .collect();
            [sizes.len() as u64, sizes.iter().sum()]
        })
        .collect()
}

/// `held` once the box's startup count is done.
fn held_once_counted(b: &BoxProcess) -> Vec<[u64; 2]> {
    let mut counts = Vec::new();
    common::wait_until("the box has counted what it holds", || {
        let (held, counted) = held(b);
        counts = held;
        counted
    });
    counts
}

#[test]
fn status_counts_what_the_box_holds_across_stores_trims_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("box");
    // Many entries already there (written as files: the startup count lists and stats them, it
    // does not verify them), 100 bytes each.
    const FOUND: u64 = 5000;
    for i in 0..FOUND {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let path = root.join(file_entry(Key::from_bytes(key)).relative_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, [b'x'; 100]).unwrap();
    }
    let mut b = BoxProcess::start_anywhere(&root, &["--max-size".to_string(), "300000".into()]);

    // It answers at once, whether or not it has counted them yet; what it counted so far is
    // never more than is there.
    let (first, counted) = held(&b);
    if !counted {
        assert!(first[0][0] <= FOUND, "{first:?}");
    }
    assert_eq!(held_once_counted(&b), walked(&root));
    assert_eq!(walked(&root)[0], [FOUND, FOUND * 100]);

    let (bytes, key) = artifact(|_| true, false);
    let rule = artifact(|_| true, true).1;
    let first_value = metadata("default/out.txt", &key);
    let second_value = metadata("default/other.txt", &key);
    for (what, path, body, status) in [
        ("a new artifact", path_of(&file_entry(key)), &bytes, 201),
        ("an artifact held", path_of(&file_entry(key)), &bytes, 200),
        (
            "new metadata",
            path_of(&meta_entry(rule)),
            &first_value,
            201,
        ),
        (
            "a colliding value",
            path_of(&meta_entry(rule)),
            &second_value,
            409,
        ),
    ] {
        assert_status(&raw_put(b.addr(), &path, "", body), status, what);
        assert_eq!(held(&b), (walked(&root), true), "after {what}");
    }

    let trim = "POST /_trim HTTP/1.1\r\nHost: t\r\nContent-Length: 0";
    let answer = raw_request(b.addr(), trim, b"");
    assert_status(&answer, 200, "POST /_trim");
    let after_trim = walked(&root);
    assert!(after_trim[0][1] <= 300_000, "{after_trim:?}");
    assert_eq!(held(&b), (after_trim.clone(), true), "after a trim");

    b.restart();
    assert_eq!(held_once_counted(&b), after_trim, "after a restart");
}
