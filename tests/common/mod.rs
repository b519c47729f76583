//! What the integration tests share (and `mount-tests/` can share, through
//! `#[path = "../tests/common/mod.rs"] mod common;`): a real Dune cache built by the real Dune 2.9,
//! the `dune-cachefs` binary run with a deadline, cache box processes on loopback ports, cluster
//! configs, signals and raw HTTP, nginx as a dumb box or as a TLS reverse proxy in front of boxes,
//! and the certificates for it; a relay that delays or throttles what passes through it
//! (`relay.rs`), stopping the tests' own servers (`stopping.rs`), and growing or shrinking a
//! cluster of boxes (`growth.rs`).
//!
//! Every wait has a deadline and panics with a message saying what it waited for, and every child
//! process is killed when its owner is dropped, so a failing test leaves nothing running.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod growth;
pub mod kerberos;
pub mod relay;
pub mod seaweed;
pub mod stopping;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::dune::key::Key;
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use rustix::process::{Pid, Signal};
use tempfile::TempDir;

/// The longest any single command of a test may take (a push of the whole real cache is well
/// under a second here; this is for a loaded CI machine, and turns a hang into a clear failure).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// The longest a test waits for a process to come up or for a condition to become true.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

// ---- the real Dune cache ------------------------------------------------------------------------

/// A real Dune cache, and the built fixture project whose `_build` holds the other links to its
/// artifacts. Both live in `_tmp` and go with it.
pub struct RealCache {
    _tmp: TempDir,
    /// The cache's `db/` directory.
    pub db: PathBuf,
}

/// Builds the fixture (`tests/fixtures/ocaml-project`) with the real Dune 2.9 into a fresh cache,
/// through `scripts/make-dune-cache`. Dune is a hard requirement: without it this panics (the test
/// command, `scripts/test`, installs it through `scripts/install-deps`).
pub fn build_real_cache() -> RealCache {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("dune").is_file()));
    assert!(
        found,
        "`dune` is not on PATH. These tests need the real Dune 2.9: run `scripts/install-deps` \
         as root (Debian 12's ocaml-nox and ocaml-dune); `scripts/test` does it for you."
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-dune-cache");
    let mut command = Command::new(&script);
    command
        .arg(tmp.path().join("cache"))
        .arg(tmp.path().join("project"));
    let out = run(&mut command, COMMAND_DEADLINE);
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.describe()
    );
    let db = PathBuf::from(out.stdout.trim());
    assert!(
        db.is_dir(),
        "make-dune-cache printed {db:?}, not a directory"
    );
    RealCache { _tmp: tmp, db }
}

/// A real Dune cache shared by the tests of one binary that run at the same time, for tests that
/// only read it: built once while any of them holds it, removed when the last one drops it.
pub fn shared_real_cache() -> Arc<RealCache> {
    static SHARED: Mutex<Weak<RealCache>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cache) = shared.upgrade() {
        return cache;
    }
    let cache = Arc::new(build_real_cache());
    *shared = Arc::downgrade(&cache);
    cache
}

