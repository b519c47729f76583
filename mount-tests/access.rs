//! Who may use a mount, and what is writable in it.
//!
//! By default only the mounting user can use the mount (FUSE without `allow_other`: the kernel
//! refuses everyone else, root included). `--allow-other` opens it to other users for reading;
//! the kernel then checks the modes the mount reports (it mounts with `default_permissions`), so
//! other users cannot write into entries, the fixed directories, or Dune's scratch files of the
//! mounting user. Whoever the user, nothing in the mount is writable but what Dune's write path
//! needs: scratch files and directories in the root, and installing a scratch file as an entry by
//! `rename`/`link` (verified). These tests mount as root and switch to `nobody` with `setpriv` for
//! the other user.
//!
//! Mounting as root goes through mount(2) directly, so `allow_other` needs no `user_allow_other`
//! in /etc/fuse.conf; a non-root mount goes through fusermount3, which does need it.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustix::io::Errno;

use crate::common::{self, Output, RealCache};
use crate::harness::{fuse_available, write_refusal, Mount};
use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

/// A store holding a copy of the real cache, and an artifact and a metadata entry of it with
/// their paths in the original (kept while the fixture lives).
struct Fixture {
    _cache: Arc<RealCache>,
    _dir: tempfile::TempDir,
    store: PathBuf,
    artifact: (Entry, PathBuf),
    meta: (Entry, PathBuf),
}

fn fixture() -> Fixture {
    let cache = common::shared_real_cache();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let copy = common::run(
        Command::new("cp").arg("-a").arg(&cache.db).arg(&store),
        common::COMMAND_DEADLINE,
    );
    assert!(copy.status.success(), "cp -a: {}", copy.describe());
    let all = common::entries(&cache.db);
    let artifact = all
        .iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .cloned()
        .expect("an artifact");
    let meta = all
        .iter()
        .find(|(e, _)| e.kind != EntryKind::File)
        .cloned()
        .expect("a metadata entry");
    Fixture {
        _cache: cache,
        _dir: dir,
        store,
        artifact,
        meta,
    }
}

/// Mounts `store` with `extra` flags, the mount point reachable by other users (its temp
/// parent directory is 0700 otherwise, which would refuse them before FUSE is asked).
fn mount(store: &Path, extra: &[&str]) -> Mount {
    let mount = Mount::start(store, None, extra);
    let parent = mount.point.parent().expect("the mount point's parent");
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    mount
}

/// Runs `program args...` as `nobody` (uid and gid 65534, no supplementary groups).
fn as_nobody(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(program);
    for arg in args {
        command.arg(arg);
    }
    common::run(&mut command, common::COMMAND_DEADLINE)
}

/// Asserts that `out` failed with "Permission denied" (EACCES).
fn assert_denied(out: &Output, what: &str) {
    assert!(
        !out.status.success() && out.stderr.contains("Permission denied"),
        "{what} should fail with EACCES: {}",
        out.describe()
    );
}

/// The error kind of an operation that must fail.
fn kind_of<T: std::fmt::Debug>(result: std::io::Result<T>, what: &str) -> ErrorKind {
    result
        .map(|ok| panic!("{what} succeeded ({ok:?}); it must be refused"))
        .unwrap_err()
        .kind()
}

/// Asserts that an operation failed with EACCES (or EPERM: Rust files both as
/// `PermissionDenied`).
fn denied<T: std::fmt::Debug>(result: std::io::Result<T>, what: &str) {
    assert_eq!(kind_of(result, what), ErrorKind::PermissionDenied, "{what}");
}

#[test]
fn by_default_only_the_mounting_user_can_use_the_mount() {
    if !fuse_available() {
        return;
    }
    let f = fixture();
    let mount = mount(&f.store, &[]);
    let entry = mount.path(f.artifact.0.relative_path());
    let parent = mount.point.parent().unwrap();

    // The way to the mount is open to nobody: the refusals below are FUSE's.
    let out = as_nobody("stat", &[&parent]);
    assert!(
        out.status.success(),
        "stat of the parent: {}",
        out.describe()
    );
    assert_denied(
        &as_nobody("ls", &[&mount.point]),
        "ls of the mount by nobody",
    );
    assert_denied(
        &as_nobody("stat", &[&mount.point]),
        "stat of the mount by nobody",
    );
    assert_denied(&as_nobody("cat", &[&entry]), "cat of an entry by nobody");

    // The mounting user reads it.
    assert!(fs::read(&entry).unwrap() == fs::read(&f.artifact.1).unwrap());
}

