//! The write and metadata paths' hazards, each of which once lost or garbled data:
//!
//! - a rule's metadata value replaced under the mount (trimmed locally, then fetched again from a
//!   box holding another value): a reader must get a value whole, never the old value's
//!   length of the new one, in every read mode: the new value where the mount is asked at each
//!   open, the old one while the kernel keeps it (`--reads kept`), then the new one;
//! - an upload record that cannot be written: storing must fail and install nothing, rather than
//!   succeed with an upload that is never made;
//! - a box refusing an upload for good (413, the entry exceeds its `--max-body`): the upload ends,
//!   counted and explained in the status file, and the metadata waiting on it is dropped, not
//!   retried forever.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dune_cachefs::dune::key::Key;
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::dune::metadata::{Metadata, Target, TargetFile};
use dune_cachefs::store::Store;
use dune_cachefs::upload::background::JOURNAL_DIR;

use super::{
    artifact_in, assert_sound, assert_uploaded, put_on_box, random_artifact, report,
    store_entry_through, store_through,
};
use crate::common::{self, BoxProcess};
use crate::harness::{fuse_available, Mount, Requests};

/// A `meta/v4` entry for a made-up rule key starting with `first`.
fn rule_entry(first: u8) -> Entry {
    let key: Key = format!("{first:02x}{}", "5a".repeat(15))
        .parse()
        .expect("a rule key");
    Entry {
        kind: EntryKind::Meta(MetaVersion::V4),
        key,
    }
}

/// A metadata value naming `artifacts`, one target each.
fn metadata_naming(artifacts: &[Entry]) -> Vec<u8> {
    let files = artifacts
        .iter()
        .enumerate()
        .map(|(i, artifact)| Target {
            path: format!("default/lib/target-with-a-longish-name-{i}.cmx").into_bytes(),
            file: TargetFile::Artifact(artifact.key),
        })
        .collect();
    Metadata {
        metadata: Vec::new(),
        files,
    }
    .to_bytes()
}

/// Reads `path` the way OCaml's `in_channel_length` then `really_input` do: the size from
/// `lseek(SEEK_END)`, then exactly that many bytes from the start.
fn read_sized_by_seek(path: &Path) -> Vec<u8> {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let size = file.seek(SeekFrom::End(0)).expect("lseek(SEEK_END)");
    file.seek(SeekFrom::Start(0)).expect("lseek(SEEK_SET)");
    let mut bytes = vec![0; size as usize];
    file.read_exact(&mut bytes)
        .unwrap_or_else(|e| panic!("reading the {size} bytes lseek announced of {path:?}: {e}"));
    bytes
}

/// A box owning every key, started with `box_args` in a temp dir, its cluster config, and the
/// path for a store beside them.
struct OneBox {
    dir: tempfile::TempDir,
    b: BoxProcess,
    config: PathBuf,
    store: PathBuf,
}

fn one_box(box_args: &[String]) -> OneBox {
    let dir = tempfile::tempdir().unwrap();
    let b = BoxProcess::start_anywhere(&dir.path().join("box"), box_args);
    let config = dir.path().join("cluster.sexp");
    common::write_config(&config, &[(&b.url(), &[("0x00", "0xff")])], "");
    let store = dir.path().join("store");
    OneBox {
        dir,
        b,
        config,
        store,
    }
}