/// Every cache entry under `db`, by the project's own definition of one (`Entry`), with its path,
/// sorted.
pub fn entries(db: &Path) -> Vec<(Entry, PathBuf)> {
    fn walk(db: &Path, dir: &Path, out: &mut Vec<(Entry, PathBuf)>) {
        for item in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}")) {
            let path = item.expect("dir entry").path();
            if path.is_dir() {
                walk(db, &path, out);
            } else if let Some(entry) = Entry::from_relative_path(path.strip_prefix(db).unwrap()) {
                out.push((entry, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(db, db, &mut out);
    out.sort();
    out
}

/// The files in the temp directory of a store or box root.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    let dir = root.join(dune_cachefs::store::TEMP_DIR);
    match fs::read_dir(&dir) {
        Ok(items) => items.map(|i| i.expect("temp dir entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {dir:?}: {e}"),
    }
}

/// The artifacts under `db`, with their paths.
pub fn artifacts(db: &Path) -> Vec<(Key, PathBuf)> {
    entries(db)
        .into_iter()
        .filter(|(e, _)| e.kind == EntryKind::File)
        .map(|(e, p)| (e.key, p))
        .collect()
}

/// The metadata entries under `db`, with their paths.
pub fn metadata_entries(db: &Path) -> Vec<(Entry, PathBuf)> {
    entries(db)
        .into_iter()
        .filter(|(e, _)| matches!(e.kind, EntryKind::Meta(_)))
        .collect()
}

/// A file's permission bits.
pub fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path:?}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

// ---- running commands ---------------------------------------------------------------------------

/// What a finished command did.
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout, lossily decoded.
    pub stdout: String,
    /// Its stdout, byte for byte.
    pub stdout_bytes: Vec<u8>,
    /// Its stderr, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Status and both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command running in the background in its own process group, killed with everything it
/// started (a script's children too) if dropped before [`Running::wait`] or past its deadline.
pub struct Running {
    child: Option<Child>,
    what: String,
    out_path: PathBuf,
    err_path: PathBuf,
    _dir: TempDir,
}

impl Running {
    /// Starts `command`. Its output goes to files (not pipes), so a chatty command cannot block
    /// on a full pipe while nobody reads it.
    pub fn spawn(command: &mut Command) -> Running {
        let dir = tempfile::tempdir().expect("temp dir for output");
        let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
        Running::start(command, out_path, err_path, dir)
    }

    /// Starts `command` (a server) with its stdout and stderr both going to `log`, which outlives
    /// it for failure messages.
    pub fn spawn_logged(command: &mut Command, log: &Path) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        Running::start(command, log.to_path_buf(), log.to_path_buf(), dir)
    }

    fn start(command: &mut Command, out_path: PathBuf, err_path: PathBuf, dir: TempDir) -> Running {
        let stdout = File::create(&out_path).expect("stdout file");
        let stderr = match out_path == err_path {
            true => stdout.try_clone().expect("stdout file"),
            false => File::create(&err_path).expect("stderr file"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        Running {
            child: Some(child),
            what: format!("{command:?}"),
            out_path,
            err_path,
            _dir: dir,
        }
    }

    /// Waits for it to finish; kills it and panics if that takes longer than `limit`.
    pub fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.child.take().expect("waited once");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                break status;
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                panic!(
                    "{} did not finish within {limit:?}; it was killed. stdout:\n{}\nstderr:\n{}",
                    self.what,
                    fs::read_to_string(&self.out_path).unwrap_or_default(),
                    fs::read_to_string(&self.err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout_bytes = fs::read(&self.out_path).unwrap_or_default();
        let stderr = fs::read(&self.err_path).unwrap_or_default();
        Output {
            status,
            stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
            stdout_bytes,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Running {
    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not waited for");
        child.try_wait().expect("wait for child").is_none()
    }

    /// Kills it (SIGKILL, its whole process group: a crash) and reaps it.
    pub fn kill(mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child);
        }
        self.child = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child);
        }
    }
}

/// Kills (SIGKILL) the process group `child` leads, and reaps `child`.
fn kill_group(child: &mut Child) {
    if let Some(group) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    let _ = child.wait();
}

/// Runs `command` to completion, killing it and panicking if it takes longer than `limit`.
pub fn run(command: &mut Command, limit: Duration) -> Output {
    Running::spawn(command).wait(limit)
}

/// The `dune-cachefs` binary under test, as a command to add arguments to.
pub fn dune_cachefs_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dune-cachefs"));
    // Warnings and errors only: the tests read stdout, and stderr is for diagnosis.
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `dune-cachefs ARGS...` with the standard deadline.
pub fn dune_cachefs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run(dune_cachefs_command().args(args), COMMAND_DEADLINE)
}

/// Runs `dune-cachefs push --config CONFIG DB` with the standard deadline.
pub fn push(config: &Path, db: &Path) -> Output {
    dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        db.as_os_str(),
    ])
}

/// Serves every connection `listener` accepts with `serve`, each on a thread of its own, until
/// the server's `connections` (which track every socket, so stopping closes them all) say stop:
/// the accepting loop of the tests' fake servers.
pub fn serve_each<S: Send + Sync + 'static>(
    listener: TcpListener,
    shared: Arc<S>,
    connections: fn(&S) -> &stopping::Connections,
    serve: fn(&S, TcpStream),
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if connections(&shared).stopped() {
                return;
            }
            let Ok(stream) = stream else { continue };
            connections(&shared).track(&stream);
            let shared = shared.clone();
            std::thread::spawn(move || serve(&shared, stream));
        }
    });
}

