//! Mounting for the tests: a `dune-cachefs mount` process with its own mount point, stopped and
//! cleaned up whatever happens to the test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::Signal;
use tempfile::TempDir;

use crate::common::{self, BoxCluster, BoxProcess, WAIT_DEADLINE};

/// Whether this machine can mount. If not: a loud message and `false` (the test returns), or,
/// under CI, a failure — a suite that skips its mount tests must not look green there.
pub fn fuse_available() -> bool {
    let root = rustix::process::geteuid().is_root();
    let device = Path::new("/dev/fuse").exists();
    if root && device {
        return true;
    }
    skip_unless_required(
        &format!("mount tests need root and /dev/fuse (root: {root}, /dev/fuse: {device})"),
        "DUNE_CACHEFS_REQUIRE_FUSE",
    );
    false
}

/// A test cannot run here, for the reason `why`: says so loudly on stderr, so that the caller
/// can return. Under CI (`CI` set), or with `require_var` set, it panics instead: a suite that
/// skips what it exists to check must not look green there.
pub fn skip_unless_required(why: &str, require_var: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os(require_var).is_some() {
        panic!("{why}; CI must run them");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
}

/// A running mount. Dropping it unmounts (SIGTERM, then a lazy unmount if needed) and kills the
/// process, so a failing test never leaves a mount behind.
pub struct Mount {
    child: Option<Child>,
    /// The mount point.
    pub point: PathBuf,
    /// The store it presents.
    pub store: PathBuf,
    log: PathBuf,
    /// Holds the mount point and the log; `None` once a killed mount handed them on.
    dir: Option<TempDir>,
}

impl Mount {
    /// Mounts `store` (created if missing), with `config` if given and extra flags.
    pub fn start(store: &Path, config: Option<&Path>, extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir for the mount point");
        let point = dir.path().join("db");
        fs::create_dir(&point).expect("mount point");
        Mount::start_at(store, config, extra, &point, dir)
    }

    /// Mounts at a given mount point (for remounting where a killed mount was).
    pub fn start_at(
        store: &Path,
        config: Option<&Path>,
        extra: &[&str],
        point: &Path,
        dir: TempDir,
    ) -> Mount {
        Mount::spawn(store, config, extra, point, dir, &[])
    }

    /// [`Mount::start`] with more variables in the mount's environment (e.g. `KRB5CCNAME`).
    pub fn start_with_env(
        store: &Path,
        config: Option<&Path>,
        env: &[(&str, std::ffi::OsString)],
    ) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir for the mount point");
        let point = dir.path().join("db");
        fs::create_dir(&point).expect("mount point");
        Mount::spawn(store, config, &[], &point, dir, env)
    }

    /// Mounts at a given mount point with more variables in the mount's environment.
    pub fn spawn(
        store: &Path,
        config: Option<&Path>,
        extra: &[&str],
        point: &Path,
        dir: TempDir,
        env: &[(&str, std::ffi::OsString)],
    ) -> Mount {
        let log = dir.path().join("mount.log");
        let mut command = common::dune_cachefs_command();
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .arg("mount")
            .arg("--store")
            .arg(store);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command.args(extra).arg(point);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("mount log"))
            .spawn()
            .expect("start dune-cachefs mount");
        let mut mount = Mount {
            child: Some(child),
            point: point.to_path_buf(),
            store: store.to_path_buf(),
            log,
            dir: Some(dir),
        };
        // Up when the status file can be read: opening it always asks the mount's process, where
        // a `stat` could be answered from the cache of a dead mount at the same place.
        let status = mount.point.join(".dune-cachefs-status");
        let deadline = Instant::now() + WAIT_DEADLINE;
        while fs::read(&status).is_err() {
            if let Some(child) = &mut mount.child {
                if let Ok(Some(exit)) = child.try_wait() {
                    panic!("mount exited early ({exit}):\n{}", mount.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "mount did not come up:\n{}",
                mount.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    /// A path inside the mount.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.point.join(relative)
    }

    /// The mount process's log (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status document.
    pub fn status(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.path(".dune-cachefs-status")).expect("status file");
        serde_json::from_str(&text).expect("status is JSON")
    }

    /// One counter of the status document.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Waits until every entry the mount fetched, or is fetching, is settled in its store (flushed
    /// and named): reads are answered before that, so a test looking at the store itself waits
    /// first.
    pub fn wait_settled(&self) {
        let deadline = Instant::now() + WAIT_DEADLINE;
        // Fetches still in flight (prefetches, fetches ahead) land, then settle, later.
        let settled = |status: serde_json::Value| {
            status["settling"].as_u64() == Some(0)
                && status["counters"]["fetches_in_flight"].as_u64() == Some(0)
        };
        while !settled(self.status()) {
            assert!(
                Instant::now() < deadline,
                "entries still settling after {WAIT_DEADLINE:?}: {}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the mount point is in the mount table.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.point)
    }

    /// Stops the mount with SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        self.wait_exit()
    }

    /// Sends the mount process SIGTERM, without waiting.
    pub fn terminate(&self) {
        common::signal(self.pid(), Signal::TERM);
    }

    /// Whether the mount process is still running.
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not waited for");
        child.try_wait().expect("wait").is_none()
    }

    /// Waits for the mount process to exit (after [`Mount::terminate`]).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("waited for once");
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mount did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the mount process with SIGKILL, leaving a dead mount behind (as a crash would). The
    /// returned guard owns the mount point from then on.
    pub fn kill9(mut self) -> DeadMount {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        DeadMount {
            point: self.point.clone(),
            log: self.log(),
            dir: self.dir.take(),
        }
    }
}

/// The mount point of a mount whose process was killed. Dropping it detaches the dead mount if
/// it is still there; [`DeadMount::remount`] mounts again at the same place.
pub struct DeadMount {
    /// The mount point.
    pub point: PathBuf,
    /// What the killed process had logged.
    pub log: String,
    dir: Option<TempDir>,
}

impl DeadMount {
    /// Mounts `store` again at the same mount point (which must be usable again, or `extra`
    /// must ask for recovery).
    pub fn remount(mut self, store: &Path, config: Option<&Path>, extra: &[&str]) -> Mount {
        let dir = self.dir.take().expect("remounted once");
        Mount::start_at(store, config, extra, &self.point, dir)
    }
}

impl Drop for DeadMount {
    fn drop(&mut self) {
        if self.dir.is_some() && is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.dir.is_none() {
            // Killed: the dead mount belongs to a `DeadMount` now.
            return;
        }
        if let Some(mut child) = self.child.take() {
            common::signal(child.id(), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// A filesystem a test mounted at `point` (a tmpfs, a loop device), unmounted when dropped:
/// lazily, so that a failing test cannot leave it busy.
pub struct MountedFs {
    pub point: PathBuf,
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// Whether `point` is a mount point now (from /proc/self/mounts).
pub fn is_mounted(point: &Path) -> bool {
    mounts_at(point) > 0
}

/// How many mounts are stacked at `point` (a recovery that mounted over a dead mount leaves 2).
pub fn mounts_at(point: &Path) -> usize {
    let table = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    table
        .lines()
        .filter(|line| line.split(' ').nth(1) == Some(point.as_ref()))
        .count()
}

// ---- boxes --------------------------------------------------------------------------------------

/// Three boxes splitting the key space in thirds by first byte.
pub const THREE_BOXES: [&[(&str, &str)]; 3] = [
    &[("0x00", "0x54")],
    &[("0x55", "0xa9")],
    &[("0xaa", "0xff")],
];

/// Three boxes holding everything in `db`, put there by the real `push`.
pub fn pushed_cluster(db: &Path) -> BoxCluster {
    let cluster = BoxCluster::start(&THREE_BOXES, "", &[]);
    let push = common::dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        db.as_os_str(),
    ]);
    assert!(push.status.success(), "push: {}", push.describe());
    cluster
}

/// A mount of `cluster` with an empty store of its own (in the cluster's directory): how a new
/// build machine starts.
pub fn mount_empty_store(cluster: &BoxCluster, extra: &[&str]) -> Mount {
    Mount::start(&cluster.dir().join("store"), Some(&cluster.config), extra)
}

/// Stores `bytes` through `mount` as the artifact `key` names, as Dune stores: a scratch file
/// written, then renamed into the cache.
pub fn store_artifact(mount: &Mount, key: &dune_cachefs::dune::key::Key, bytes: &[u8]) {
    fs::create_dir_all(mount.path("temp")).unwrap();
    fs::write(mount.path("temp/new"), bytes).unwrap();
    fs::rename(
        mount.path("temp/new"),
        mount.path(format!("files/v4/{}/{key}", key.shard())),
    )
    .expect("store an artifact through the mount");
}

/// What some boxes had answered at one moment, by `"<METHOD> <status>"`, from each one's
/// `GET /_status`: the way a test counts the network requests the mount made.
pub struct Requests(Vec<BTreeMap<String, u64>>);

impl Requests {
    /// Takes the counts of `boxes` now.
    pub fn take<'a>(boxes: impl IntoIterator<Item = &'a BoxProcess>) -> Requests {
        Requests(boxes.into_iter().map(box_requests).collect())
    }

    /// The requests the same boxes answered since `earlier` (summed over them, zero counts left
    /// out), not counting the `GET /_status` that took `earlier`.
    pub fn since(&self, earlier: &Requests) -> BTreeMap<String, u64> {
        let mut delta = BTreeMap::new();
        for (now, then) in self.0.iter().zip(&earlier.0) {
            for (outcome, count) in now {
                let mut new = count - then.get(outcome).copied().unwrap_or(0);
                if outcome == "GET 200" {
                    new -= 1;
                }
                if new > 0 {
                    *delta.entry(outcome.clone()).or_default() += new;
                }
            }
        }
        delta
    }
}

/// One box's request counts.
fn box_requests(b: &BoxProcess) -> BTreeMap<String, u64> {
    let answer = common::raw_get(b.addr(), "/_status");
    assert_eq!(
        answer.status,
        200,
        "{} /_status: {}",
        b.url(),
        answer.text()
    );
    let status: serde_json::Value = serde_json::from_slice(&answer.body).expect("status JSON");
    status["requests"]
        .as_object()
        .unwrap_or_else(|| panic!("{} /_status has no requests: {status}", b.url()))
        .iter()
        .map(|(outcome, count)| (outcome.clone(), count.as_u64().expect("a count")))
        .collect()
}

// ---- files --------------------------------------------------------------------------------------

/// The errno of a failed operation; panics naming `what` if it succeeded.
pub fn errno_of<T>(what: &str, result: io::Result<T>) -> Errno {
    match result {
        Ok(_) => panic!("{what} succeeded"),
        Err(e) => Errno::from_raw_os_error(
            e.raw_os_error()
                .unwrap_or_else(|| panic!("{what}: {e} carries no errno")),
        ),
    }
}

/// The errno that refuses writing to the file at `path` opened with `options`: the open's, or
/// the first write's if the open succeeds. (By default the kernel opens the mount's files
/// without asking it, so root, whom no mode check stops, opens an entry for writing; the mount
/// then refuses the write.)
pub fn write_refusal(what: &str, path: &Path, options: &fs::OpenOptions) -> Errno {
    use std::io::Write;
    match options.open(path) {
        Ok(mut file) => errno_of(what, file.write_all(b"x").and_then(|()| file.flush())),
        Err(e) => errno_of(what, Err::<(), _>(e)),
    }
}

/// Every file and directory under `root/<top>` for each of `tops`, by path relative to `root`:
/// `None` for a directory, the bytes for a file. What `diff -r` compares.
pub fn tree(root: &Path, tops: &[&str]) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for item in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}")) {
            let path = item.expect("dir entry").path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            if meta.is_dir() {
                out.insert(relative, None);
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
                out.insert(relative, Some(bytes));
            }
        }
    }
    let mut out = BTreeMap::new();
    for top in tops {
        out.insert(PathBuf::from(top), None);
        walk(root, &root.join(top), &mut out);
    }
    out
}

/// Asserts that two trees (from [`tree`]) hold the same paths with the same bytes, naming the
/// first differences.
pub fn assert_same_tree(
    what: &str,
    expected: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    got: &BTreeMap<PathBuf, Option<Vec<u8>>>,
) {
    let missing: Vec<_> = expected.keys().filter(|p| !got.contains_key(*p)).collect();
    let extra: Vec<_> = got.keys().filter(|p| !expected.contains_key(*p)).collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(p, bytes)| got.get(*p).is_some_and(|b| b != *bytes))
        .map(|(p, _)| p)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: {} missing (first {:?}), {} extra (first {:?}), {} differ (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        differ.len(),
        differ.first()
    );
}
