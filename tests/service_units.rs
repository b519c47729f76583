//! Running boxes and mounts as systemd services: the units in `scripts/systemd` pass
//! `systemd-analyze verify` (a unit it only warns about fails here too), and a box tells the
//! service manager it is ready (`Type=notify`) once it answers. The mount's readiness is tested
//! with the mounts (`mount-tests/operations.rs`).

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{COMMAND_DEADLINE, WAIT_DEADLINE};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd");

/// Where the units expect the binary; the copies verified here name the one under test.
const INSTALLED_BINARY: &str = "/usr/local/bin/dune-cachefs";

/// A copy of every unit in `dir`, naming the binary under test, with `edit` applied to each
/// unit's text.
fn copy_units(dir: &Path, edit: impl Fn(&str) -> String) -> Vec<PathBuf> {
    let mut copies = Vec::new();
    for item in fs::read_dir(UNITS).expect("scripts/systemd") {
        let path = item.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(INSTALLED_BINARY),
            "{path:?} runs another binary"
        );
        let text = edit(&text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_dune-cachefs")));
        let copy = dir.join(path.file_name().unwrap());
        fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    copies.sort();
    copies
}

/// The units to verify among `copies`: a template as one instance (a mount point's escaped path).
fn instances(copies: &[PathBuf]) -> Vec<String> {
    copies
        .iter()
        .map(|copy| {
            let path = copy.display().to_string();
            path.replace("@.service", "@var-cache-dune\\x2dshared-dune-db.service")
        })
        .collect()
}

/// `systemd-analyze verify` on `units`: its output.
fn verify(units: &[String]) -> common::Output {
    common::run(
        Command::new("systemd-analyze").arg("verify").args(units),
        COMMAND_DEADLINE,
    )
}

/// The box unit and the mount template verify without a warning; each restarts on failure and
/// says when it is ready; the mount detaches a dead predecessor (`--recover`) and may use
/// /dev/fuse; a unit with a mistake in it is reported, so the check can fail.
#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let copies = copy_units(dir.path(), str::to_string);
    let names: Vec<String> = copies
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["dune-cachefs-box.service", "dune-cachefs-mount@.service"]
    );
    let verified = verify(&instances(&copies));
    assert!(
        verified.status.success()
            && verified.stderr.trim().is_empty()
            && verified.stdout.trim().is_empty(),
        "systemd-analyze verify: {}",
        verified.describe()
    );
    for copy in &copies {
        let text = fs::read_to_string(copy).unwrap();
        for line in ["Restart=on-failure", "Type=notify"] {
            assert!(text.lines().any(|l| l == line), "{copy:?} lacks {line}");
        }
    }
    let mount = fs::read_to_string(&copies[1]).unwrap();
    let exec = mount.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains(" mount --recover ") && exec.ends_with(" %f"),
        "{exec}"
    );
    assert!(mount.lines().any(|l| l == "DeviceAllow=/dev/fuse rw"));

    let broken = tempfile::tempdir().unwrap();
    let copies = copy_units(broken.path(), |text| {
        text.replace("Restart=on-failure", "Restart=sometimes")
    });
    let refused = verify(&instances(&copies));
    assert!(
        refused.stderr.contains("sometimes"),
        "a bad Restart= went unreported: {}",
        refused.describe()
    );
}

/// A box started with `$NOTIFY_SOCKET` sends `READY=1` there, and answers at once after it.
#[test]
fn a_box_tells_systemd_when_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT_DEADLINE)).unwrap();
    let port = common::free_port();
    let mut child = common::dune_cachefs_command()
        .args(["box", "--root"])
        .arg(dir.path().join("root"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("start a box");
    let mut buf = [0; 64];
    let received = socket.recv(&mut buf);
    let answered = received
        .is_ok()
        .then(|| common::raw_get(format!("127.0.0.1:{port}").parse().unwrap(), "/_status"));
    let _ = child.kill();
    let _ = child.wait();
    let n = received.expect("READY=1 from the box");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(answered.map(|r| r.status), Some(200));
}