/// The `get` arguments for `entry` under `config`, writing to `out`.
pub fn get_args(config: &Path, entry: &Entry, out: &Path) -> Vec<String> {
    let mut args = vec![
        "get".to_string(),
        "--config".to_string(),
        config.display().to_string(),
        entry.key.to_string(),
        "-o".to_string(),
        out.display().to_string(),
    ];
    if let EntryKind::Meta(v) = entry.kind {
        args.extend([
            "--meta".to_string(),
            "--meta-version".to_string(),
            if v == MetaVersion::V4 { "4" } else { "5" }.to_string(),
        ]);
    }
    args
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after [`WAIT_DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT_DEADLINE:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32).expect("a child's pid is positive");
    rustix::process::kill_process(pid, signal)
        .unwrap_or_else(|e| panic!("cannot send {signal:?} to {pid:?}: {e}"));
}

// ---- ports --------------------------------------------------------------------------------------

/// The first port of the kernel's ephemeral range, which outgoing connections take ports from.
pub fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port nobody listens on now.
///
/// It is taken *below* the kernel's ephemeral range, where neither `bind(port 0)` nor outgoing
/// connections ever get their ports: so a port stays free while its box is dead, and a test can
/// restart the box on it. Candidates are spread by process and call, and each one is checked by
/// binding it; a box that still loses a race for its port is restarted on another by its starter.
pub fn free_port() -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let low = u32::from(ephemeral_low());
    let first = 10_000;
    let span = low.saturating_sub(first).max(1000);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(nanos)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
    for _ in 0..1000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let port = (first + (seed >> 8) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range after 1000 tries");
}

// ---- raw HTTP -----------------------------------------------------------------------------------

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercased) and values.
    pub headers: Vec<(String, String)>,
    /// The body as received (not de-chunked: the box never chunks what tests read).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a whole HTTP/1.1 answer (status line, headers, body).
pub fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    })
}

/// Sends `head` (the request line and headers, without the blank line; `Connection: close` is
/// added) and `body` exactly as given over a fresh connection, and reads the answer to the end.
/// Raw, so paths like `/files/v4/../x` reach the server unnormalised.
pub fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
    stream.set_write_timeout(Some(WAIT_DEADLINE)).unwrap();
    let mut request = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // The server may answer and close before reading a refused body: a failed write is fine as
    // long as an answer comes back.
    let _ = stream.write_all(&request);
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            !answer.is_empty() || e.kind() == std::io::ErrorKind::ConnectionReset,
            "reading the answer to {head:?} from {addr}: {e}"
        );
    }
    parse_response(&answer).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {head:?} from {addr}: {:?}",
            String::from_utf8_lossy(&answer)
        )
    })
}

/// `raw_request` for a `PUT` of `body` with its `Content-Length`.
pub fn raw_put(addr: SocketAddr, path: &str, extra_headers: &str, body: &[u8]) -> RawResponse {
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}{extra_headers}",
        body.len()
    );
    raw_request(addr, &head, body)
}

/// `raw_request` for a `GET`.
pub fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test"), b"")
}

// ---- cache boxes --------------------------------------------------------------------------------

/// A `dune-cachefs box` process on a loopback port, killed (SIGKILL, even when stopped) when
/// dropped. Its stderr goes to `box.log` beside its root, for failure messages.
pub struct BoxProcess {
    child: Child,
    args: Vec<String>,
    root: PathBuf,
    port: u16,
    url: String,
    log: PathBuf,
}

impl BoxProcess {
    /// Starts a box on `root` and `port` with extra `args` (`--config`, `--node`, limits) and waits
    /// until it answers as itself. `Err` with its log when it exited instead (typically: the port
    /// was taken meanwhile), so the caller can try another port.
    pub fn start(root: &Path, port: u16, args: &[String]) -> Result<BoxProcess, String> {
        let log = root.with_extension("log");
        let mut all = vec![
            "box".to_string(),
            "--root".to_string(),
            root.display().to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
        ];
        all.extend_from_slice(args);
        // A box names itself by its node URL (behind a proxy, not its own address), else by the
        // address it listens on.
        let url = args
            .iter()
            .position(|a| a == "--node")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let child = spawn_box(&all, &log);
        let mut process = BoxProcess {
            child,
            args: all,
            root: root.to_path_buf(),
            port,
            url,
            log,
        };
        process.wait_ready()?;
        Ok(process)
    }

    /// Starts a box on `root` owning every key, on a free port.
    pub fn start_anywhere(root: &Path, args: &[String]) -> BoxProcess {
        let mut last = String::new();
        for _ in 0..5 {
            match BoxProcess::start(root, free_port(), args) {
                Ok(process) => return process,
                Err(log) => last = log,
            }
        }
        panic!("a box on {root:?} would not start on any of 5 ports; last log:\n{last}");
    }

    /// The box's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The box's URL, as its `X-Dune-Cachefs-Box` header and the config name it: its `--node`,
    /// else its own address.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Its listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the box's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// Kills it with SIGKILL (no chance to clean up: a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes it (SIGSTOP): its sockets stay open and the kernel still queues connections, but
    /// nothing answers. The way a hung box looks to clients. Returns once every thread of it is
    /// stopped (the signal is delivered asynchronously).
    pub fn stop(&self) {
        signal(self.pid(), Signal::STOP);
        let tasks = format!("/proc/{}/task", self.pid());
        wait_until("every thread of the box is stopped", || {
            fs::read_dir(&tasks)
                .expect("the box's /proc tasks")
                .all(|task| {
                    let stat = fs::read_to_string(task.expect("task").path().join("stat"))
                        .unwrap_or_default();
                    // The state follows the parenthesised command name: `T` is stopped.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                })
        });
    }

    /// Unfreezes it (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), Signal::CONT);
    }

    /// Starts it again on the same root, port and arguments, after [`BoxProcess::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_box(&self.args, &self.log);
        if let Err(log) = self.wait_ready() {
            panic!("box on port {} did not restart:\n{log}", self.port);
        }
    }

    /// Connections waiting in its listening socket's accept queue (from `/proc/net/tcp`): how a
    /// test sees that a client is blocked on a frozen box.
    pub fn accept_queue(&self) -> u64 {
        let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let local = format!("0100007F:{:04X}", self.port);
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address, rem_address, st (0A: listening), tx_queue:rx_queue.
                (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                    .then(|| fields.get(4)?.split_once(':'))
                    .flatten()
                    .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            })
            .sum()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        let url = self.url();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for box") {
                return Err(format!("box exited ({status}):\n{}", self.log()));
            }
            // Ours, not a box of another test that took the port first: it names our root.
            if let Some(answer) = try_status(self.addr()) {
                let status: serde_json::Value =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                if answer.status == 200
                    && answer.header("x-dune-cachefs-box") == Some(&url)
                    && status["root"] == self.root.display().to_string()
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "box {url} did not answer within {WAIT_DEADLINE:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BoxProcess {
    /// Kills the box; when its test is failing, prints how it was doing and its log first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running".to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            eprintln!("--- box {} ({state}), log:\n{}", self.url(), self.log());
        }
        self.kill();
    }
}

