//! `dune-cachefs meta` run as a real process, on a real Dune 2.9 entry and on a broken one.

use std::path::Path;
use std::process::{Command, Output};

/// A `meta/v4` entry written by Dune 2.9 (quoted in docs/dune-cache.md, with the format).
const V4: &[u8] = b"((8:metadata)(5:files(53:.aliases/default/all-00000000000000000000000000000000\
32:acb63fbb6dc230c163646604a888be96)))";

fn meta(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dune-cachefs"))
        .arg("meta")
        .args(args)
        .arg(file)
        .output()
        .expect("the binary runs")
}

fn entry(dir: &tempfile::TempDir, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join("acb63fbb6dc230c163646604a888be96");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn readable_output_lists_each_target_under_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = entry(&dir, V4);
    let out = meta(&[], &path);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!(
            "# {}: 1 target (1 artifact, 0 directories)\n\
             acb63fbb6dc230c163646604a888be96  .aliases/default/all-00000000000000000000000000000000\n",
            path.display()
        )
    );
}

#[test]
fn json_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = meta(&["--json"], &entry(&dir, V4));
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "metadata": [],
            "files": [{
                "path": ".aliases/default/all-00000000000000000000000000000000",
                "key": "acb63fbb6dc230c163646604a888be96",
                "dir": false,
            }],
        })
    );
}

#[test]
fn malformed_entry_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = entry(&dir, b"((8:metadata)(5:files(1:a3:xyz)))");
    for args in [&[][..], &["--json"]] {
        let out = meta(args, &path);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!(
                "{} is not a valid Dune metadata entry",
                path.display()
            )),
            "{stderr}"
        );
        assert!(stderr.contains("files entry 0: malformed key"), "{stderr}");
        assert_eq!(stderr.matches("malformed key").count(), 1, "{stderr}");
    }
}

#[test]
fn csexp_errors_are_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = meta(&[], &entry(&dir, b"((8:metadata)(5:files)"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("not a canonical S-expression: input ends at offset 22"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("input ends").count(), 1, "{stderr}");
}

#[test]
fn missing_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    let out = meta(&[], &path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot open {}", path.display())),
        "{stderr}"
    );
}
