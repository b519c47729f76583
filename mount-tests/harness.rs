//! Mounting for the tests: a `dune-cachefs mount` process with its own mount point, stopped and
//! cleaned up whatever happens to the test.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;

use crate::common::{self, WAIT_DEADLINE};

/// Whether this machine can mount. If not: a loud message and `false` (the test returns), or,
/// under CI, a failure — a suite that skips its mount tests must not look green there.
pub fn fuse_available() -> bool {
    let root = rustix::process::geteuid().is_root();
    let device = Path::new("/dev/fuse").exists();
    if root && device {
        return true;
    }
    let why = format!("mount tests need root and /dev/fuse (root: {root}, /dev/fuse: {device})");
    if std::env::var_os("CI").is_some() || std::env::var_os("DUNE_CACHEFS_REQUIRE_FUSE").is_some() {
        panic!("{why}; CI must run them");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

/// A running mount. Dropping it unmounts (SIGTERM, then a lazy unmount if needed) and kills the
/// process, so a failing test never leaves a mount behind.
pub struct Mount {
    child: Option<Child>,
    /// The mount point.
    pub point: PathBuf,
    /// The store it presents.
    pub store: PathBuf,
    config: Option<PathBuf>,
    log: PathBuf,
    _dir: TempDir,
}

impl Mount {
    /// Mounts `store` (created if missing), with `config` if given and extra flags.
    pub fn start(store: &Path, config: Option<&Path>, extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir for the mount point");
        let point = dir.path().join("db");
        fs::create_dir(&point).expect("mount point");
        Mount::start_at(store, config, extra, &point, dir)
    }

    /// Mounts at a given mount point; `dir` keeps the mount's log (and goes with the mount).
    pub fn start_at(
        store: &Path,
        config: Option<&Path>,
        extra: &[&str],
        point: &Path,
        dir: TempDir,
    ) -> Mount {
        let mut mount = Mount {
            child: None,
            point: point.to_path_buf(),
            store: store.to_path_buf(),
            config: config.map(Path::to_path_buf),
            log: dir.path().join("mount.log"),
            _dir: dir,
        };
        mount.spawn(extra);
        mount
    }

    /// Mounts the same store at the same point again, after [`Mount::kill9`]: with `--recover`
    /// in `extra` over the dead mount, or after it was detached.
    pub fn remount(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "remount of a running mount");
        self.spawn(extra);
    }

    /// Starts the mount process and waits until its status file answers. The log is appended
    /// to, so a remount's log follows the killed run's.
    fn spawn(&mut self, extra: &[&str]) {
        let mut command = common::dune_cachefs_command();
        command
            .env("RUST_LOG", "info")
            .arg("mount")
            .arg("--store")
            .arg(&self.store);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command.args(extra).arg(&self.point);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("mount log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dune-cachefs mount");
        self.child = Some(child);
        let status = self.point.join(".dune-cachefs-status");
        let deadline = Instant::now() + WAIT_DEADLINE;
        while !status.exists() {
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                // Reaped: the guard must not signal its pid, which may be reused.
                self.child = None;
                panic!("mount exited early ({exit}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the mount point is in the mount table.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.point)
    }

    /// Stops the mount with SIGTERM and waits for the process to exit and the mount to go.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("stopped once");
        common::signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mount ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the mount process with SIGKILL, leaving a dead mount behind (as a crash would):
    /// the mount point answers ENOTCONN until detached or [`Mount::remount`]ed with `--recover`.
    /// Dropping the `Mount` detaches it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("killed once");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            common::signal(child.id(), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A mount started over a dead one stacks on it: detach every layer.
        for _ in 0..4 {
            if !is_mounted(&self.point) {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// Whether `point` is a mount point now (from /proc/self/mounts).
pub fn is_mounted(point: &Path) -> bool {
    mounts_at(point) > 0
}

/// How many mounts are stacked on `point` now (from /proc/self/mounts).
pub fn mounts_at(point: &Path) -> usize {
    let table = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    table
        .lines()
        .filter(|line| line.split(' ').nth(1) == Some(point.as_ref()))
        .count()
}