fn spawn_box(args: &[String], log: &Path) -> Child {
    dune_cachefs_command()
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("box log file"))
        .spawn()
        .expect("spawn dune-cachefs box")
}

/// A web server (nginx, Apache) run for a test: a reverse proxy in front of boxes, or nginx as a
/// box. In its own process group, so that dropping it kills its master and workers together;
/// its logs are under its `prefix` directory.
pub struct ProxyProcess {
    child: Child,
    prefix: PathBuf,
    /// What it calls itself in its `Server` header ("nginx", "Apache").
    server: &'static str,
}

impl ProxyProcess {
    /// Takes `child`, just spawned with its files under `prefix`, once it answers as `server` on
    /// every one of `ports` (plain HTTP to a TLS port gets a 400 of its own); else says why not
    /// (it exited, or the deadline passed, with its log), and it is stopped.
    pub fn ready(
        child: Child,
        prefix: &Path,
        server: &'static str,
        ports: &[u16],
    ) -> Result<ProxyProcess, String> {
        let mut proxy = ProxyProcess {
            child,
            prefix: prefix.to_path_buf(),
            server,
        };
        let deadline = Instant::now() + WAIT_DEADLINE;
        for port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            loop {
                if let Some(status) = proxy.child.try_wait().expect("wait for the proxy") {
                    return Err(format!("{server} exited ({status}):\n{}", proxy.log()));
                }
                let answer = try_status(addr);
                if answer.is_some_and(|a| a.header("server").is_some_and(|s| s.starts_with(server)))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{server} did not answer on port {port} within {WAIT_DEADLINE:?}; log:\n{}",
                        proxy.log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(proxy)
    }

    /// Its stderr and error log so far.
    pub fn log(&self) -> String {
        let read = |name| fs::read_to_string(self.prefix.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// Its access log so far: one line per request.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.server, self.log());
        }
        kill_group(&mut self.child);
    }
}

/// `GET /_status`, if something answers it on `addr` within a second.
fn try_status(addr: SocketAddr) -> Option<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"GET /_status HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    parse_response(&answer)
}

