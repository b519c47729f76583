//! Hostile clients hammering a box while an honest one uses it: path traversal, malformed keys,
//! a 1 MiB header line, bodies far over the limit, and a slowloris (hundreds of connections
//! sending their headers a byte at a time). Every attack is refused, nothing reaches the box's
//! disk, and the honest client's 100 GETs are served throughout, with their latency measured
//! against the same 100 GETs before the attack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dune_cachefs::dune::layout::Entry;

use super::{artifact_in, assert_sound, put_on_box, report, temp_files};
use crate::common::{self, BoxProcess};

/// Connections the slowloris keeps open (the box serves up to 1024 at once).
const SLOWLORIS: usize = 200;
/// The box's `--io-timeout`: how long a client may take to send its headers.
const IO_TIMEOUT_SECS: u64 = 2;
/// How long the attack lasts at least: past the io timeout, so the slowloris is seen cut off.
const ATTACK: Duration = Duration::from_secs(IO_TIMEOUT_SECS + 1);
/// The longest one honest GET may take during the attack.
const GET_BOUND: Duration = Duration::from_secs(1);

/// What the attackers saw, by attack: the answers' status codes (0: closed without one).
#[derive(Default)]
struct Seen {
    statuses: Mutex<Vec<(&'static str, u16)>>,
    slowloris_open: AtomicU64,
    slowloris_cut: AtomicU64,
}

impl Seen {
    fn record(&self, attack: &'static str, status: u16) {
        self.statuses.lock().unwrap().push((attack, status));
    }