#[test]
fn with_allow_other_other_users_read_entries_and_write_nothing() {
    if !fuse_available() {
        return;
    }
    let f = fixture();
    let mount = mount(&f.store, &["--allow-other"]);
    let (artifact, artifact_original) = &f.artifact;
    let (meta, meta_original) = &f.meta;
    let entry = mount.path(artifact.relative_path());
    let shard = entry.parent().unwrap().to_path_buf();

    // Scratch files of the mounting user, as Dune leaves them (0644, 0755).
    fs::create_dir(mount.path("test-scratch")).unwrap();
    let scratch = mount.path("test-scratch/of-root");
    fs::write(&scratch, b"root's\n").unwrap();

    // Reading works: listings, entries byte for byte, the status file.
    let out = as_nobody("ls", &[&shard]);
    assert!(
        out.status.success() && out.stdout.contains(&artifact.key.to_string()),
        "ls of a shard by nobody: {}",
        out.describe()
    );
    for (entry, original) in [(artifact, artifact_original), (meta, meta_original)] {
        let out = as_nobody("cat", &[&mount.path(entry.relative_path())]);
        assert!(
            out.status.success(),
            "cat {entry} by nobody: {}",
            out.describe()
        );
        assert!(
            out.stdout_bytes == fs::read(original).unwrap(),
            "{entry} read by nobody"
        );
    }
    let out = as_nobody("cat", &[&mount.path(".dune-cachefs-status")]);
    assert!(out.status.success(), "status by nobody: {}", out.describe());

    // Writing does not: into entries, the fixed directories, the root, root's scratch files.
    let append = |path: &Path| as_nobody("sh", &[&"-c", &"printf x >> \"$0\"", &path]);
    assert_denied(&append(&entry), "appending to an entry");
    assert_denied(
        &as_nobody("truncate", &[&"-s", &"0", &entry]),
        "truncating an entry",
    );
    assert_denied(&as_nobody("rm", &[&"-f", &entry]), "removing an entry");
    assert_denied(&append(&scratch), "appending to root's scratch file");
    assert_denied(
        &as_nobody("rm", &[&"-f", &scratch]),
        "removing root's scratch file",
    );
    for dir in [
        mount.point.clone(),
        mount.path("files"),
        mount.path("files/v4"),
        shard.clone(),
        mount.path("test-scratch"),
    ] {
        assert_denied(
            &as_nobody("touch", &[&dir.join("new-file")]),
            &format!("creating a file in {}", dir.display()),
        );
        assert_denied(
            &as_nobody("mkdir", &[&dir.join("new-dir")]),
            &format!("creating a directory in {}", dir.display()),
        );
    }
    assert_denied(
        &as_nobody("mv", &[&scratch, &mount.path("test-scratch/moved")]),
        "renaming root's scratch file",
    );

    // Nothing changed.
    assert!(fs::read(&entry).unwrap() == fs::read(artifact_original).unwrap());
    assert_eq!(fs::read(&scratch).unwrap(), b"root's\n");
}