/// Several boxes sharing one cluster config, each with its own root, all under one temp dir.
/// Dropping it kills the boxes, then removes the directory.
pub struct BoxCluster {
    /// The boxes, in config order. (Declared first: dropped before the directory.)
    pub boxes: Vec<BoxProcess>,
    /// The cluster config file.
    pub config: PathBuf,
    dir: TempDir,
}

impl BoxCluster {
    /// Starts one box per element of `ranges` (each a list of `(LO, HI)` range bounds), with a
    /// config naming them in that order, `extra_config` (optional fields) and `box_args` for
    /// every box. Retries with fresh ports if a box loses its port to a race.
    pub fn start(ranges: &[&[(&str, &str)]], extra_config: &str, box_args: &[&str]) -> BoxCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("cluster.sexp");
        let mut last = String::new();
        'attempt: for _ in 0..5 {
            let ports: Vec<u16> = ranges.iter().map(|_| free_port()).collect();
            let urls: Vec<String> = ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect();
            let nodes: Vec<(&str, &[(&str, &str)])> = urls
                .iter()
                .map(String::as_str)
                .zip(ranges.iter().copied())
                .collect();
            write_config(&config, &nodes, extra_config);
            let mut boxes = Vec::new();
            for (i, (port, url)) in ports.iter().zip(&urls).enumerate() {
                let mut args = vec![
                    "--config".to_string(),
                    config.display().to_string(),
                    "--node".to_string(),
                    url.clone(),
                ];
                args.extend(box_args.iter().map(|a| a.to_string()));
                let root = dir.path().join(format!("box{i}"));
                match BoxProcess::start(&root, *port, &args) {
                    Ok(process) => boxes.push(process),
                    Err(log) => {
                        last = log;
                        continue 'attempt;
                    }
                }
            }
            return BoxCluster { boxes, config, dir };
        }
        panic!(
            "a cluster of {} boxes would not start; last log:\n{last}",
            ranges.len()
        );
    }

    /// The directory holding the config and the boxes' roots (a place for scratch files too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config as the library reads it.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig::load(&self.config).expect("the test's own config loads")
    }

    /// The index in `boxes` of the box owning `key` under the config.
    pub fn owner_of(&self, key: &Key) -> usize {
        let config = self.cluster_config();
        let url = config.owner(key).url().to_string();
        self.boxes
            .iter()
            .position(|b| b.url() == url)
            .unwrap_or_else(|| panic!("no box runs as {url}"))
    }
}