fn metadata_replaced_under_the_mount(reads: &str) {
    let label = reads;
    let OneBox {
        dir: _dir,
        b,
        config,
        store,
    } = one_box(&[]);
    let named: Vec<Entry> = (0..4)
        .map(|_| {
            let (entry, bytes) = artifact_in(0x00..=0xff, 64);
            put_on_box(&b, &entry, &bytes);
            entry
        })
        .collect();
    let rule = rule_entry(0x6c);
    // The box holds value A; this machine's store holds another, shorter value B.
    let on_box = metadata_naming(&named);
    let here = metadata_naming(&named[..1]);
    assert!(on_box.len() > here.len() + 100);
    let answer = common::raw_put(
        b.addr(),
        &format!("/{}", rule.relative_path().display()),
        "",
        &on_box,
    );
    assert_eq!(
        answer.status,
        201,
        "storing A on the box: {}",
        answer.text()
    );
    fs::create_dir_all(&store).unwrap();
    let installed = Store::open(&store).unwrap().install_bytes(rule, &here);
    assert!(installed.is_ok(), "installing B: {installed:?}");

    let mount = Mount::start(&store, Some(&config), &["--reads", reads]);
    let path = mount.path(rule.relative_path());
    assert_eq!(
        read_sized_by_seek(&path),
        here,
        "{label}: B before the trim"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), here.len() as u64);

    // Trimmed away locally, as `dune-cachefs trim` does to a full store.
    let trim = common::dune_cachefs(&[
        "trim".as_ref(),
        store.as_os_str(),
        "--size".as_ref(),
        "0".as_ref(),
    ]);
    assert!(trim.status.success(), "trim: {}", trim.describe());
    assert!(!store.join(rule.relative_path()).exists(), "trim kept B");

    if reads == "kept" {
        // The kernel opens files alone and keeps B's number and pages: a reader still gets B
        // whole, the value this machine read before.
        assert_eq!(
            read_sized_by_seek(&path),
            here,
            "kept: B from the kernel's pages"
        );
        // Its pages dropped but its number kept, B is read from the store again, which now
        // holds A for the name: the read fails (ESTALE), never with part of either value.
        fs::write("/proc/sys/vm/drop_caches", "1").expect("drop the page cache");
        match fs::read(&path) {
            Ok(bytes) => assert!(bytes == here, "kept: {} bytes after a drop", bytes.len()),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(rustix::io::Errno::STALE.raw_os_error()),
                "kept: reading B's number once the store holds A: {e}"
            ),
        }
        // Once the kernel forgets the name (the mount tells it to, as does dropping its
        // caches), the name is looked up again: A.
        fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the kernel's caches");
    }

    let read = read_sized_by_seek(&path);
    assert!(
        read == on_box,
        "{label}: after the trim, a reader sized by lseek got {} bytes starting {:?}, not A \
         ({} bytes)",
        read.len(),
        String::from_utf8_lossy(&read[..read.len().min(40)]),
        on_box.len()
    );
    assert_eq!(fs::read(&path).unwrap(), on_box, "{label}: a plain read");
    assert_eq!(fs::metadata(&path).unwrap().len(), on_box.len() as u64);
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        &format!("metadata replaced under the mount ({label})"),
        "a reader gets the new value whole",
        &format!(
            "B ({} bytes) read, trimmed, A ({} bytes) fetched: lseek-sized and plain reads get \
             A whole, stat says {} bytes",
            here.len(),
            on_box.len(),
            on_box.len()
        ),
    );
}

#[test]
fn a_metadata_value_replaced_under_the_mount_is_read_whole_with_passthrough() {
    if !fuse_available() {
        return;
    }
    metadata_replaced_under_the_mount("passthrough");
}

#[test]
fn a_metadata_value_replaced_under_the_mount_is_read_whole_with_kept_pages() {
    if !fuse_available() {
        return;
    }
    metadata_replaced_under_the_mount("kept");
}

#[test]
fn a_metadata_value_replaced_under_the_mount_is_read_whole_without_passthrough() {
    if !fuse_available() {
        return;
    }
    metadata_replaced_under_the_mount("daemon");
}

