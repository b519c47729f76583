//! `dune-cachefs route` run as a user would: the built binary against config files on disk.

use std::path::Path;
use std::process::{Command, Output};

const THREE_NODES: &str = "\
(lang dune-distributed-cache 1.0)
; zero takes the low half, one and two split the rest unevenly
(node (hostname http://zero:8080) (range 0x0000 0x7fff))
(node (hostname http://one:8080/) (range 0x8 0xbf))
(node (hostname https://two.example/cache) (range 0xc0 0xff))
";

fn route(config: &Path, key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dune-cachefs"))
        .arg("route")
        .arg("--config")
        .arg(config)
        .arg(key)
        .output()
        .expect("run dune-cachefs")
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.sexp");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn prints_the_owner_at_range_edges() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), THREE_NODES);
    for (key, want) in [
        ("00000000000000000000000000000000", "http://zero:8080"),
        ("7fffffffffffffffffffffffffffffff", "http://zero:8080"),
        ("80000000000000000000000000000000", "http://one:8080"),
        ("bfffffffffffffffffffffffffffffff", "http://one:8080"),
        (
            "c0000000000000000000000000000000",
            "https://two.example/cache",
        ),
        (
            "ffffffffffffffffffffffffffffffff",
            "https://two.example/cache",
        ),
    ] {
        let out = route(&config, key);
        assert_eq!(out.status.code(), Some(0), "{key}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{want}\n"),
            "{key}"
        );
        assert!(out.stderr.is_empty(), "{key}: {out:?}");
    }
}

#[test]
fn a_config_with_a_gap_is_refused_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "(lang dune-distributed-cache 1.0)\n\
         (node (hostname http://zero:8080) (range 0x0000 0x7fff))\n\
         (node (hostname http://one:8080) (range 0x9000 0xffff))\n",
    );
    let out = route(&config, "00000000000000000000000000000000");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "no node owns keys 80000000000000000000000000000000 to 8fffffffffffffffffffffffffffffff"
        ),
        "{stderr}"
    );
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

#[test]
fn a_malformed_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), THREE_NODES);
    for bad in ["7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "7fff", "not-a-key"] {
        let out = route(&config, bad);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(out.stdout.is_empty(), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("malformed key {bad:?}")),
            "{stderr}"
        );
    }
}

#[test]
fn a_missing_config_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.sexp");
    let out = route(&absent, "00000000000000000000000000000000");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&absent.display().to_string()), "{stderr}");
    assert!(stderr.contains("cannot read it"), "{stderr}");
}