/// Writes a cluster config: the `lang` line, `extra` (optional fields, may be empty), then one
/// `node` per `(url, ranges)`.
pub fn write_config(path: &Path, nodes: &[(&str, &[(&str, &str)])], extra: &str) {
    let mut text = String::from("(lang dune-distributed-cache 1.0)\n");
    text.push_str(extra);
    text.push('\n');
    for (url, ranges) in nodes {
        text.push_str(&format!("(node (hostname {url})"));
        for (lo, hi) in *ranges {
            text.push_str(&format!(" (range {lo} {hi})"));
        }
        text.push_str(")\n");
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

// ---- nginx as a dumb box ------------------------------------------------------------------------

/// A real nginx serving `scripts/nginx-dumb-box.conf` (WebDAV PUT) on a loopback port.
pub struct NginxBox {
    nginx: ProxyProcess,
    port: u16,
}

impl NginxBox {
    /// Starts nginx over `root` (created if missing) with its pid, logs and temp files in
    /// `prefix` (created too), accepting bodies up to `max_body` (nginx units, e.g. `1g`).
    pub fn start(root: &Path, prefix: &Path, max_body: &str) -> NginxBox {
        let nginx = nginx_binary();
        fs::create_dir_all(root).expect("nginx root");
        fs::create_dir_all(prefix).expect("nginx prefix");
        let template_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nginx-dumb-box.conf");
        let template = fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("read {template_path:?}: {e}"));
        // nginx's workers run as this account when nginx starts as root; ignored otherwise.
        let user = if rustix::process::geteuid().is_root() {
            "root"
        } else {
            "nobody"
        };
        let conf = prefix.join("nginx.conf");
        let error_log = prefix.join("error.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let text = template
                .replace("@USER@", user)
                .replace("@PREFIX@", &prefix.display().to_string())
                .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
                .replace("@ROOT@", &root.display().to_string())
                .replace("@MAX_BODY@", max_body);
            fs::write(&conf, text).expect("write nginx.conf");
            let child = spawn_nginx(Path::new(nginx), prefix, &conf, &error_log);
            // Any path outside the entries is a 400 of nginx's own.
            match ProxyProcess::ready(child, prefix, "nginx", &[port]) {
                Ok(nginx) => return NginxBox { nginx, port },
                Err(log) => last = log,
            }
        }
        panic!("nginx would not start on any of 5 ports; last log:\n{last}");
    }

    /// Its URL, for a one-node cluster config.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its error log and stderr so far.
    pub fn log(&self) -> String {
        self.nginx.log()
    }
}

// ---- TLS: certificates, and nginx as a TLS reverse proxy in front of boxes ----------------------

/// A set of certificates made by `scripts/make-certs` (see there): a CA with a server and a client
/// certificate, and an unrelated CA with a client certificate of its own.
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// Makes a fresh set in `dir` for `localhost` and `127.0.0.1`.
    pub fn make(dir: &Path) -> Certs {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs");
        let out = run(Command::new(&script).arg(dir), COMMAND_DEADLINE);
        assert!(
            out.status.success(),
            "{} failed (is openssl installed? scripts/install-deps): {}",
            script.display(),
            out.describe()
        );
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// One of its files, e.g. `ca.pem`, `client.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The optional fields of a cluster config that trust `ca` (a file name here, or `None` for
    /// the default roots) and present the client certificate `client` (`client` or
    /// `other-client`, or `None` for none).
    pub fn config_fields(&self, ca: Option<&str>, client: Option<&str>) -> String {
        let mut fields = String::new();
        if let Some(ca) = ca {
            fields.push_str(&format!("(ca_file {})\n", self.file(ca).display()));
        }
        if let Some(client) = client {
            fields.push_str(&format!(
                "(client_cert {})\n(client_key {})\n",
                self.file(&format!("{client}.pem")).display(),
                self.file(&format!("{client}.key")).display()
            ));
        }
        fields
    }
}

/// How the proxy authenticates clients (`ssl_verify_client` in `scripts/nginx-tls-proxy.conf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every request needs a client certificate (`on`).
    Always,
    /// Only writes do (`optional`).
    WritesOnly,
}

