//! The store's filesystem fills up: an 8 MiB tmpfs as the store. A fetch that does not fit and a
//! store (Dune's scratch file renamed into the cache) that does not fit both fail with ENOSPC and
//! leave nothing partial; once space is freed, both work again, and nothing stored is lost on
//! the way to the box.

use std::fs;
use std::path::Path;
use std::process::Command;

use rustix::io::Errno;

use super::{
    artifact_of, assert_sound, assert_uploaded, pseudo_random, put_on_box, random_artifact,
    read_within, report, store_through, temp_files,
};
use crate::common::{self, BoxProcess, COMMAND_DEADLINE};
use crate::harness::{errno_of, fuse_available, Mount, MountedFs};

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    mounted: MountedFs,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("fs");
        fs::create_dir(&point).unwrap();
        let out = common::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(&point),
            COMMAND_DEADLINE,
        );
        assert!(out.status.success(), "mount tmpfs: {}", out.describe());
        Tmpfs {
            mounted: MountedFs { point },
            _dir: dir,
        }
    }

    /// Bytes free for us now.
    fn available(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.mounted.point).expect("statvfs of the tmpfs");
        stat.f_bavail * stat.f_frsize
    }

    /// Fills it with a file at `path` until only `left` bytes are free.
    fn fill_leaving(&self, path: &Path, left: u64) {
        let size = self.available().saturating_sub(left);
        fs::write(path, vec![0xaa; size as usize]).expect("writing the filler");
    }
}

#[test]
fn a_full_store_is_enospc_with_nothing_partial_and_works_again_once_freed() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), &[]);
    let config = dir.path().join("cluster.sexp");
    common::write_config(&config, &[(&b.url(), &[("0x00", "0xff")])], "");
    let (big, big_bytes) = random_artifact(4 << 20);
    put_on_box(&b, &big, &big_bytes);

    // Declared before the mount, so the mount goes first when the test ends.
    let tmpfs = Tmpfs::mount("8m");
    let store = tmpfs.mounted.point.join("db");
    let mount = Mount::start(&store, Some(&config), &[]);
    let filler = tmpfs.mounted.point.join("filler");
    tmpfs.fill_leaving(&filler, 3 << 20);

    // A fetch that does not fit.
    let path = mount.path(big.relative_path());
    let (read, took) = read_within(&path, COMMAND_DEADLINE);
    assert_eq!(errno_of("fetching 4 MiB into 3 MiB", read), Errno::NOSPC);
    assert!(!store.join(big.relative_path()).exists(), "installed");
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
    assert!(
        mount.log().contains("No space left on device"),
        "the log should say the disk is full:\n{}",
        mount.log()
    );
    report(
        "store disk full during a fetch",
        "ENOSPC, nothing partial",
        &format!("ENOSPC after {took:.1?}, nothing installed, temp dir empty"),
    );

    // Dune-like stores until the disk is full.
    let mut stored = Vec::new();
    let failure = loop {
        let bytes = pseudo_random(stored.len() as u64 + 1000, 512 << 10);
        match store_through(&mount, &bytes) {
            Ok(entry) => stored.push((entry, bytes)),
            Err(e) => break e,
        }
        assert!(stored.len() < 16, "3 MiB took 16 stores of 512 KiB");
    };
    let (step, failure) = failure;
    let errno = errno_of("storing into a full disk", Err::<(), _>(failure));
    assert_eq!(errno, Errno::NOSPC, "at the {step}");
    // The rename on its own: a scratch file that fits, and whose copy into the cache does not.
    fs::create_dir_all(mount.path("temp")).unwrap();
    let scratch = mount.path("temp/fits-once");
    let bytes = pseudo_random(42, (tmpfs.available() * 2 / 3) as usize);
    fs::write(&scratch, &bytes).expect("the scratch file fits");
    let entry = artifact_of(&bytes);
    let renamed = fs::rename(&scratch, mount.path(entry.relative_path()));
    assert_eq!(errno_of("renaming into a full disk", renamed), Errno::NOSPC);
    assert!(scratch.exists(), "the scratch file is Dune's to remove");
    assert!(!store.join(entry.relative_path()).exists(), "installed");
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
    report(
        "store disk full during Dune-like stores",
        "ENOSPC, nothing partial",
        &format!(
            "{} stores of 512 KiB, then ENOSPC at the {step}; a rename whose copy does not fit: \
             ENOSPC, scratch file kept, nothing installed",
            stored.len()
        ),
    );

    // Space again: fetching and storing work.
    fs::remove_file(&filler).unwrap();
    fs::remove_file(&scratch).unwrap();
    let (read, _) = read_within(&path, COMMAND_DEADLINE);
    assert!(read.expect("fetching once there is room") == big_bytes);
    let bytes = pseudo_random(43, 256 << 10);
    stored.push((
        store_through(&mount, &bytes).expect("storing once there is room"),
        bytes,
    ));
    assert_uploaded(&mount, &stored, b.root());
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        "store disk freed again",
        "fetch and store work; no upload lost",
        &format!(
            "fetch and store work; all {} stored entries on the box",
            stored.len()
        ),
    );
}