    fn of(&self, attack: &str) -> Vec<u16> {
        let statuses = self.statuses.lock().unwrap();
        statuses
            .iter()
            .filter(|(a, _)| *a == attack)
            .map(|(_, s)| *s)
            .collect()
    }
}

/// Sends `head` then `body` (written in pieces until done or refused), and reads the answer's
/// status; 0 if the box closed the connection without one.
fn attack(addr: SocketAddr, head: &[u8], body: impl Iterator<Item = Vec<u8>>) -> u16 {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return 0;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if stream.write_all(head).is_ok() {
        for piece in body {
            if stream.write_all(&piece).is_err() {
                break;
            }
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    common::parse_response(&answer).map_or(0, |a| a.status)
}

/// Requests whose paths try to leave the root or are not keys: each must be a 400.
fn bad_paths(entry: &Entry) -> Vec<String> {
    let key = entry.key.to_string();
    let shard = &key[..2];
    vec![
        "/files/v4/../../../../etc/passwd".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        format!("/files/v4/{shard}/../../../{key}"),
        format!("/files/v4/{shard}/%2e%2e/{key}"),
        "//etc/passwd".into(),
        format!("/files/v4/{shard}/{}", key.to_uppercase()),
        format!("/files/v4/{shard}/{}", &key[..31]),
        format!("/files/v4/{shard}/{key}0"),
        format!("/files/v4/zz/zz{}", &key[2..]),
        format!("/files/v4/{shard}/{key}/"),
        format!("/files/v4/{shard}/{key}?x=1"),
        format!("/meta/v9/{shard}/{key}"),
        format!("/files/v4/{shard}/{}", "g".repeat(32)),
    ]
}

/// `n` GETs of `entry`, each on a new connection, checked byte for byte; their latencies.
fn honest_gets(b: &BoxProcess, entry: &Entry, bytes: &[u8], n: usize) -> Vec<Duration> {
    let path = format!("/{}", entry.relative_path().display());
    (0..n)
        .map(|i| {
            let start = Instant::now();
            let answer = common::raw_get(b.addr(), &path);
            let took = start.elapsed();
            assert_eq!(answer.status, 200, "honest GET {i}: {}", answer.text());
            assert!(answer.body == bytes, "honest GET {i}: wrong bytes");
            took
        })
        .collect()
}

/// `p50 / p99 / max` of some latencies, for the report.
fn summary(latencies: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), sorted[sorted.len() - 1])
}

#[test]
fn a_box_under_attack_refuses_every_attack_and_keeps_serving_an_honest_client() {
    let dir = tempfile::tempdir().unwrap();
    let io_timeout = IO_TIMEOUT_SECS.to_string();
    let b = BoxProcess::start_anywhere(
        &dir.path().join("box"),
        &[
            "--io-timeout".to_string(),
            io_timeout,
            "--max-body".to_string(),
            "1MiB".to_string(),
        ],
    );
    let (entry, bytes) = artifact_in(0x00..=0xff, 64 << 10);
    put_on_box(&b, &entry, &bytes);
    let before = honest_gets(&b, &entry, &bytes, 100);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let addr = b.addr();
    let put_path = {
        let (other, _) = artifact_in(0x00..=0xff, 16);
        format!("/{}", other.relative_path().display())
    };
    let mut attackers = Vec::new();
    let spawn = |f: Box<dyn Fn() + Send>| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                f();
            }
        })
    };
    // A header line of 1 MiB.
    let s = seen.clone();
    attackers.push(spawn(Box::new(move || {
        let mut head = b"GET /_status HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.resize(head.len() + (1 << 20), b'a');
        head.extend_from_slice(b"\r\n\r\n");
        s.record("huge header", attack(addr, &head, std::iter::empty()));
    })));
    // Bodies over the 1 MiB limit: declared (2 GiB), and chunked (4 MiB sent).
    let s = seen.clone();
    let path = put_path.clone();
    attackers.push(spawn(Box::new(move || {
        let declared = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            2u64 << 30
        );
        s.record(
            "huge body",
            attack(addr, declared.as_bytes(), std::iter::empty()),
        );
        let chunked =
            format!("PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = [b"10000\r\n".as_slice(), &[7u8; 0x10000], b"\r\n"].concat();
        let body = std::iter::repeat_n(chunk, 64);
        s.record("huge body", attack(addr, chunked.as_bytes(), body));
    })));
    // Traversal and malformed keys, read and write.
    let s = seen.clone();
    let paths = bad_paths(&entry);
    attackers.push(spawn(Box::new(move || {
        for path in &paths {
            let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.record("bad path", attack(addr, get.as_bytes(), std::iter::empty()));
            let put = format!(
                "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nevil"
            );
            s.record("bad path", attack(addr, put.as_bytes(), std::iter::empty()));
        }
    })));
    // The slowloris: a byte per connection every 100 ms, headers that never end.
    let s = seen.clone();
    let stopping = stop.clone();
    attackers.push(std::thread::spawn(move || {
        let open = || {
            let mut stream = TcpStream::connect(addr).ok()?;
            stream
                .write_all(b"GET /_status HTTP/1.1\r\nX-Slow: ")
                .ok()?;
            stream.set_nonblocking(true).ok()?;
            s.slowloris_open.fetch_add(1, Ordering::Relaxed);
            Some(stream)
        };
        let mut streams: Vec<Option<TcpStream>> = (0..SLOWLORIS).map(|_| open()).collect();
        while !stopping.load(Ordering::Relaxed) {
            for slot in &mut streams {
                let alive = slot.as_mut().is_some_and(|stream| {
                    let mut buf = [0u8; 256];
                    // An answer or the end: the box cut it off.
                    let heard = stream.read(&mut buf).is_ok();
                    !heard && stream.write_all(b"a").is_ok()
                });
                if !alive {
                    if slot.is_some() {
                        s.slowloris_cut.fetch_add(1, Ordering::Relaxed);
                    }
                    *slot = open();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }));

    common::wait_until("the slowloris has its connections open", || {
        seen.slowloris_open.load(Ordering::Relaxed) >= SLOWLORIS as u64
    });
    let attack_start = Instant::now();
    let during = honest_gets(&b, &entry, &bytes, 100);
    if let Some(rest) = ATTACK.checked_sub(attack_start.elapsed()) {
        std::thread::sleep(rest);
    }
    // Every slowloris connection is cut off once it has idled past the io timeout; on a loaded
    // machine the attacker may take a while to see it, so the attack goes on until it has (the
    // wait itself is bounded: a box that never cuts them off fails here).
    common::wait_until("every slowloris connection is cut off", || {
        seen.slowloris_cut.load(Ordering::Relaxed) >= SLOWLORIS as u64
    });
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.join().expect("an attacker");
    }

    let (p50, p99, max) = summary(&during);
    let (b50, b99, bmax) = summary(&before);
    assert!(
        max < GET_BOUND,
        "an honest GET took {max:?} during the attack"
    );
    for attack in ["huge header", "huge body", "bad path"] {
        let statuses = seen.of(attack);
        assert!(!statuses.is_empty(), "the {attack} attack never ran");
        let let_in: Vec<_> = statuses
            .iter()
            .filter(|s| (200..300).contains(*s))
            .collect();
        assert!(let_in.is_empty(), "{attack}: answered {let_in:?}");
    }
    let bad = seen.of("bad path");
    assert!(bad.iter().all(|s| *s == 400), "bad paths: {bad:?}");
    assert!(
        seen.of("huge body").contains(&413),
        "{:?}",
        seen.of("huge body")
    );
    let header = seen.of("huge header");
    assert!(header.iter().all(|s| *s == 431 || *s == 0), "{header:?}");
    let cut = seen.slowloris_cut.load(Ordering::Relaxed);
    assert!(
        cut >= SLOWLORIS as u64,
        "only {cut} slowloris connections were cut off (io timeout {IO_TIMEOUT_SECS} s)"
    );
    common::wait_until("the box has cleaned up after the refused bodies", || {
        temp_files(b.root()).is_empty()
    });
    let held: Vec<Entry> = common::entries(b.root())
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        held,
        vec![entry],
        "the box holds only what the honest client put"
    );
    assert_sound(None, &[b.root()]);

    let count = |attack| seen.of(attack).len();
    report(
        "hostile requests while serving",
        "all refused (400/413/431/cut off); 100 honest GETs served",
        &format!(
            "{} bad paths → 400, {} huge bodies → 413/closed, {} 1 MiB headers → 431/closed, \
             {SLOWLORIS} slowloris conns ({cut} cut off at {IO_TIMEOUT_SECS} s); \
             100 GETs p50/p99/max {p50:.1?}/{p99:.1?}/{max:.1?} (before: {b50:.1?}/{b99:.1?}/{bmax:.1?})",
            count("bad path"),
            count("huge body"),
            count("huge header"),
        ),
    );
}