/// Starts a real nginx running `scripts/nginx-tls-proxy.conf` with its files in `prefix`
/// (created): one TLS port per box, each forwarding to that box's plain address, for `routes`
/// (public port, box address), with `certs`' server certificate and trusting its CA for
/// clients. `Err` with the log if it does not come up (typically: a port was taken meanwhile).
fn start_tls_proxy(
    prefix: &Path,
    certs: &Certs,
    auth: ClientAuth,
    routes: &[(u16, SocketAddr)],
) -> Result<ProxyProcess, String> {
    fs::create_dir_all(prefix).expect("nginx prefix");
    let template_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nginx-tls-proxy.conf");
    let template = fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("read {template_path:?}: {e}"));
    let user = if rustix::process::geteuid().is_root() {
        "root"
    } else {
        "nobody"
    };
    let text = repeat_box_block(&template, routes, |block, i, public, plain| {
        block
            .replace("@NAME@", &format!("box{i}"))
            .replace("@PUBLIC@", &format!("127.0.0.1:{public}"))
            .replace("@BOX@", &plain.to_string())
    })
    .replace("@USER@", user)
    .replace("@PREFIX@", &prefix.display().to_string())
    .replace(
        "@SERVER_CERT@",
        &certs.file("server.pem").display().to_string(),
    )
    .replace(
        "@SERVER_KEY@",
        &certs.file("server.key").display().to_string(),
    )
    .replace("@CLIENT_CA@", &certs.file("ca.pem").display().to_string())
    .replace(
        "@VERIFY_CLIENT@",
        match auth {
            ClientAuth::Always => "on",
            ClientAuth::WritesOnly => "optional",
        },
    )
    .replace("@MAX_BODY@", "1g");
    assert_no_placeholder(&text);
    let conf = prefix.join("nginx.conf");
    fs::write(&conf, text).expect("write nginx.conf");
    let child = spawn_nginx(
        Path::new(nginx_binary()),
        prefix,
        &conf,
        &prefix.join("error.log"),
    );
    let ports: Vec<u16> = routes.iter().map(|(public, _)| *public).collect();
    ProxyProcess::ready(child, prefix, "nginx", &ports)
}

/// The nodes of a cluster config whose boxes are reached through a proxy at
/// `https://HOST:PORT`, one per public port, with the ranges of the same place in `ranges`.
pub fn proxied_nodes(
    host: &str,
    public: &[u16],
    ranges: &[&[(&str, &str)]],
) -> Vec<(String, Vec<(String, String)>)> {
    public
        .iter()
        .zip(ranges)
        .map(|(port, ranges)| {
            let ranges = ranges
                .iter()
                .map(|(lo, hi)| (lo.to_string(), hi.to_string()))
                .collect();
            (format!("https://{host}:{port}"), ranges)
        })
        .collect()
}

/// Boxes behind a TLS proxy: each box listens on its own loopback port and is named in the
/// config by its public `https://127.0.0.1:PORT` URL, as a deployment would run them. Dropping
/// it stops the proxy and the boxes, then removes the directory.
pub struct TlsCluster {
    /// The proxy. (Fields drop in order: proxy, boxes, then the directory.)
    pub proxy: ProxyProcess,
    /// The boxes, in config order.
    pub boxes: Vec<BoxProcess>,
    /// The certificates.
    pub certs: Certs,
    /// A cluster config trusting the CA and presenting the CA's client certificate.
    pub config: PathBuf,
    nodes: Vec<(String, Vec<(String, String)>)>,
    dir: TempDir,
}

impl TlsCluster {
    /// Starts one box per element of `ranges` behind one proxy authenticating clients by `auth`.
    pub fn start(ranges: &[&[(&str, &str)]], auth: ClientAuth) -> TlsCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs::make(&dir.path().join("certs"));
        let mut last = String::new();
        'attempt: for attempt in 0..5 {
            let public: Vec<u16> = ranges.iter().map(|_| free_port()).collect();
            let nodes = proxied_nodes("127.0.0.1", &public, ranges);
            let cluster_dir = dir.path().join(format!("attempt{attempt}"));
            fs::create_dir(&cluster_dir).expect("attempt dir");
            let config = cluster_dir.join("cluster.sexp");
            write_nodes(
                &config,
                &nodes,
                &certs.config_fields(Some("ca.pem"), Some("client")),
            );
            let mut boxes = Vec::new();
            for (i, (url, _)) in nodes.iter().enumerate() {
                let args = [
                    "--config".to_string(),
                    config.display().to_string(),
                    "--node".to_string(),
                    url.clone(),
                ];
                let root = cluster_dir.join(format!("box{i}"));
                match BoxProcess::start(&root, free_port(), &args) {
                    Ok(process) => boxes.push(process),
                    Err(log) => {
                        last = log;
                        continue 'attempt;
                    }
                }
            }
            let routes: Vec<(u16, SocketAddr)> = public
                .iter()
                .zip(&boxes)
                .map(|(port, b)| (*port, b.addr()))
                .collect();
            match start_tls_proxy(&cluster_dir.join("nginx"), &certs, auth, &routes) {
                Ok(proxy) => {
                    return TlsCluster {
                        proxy,
                        boxes,
                        certs,
                        config,
                        nodes,
                        dir,
                    }
                }
                Err(log) => last = log,
            }
        }
        panic!("boxes behind a TLS proxy would not start; last log:\n{last}");
    }

    /// The directory holding everything (a place for scratch files too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config as the library reads it.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig::load(&self.config).expect("the test's own config loads")
    }

    /// Another config for the same nodes, with other optional fields (e.g. another client
    /// certificate, or none), written as `name` in the cluster's directory.
    pub fn config_with(&self, name: &str, fields: &str) -> PathBuf {
        let path = self.dir().join(name);
        write_nodes(&path, &self.nodes, fields);
        path
    }
}