#[test]
fn a_store_whose_upload_cannot_be_recorded_fails_and_installs_nothing() {
    if !fuse_available() {
        return;
    }
    let OneBox {
        dir: _dir,
        b,
        config,
        store,
    } = one_box(&[]);
    let mount = Mount::start(&store, Some(&config), &[]);

    // The journal's directory replaced by a file: no record can be created in it.
    let journal = store.join(JOURNAL_DIR);
    fs::remove_dir_all(&journal).unwrap();
    fs::write(&journal, b"in the way").unwrap();
    let (entry, bytes) = random_artifact(4096);
    let stored = store_entry_through(&mount, &entry, &bytes);
    let Err((step, error)) = stored else {
        panic!("storing succeeded although its upload could not be recorded");
    };
    assert_eq!(step, "rename", "the failing step: {error}");
    assert!(
        !store.join(entry.relative_path()).exists(),
        "the entry was installed without an upload record"
    );
    assert!(
        fs::metadata(mount.path(entry.relative_path())).is_err(),
        "the mount shows the entry"
    );
    assert!(
        mount.log().contains("its upload cannot be recorded"),
        "no word of it in the log:\n{}",
        mount.log()
    );

    // Once the journal can be written again, the same store works and reaches the box.
    fs::remove_file(&journal).unwrap();
    fs::create_dir(&journal).unwrap();
    let again = store_through(&mount, &bytes).expect("storing once the journal is back");
    assert_eq!(again, entry);
    assert_uploaded(&mount, &[(entry, bytes)], b.root());
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        "upload record cannot be written",
        "the rename fails; nothing installed",
        &format!("rename failed ({error}); nothing installed; stored and uploaded once fixed"),
    );
}

#[test]
fn a_box_refusing_an_upload_for_good_ends_it_and_drops_the_metadata_naming_it() {
    if !fuse_available() {
        return;
    }
    let OneBox {
        dir: _dir,
        b,
        config,
        store,
    } = one_box(&["--max-body".into(), "1KiB".into()]);
    let mount = Mount::start(&store, Some(&config), &[]);

    let (large, large_bytes) = random_artifact(4096);
    let (small, small_bytes) = random_artifact(100);
    let rule = rule_entry(0x3e);
    store_entry_through(&mount, &large, &large_bytes).expect("storing the large artifact");
    store_entry_through(&mount, &small, &small_bytes).expect("storing the small artifact");
    store_entry_through(&mount, &rule, &metadata_naming(&[small, large]))
        .expect("storing the metadata");

    common::wait_until("no upload is pending", || {
        mount.status()["uploads"]["pending"].as_u64() == Some(0)
    });
    let uploads = mount.status()["uploads"].clone();
    assert_eq!(uploads["refused"], 1, "{uploads}");
    assert_eq!(uploads["dropped"], 1, "{uploads}");
    assert_eq!(uploads["uploaded"], 1, "{uploads}");
    assert_eq!(uploads["retries"], 0, "{uploads}");
    let refusals = uploads["refusals"].to_string();
    assert!(
        refusals.contains("413") && refusals.contains(&large.to_string()),
        "the refusal is not explained: {refusals}"
    );
    assert!(refusals.contains(&rule.to_string()), "{refusals}");
    assert!(fs::read_dir(store.join(JOURNAL_DIR))
        .unwrap()
        .next()
        .is_none());
    assert!(b.root().join(small.relative_path()).exists());
    assert!(!b.root().join(large.relative_path()).exists());
    assert!(!b.root().join(rule.relative_path()).exists());
    // Logged once, and nothing is tried again: not later, not after a remount.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let refused_lines = mount.log().matches("upload refused for good").count();
    assert_eq!(refused_lines, 1, "{}", mount.log());
    let before = Requests::take([&b]);
    drop(mount);
    let mount = Mount::start(&store, Some(&config), &[]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(mount.status()["uploads"]["pending"], 0);
    let since = Requests::take([&b]).since(&before);
    assert!(since.is_empty(), "requests after the refusal: {since:?}");
    assert_sound(Some(&mount), &[&store, b.root()]);
    report(
        "box refuses an upload for good (413)",
        "the upload ends, explained; the metadata naming it is dropped",
        "refused 1, dropped 1, no retry, nothing pending, none after a remount",
    );
}