#[test]
fn as_the_mounting_user_only_the_dune_write_path_is_writable() {
    if !fuse_available() {
        return;
    }
    let f = fixture();
    let mount = mount(&f.store, &[]);
    let (artifact, original) = &f.artifact;
    let entry = mount.path(artifact.relative_path());
    let shard = entry.parent().unwrap().to_path_buf();

    // Entries are immutable, even to root (who passes every mode check): refused by the mount,
    // at the open or at the first write (see `write_refusal`).
    for (how, options) in [
        ("writing", OpenOptions::new().write(true).clone()),
        (
            "reading and writing",
            OpenOptions::new().read(true).write(true).clone(),
        ),
        ("appending", OpenOptions::new().append(true).clone()),
    ] {
        let what = format!("opening an entry for {how}");
        assert_eq!(
            write_refusal(&what, &entry, &options),
            Errno::ACCESS,
            "{what}"
        );
    }
    denied(
        nix::unistd::truncate(&entry, 0).map_err(std::io::Error::from),
        "truncating an entry",
    );
    denied(fs::remove_file(&entry), "removing an entry");
    denied(
        fs::rename(&entry, mount.path("stolen")),
        "renaming an entry away",
    );
    // An entry never gains a second, writable name (callers copy instead).
    assert_eq!(
        kind_of(
            fs::hard_link(&entry, mount.path("second-name")),
            "linking an entry"
        ),
        ErrorKind::CrossesDevices
    );
    // The status file is a link to a snapshot written for each reader: what one reader does to
    // its snapshot, the next never sees.
    let status = mount.path(".dune-cachefs-status");
    let mut scribbled = OpenOptions::new().append(true).open(&status).unwrap();
    scribbled.write_all(b"scribbled").unwrap();
    drop(scribbled);
    let next = fs::read_to_string(&status).unwrap();
    assert!(
        !next.contains("scribbled") && next.trim_end().ends_with('}'),
        "{next}"
    );

    // The fixed directories take no new names: only entries, installed by rename or link.
    let absent_key = key::file_key(Era::Md5, &b"not in the cache\n"[..], false).unwrap();
    let absent_entry = Entry {
        kind: EntryKind::File,
        key: absent_key,
    };
    for (dir, name) in [
        (mount.path("files"), "new".to_string()),
        (mount.path("files/v4"), "zz".to_string()),
        (mount.path("meta"), "v9".to_string()),
        (shard.clone(), "not-a-key".to_string()),
    ] {
        let path = dir.join(&name);
        denied(
            fs::File::create(&path),
            &format!("creating {}", path.display()),
        );
        denied(fs::create_dir(&path), &format!("mkdir {}", path.display()));
        denied(symlink("x", &path), &format!("symlink {}", path.display()));
    }
    // Not even under an entry's own name: an entry is only made from a complete, verified file.
    let absent_path = mount.path(absent_entry.relative_path());
    denied(
        fs::File::create(&absent_path),
        "creating an entry by open(O_CREAT)",
    );
    denied(
        fs::remove_dir(mount.path("files/v4")),
        "removing a fixed directory",
    );
    denied(
        fs::set_permissions(mount.path("files"), fs::Permissions::from_mode(0o777)),
        "chmod of a fixed directory",
    );
    // The store's own directories are not part of the mount.
    for private in [".dune-cachefs-tmp", ".dune-cachefs-uploads"] {
        denied(
            fs::create_dir(mount.path(private)),
            &format!("mkdir {private}"),
        );
    }

    // Dune's write path works: a scratch directory and file in the root, then a rename into the
    // cache, verified against the key; the new entry is then as immutable as the others.
    fs::create_dir(mount.path("test-scratch")).unwrap();
    let scratch = mount.path("test-scratch/new-artifact");
    let mut file = fs::File::create(&scratch).unwrap();
    file.write_all(b"not in the cache\n").unwrap();
    drop(file);
    fs::rename(&scratch, &absent_path).expect("installing a scratch file by rename");
    assert_eq!(fs::read(&absent_path).unwrap(), b"not in the cache\n");
    let what = "opening the new entry for writing";
    let options = OpenOptions::new().write(true).clone();
    assert_eq!(
        write_refusal(what, &absent_path, &options),
        Errno::ACCESS,
        "{what}"
    );
    // And its contents must match its name.
    fs::write(&scratch, b"other bytes\n").unwrap();
    let liar = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"what it claims\n"[..], false).unwrap(),
    };
    assert_eq!(
        kind_of(
            fs::rename(&scratch, mount.path(liar.relative_path())),
            "installing bytes under another key"
        ),
        ErrorKind::InvalidInput
    );

    assert!(fs::read(&entry).unwrap() == fs::read(original).unwrap());
}