/// A proxy's config from a template in `scripts/`: the lines from its `BOX BEGIN` line to its
/// `BOX END` line repeated once per route, each copy filled by `fill` (the block, the route's
/// index, its public port and its box's address), as the templates' headers say.
fn repeat_box_block(
    template: &str,
    routes: &[(u16, SocketAddr)],
    fill: impl Fn(&str, usize, u16, SocketAddr) -> String,
) -> String {
    let line_start = |i: usize| template[..i].rfind('\n').map_or(0, |j| j + 1);
    let begin = line_start(
        template
            .find("# ---- BOX BEGIN")
            .expect("BOX BEGIN in the template"),
    );
    let end = template[begin..]
        .find("# ---- BOX END")
        .map(|i| begin + i)
        .and_then(|i| template[i..].find('\n').map(|j| i + j + 1))
        .expect("BOX END in the template");
    let mut boxes = String::new();
    for (i, (public, plain)) in routes.iter().enumerate() {
        boxes.push_str(&fill(&template[begin..end], i, *public, *plain));
    }
    format!("{}{boxes}{}", &template[..begin], &template[end..])
}

/// Panics if a filled template still has a placeholder outside its comments.
fn assert_no_placeholder(text: &str) {
    // A placeholder is `@NAME@`, NAME in capitals and underscores.
    let placeholder = |line: &str| {
        let parts: Vec<&str> = line.split('@').collect();
        parts.len() > 2
            && parts[1..parts.len() - 1].iter().any(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
    };
    let left = text
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && placeholder(l));
    assert!(left.is_none(), "a placeholder is left: {left:?}");
}

/// [`write_config`] for owned node lists.
fn write_nodes(path: &Path, nodes: &[(String, Vec<(String, String)>)], extra: &str) {
    let ranges: Vec<Vec<(&str, &str)>> = nodes
        .iter()
        .map(|(_, r)| {
            r.iter()
                .map(|(lo, hi)| (lo.as_str(), hi.as_str()))
                .collect()
        })
        .collect();
    let nodes: Vec<(&str, &[(&str, &str)])> = nodes
        .iter()
        .zip(&ranges)
        .map(|((url, _), r)| (url.as_str(), r.as_slice()))
        .collect();
    write_config(path, &nodes, extra);
}

/// The nginx binary, or a panic saying how to install it.
fn nginx_binary() -> &'static str {
    ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .find(|n| Command::new(n).arg("-v").output().is_ok())
        .expect("nginx is not installed: run scripts/install-deps as root (Debian's nginx)")
}

/// Runs `f` on every item from `threads` threads: for checks that spawn one process per entry
/// (each `get` waits on an fsync more than on the CPU). A panic in `f` fails the caller.
pub fn parallel_each<T: Sync>(items: &[T], threads: usize, f: impl Fn(usize, &T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut i = next.fetch_add(1, Ordering::Relaxed);
                while let Some(item) = items.get(i) {
                    f(i, item);
                    i = next.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
}

/// Starts nginx in the foreground with its own prefix, config and error log, in a process group
/// of its own (so its workers die with it), its stderr kept in `prefix/stderr.log`.
fn spawn_nginx(nginx: &Path, prefix: &Path, conf: &Path, error_log: &Path) -> Child {
    Command::new(nginx)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(error_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(prefix.join("stderr.log")).expect("nginx stderr file"))
        .process_group(0)
        .spawn()
        .expect("spawn nginx")
}
