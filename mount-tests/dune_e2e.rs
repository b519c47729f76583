//! The real thing: Dune 2.9 building the fixture on two "machines" that share their cache through
//! three boxes on loopback, each machine with its own store, its own mount as Dune's cache and its
//! own copy of the project.
//!
//! What Dune did is read from its own `_build/log`: one `# cache hit for <rule-key>` line per
//! restored rule, and one `$ <command>` line per command it ran (Dune always runs `nproc` and
//! `ocamlc.opt -config` itself; those are not rules). Every wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::upload::background::JOURNAL_DIR;
use tempfile::TempDir;

use crate::common::{self, BoxCluster, Output};
use crate::harness::{fuse_available, mounts_at, Mount};

/// The longest one Dune build of the fixture may take (about a second here, even with a box dead
/// or frozen): a hang becomes a failure naming the build.
const BUILD_DEADLINE: Duration = Duration::from_secs(90);

/// The file whose edit affects only the `hello` executable (see the fixture's README).
const EDITED_SOURCE: &str = "bin/hello/message.ml";

/// Three boxes splitting the key space, with a short request timeout so that a frozen box costs
/// a build a second, not the default ten.
fn three_boxes() -> BoxCluster {
    BoxCluster::start(
        &[
            &[("0x00", "0x54")],
            &[("0x55", "0xa9")],
            &[("0xaa", "0xff")],
        ],
        "(timeout_ms 1000)",
        &[],
    )
}

/// One build machine: its copy of the fixture, its store, and its mount at
/// `$XDG_CACHE_HOME/dune/db`, where Dune 2.9 looks for its cache.
struct Machine {
    /// Declared before `dir`: unmounted before the directory holding the mount point goes.
    /// `None` only between a crash and the remount.
    mount: Option<Mount>,
    project: PathBuf,
    xdg: PathBuf,
    dir: TempDir,
}

impl Machine {
    /// A fresh machine: a new copy of the project and an empty store, mounted.
    fn new(cluster: &BoxCluster) -> Machine {
        let dir = tempfile::tempdir().expect("machine dir");
        let project = dir.path().join("project");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocaml-project");
        let copied = common::run(
            Command::new("cp").arg("-r").arg(&fixture).arg(&project),
            common::COMMAND_DEADLINE,
        );
        assert!(copied.status.success(), "cp: {}", copied.describe());
        let xdg = dir.path().join("xdg");
        let point = xdg.join("dune/db");
        fs::create_dir_all(&point).expect("mount point");
        let store = dir.path().join("store");
        let mount = Mount::start_at(
            &store,
            Some(&cluster.config),
            &[],
            &point,
            tempfile::tempdir().expect("mount log dir"),
        );
        Machine {
            mount: Some(mount),
            project,
            xdg,
            dir,
        }
    }

    /// The machine's mount.
    fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// The store under the mount.
    fn store(&self) -> &Path {
        &self.mount().store
    }

    /// Runs `dune build` in the project with the mount as its cache, as the README says:
    /// `XDG_CACHE_HOME`, `DUNE_CACHE=enabled`, `DUNE_CACHE_TRANSPORT=direct`,
    /// `DUNE_CACHE_DUPLICATION=copy`; nothing else of the caller's Dune settings.
    fn build(&self) -> Build {
        let mut command = Command::new("dune");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("DUNE_") || name == "INSIDE_DUNE" {
                command.env_remove(name.as_ref());
            }
        }
        command
            .args(["build", "--root", "."])
            .current_dir(&self.project)
            .env("XDG_CACHE_HOME", &self.xdg)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("DUNE_CACHE", "enabled")
            .env("DUNE_CACHE_TRANSPORT", "direct")
            .env("DUNE_CACHE_DUPLICATION", "copy");
        let output = common::run(&mut command, BUILD_DEADLINE);
        let log = fs::read_to_string(self.project.join("_build/log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "dune build failed: {}\n--- _build/log:\n{log}\n--- mount log:\n{}",
            output.describe(),
            self.mount().log()
        );
        Build { output, log }
    }

    /// Appends a definition to the file the fixture's README names for "one source changed".
    fn edit_source(&self) {
        let path = self.project.join(EDITED_SOURCE);
        let mut text = fs::read_to_string(&path).expect("read the source to edit");
        text.push_str("let edit = 1\n");
        fs::write(&path, text).expect("edit the source");
    }

    /// Uploads pending now, from the status file.
    fn pending_uploads(&self) -> u64 {
        self.mount().status()["uploads"]["pending"]
            .as_u64()
            .expect("uploads.pending in the status file")
    }

    /// Waits until every upload is done.
    fn wait_uploads_drained(&self) {
        common::wait_until("the mount's uploads drain (uploads.pending == 0)", || {
            self.pending_uploads() == 0
        });
    }

    /// Every entry in the store.
    fn entries(&self) -> BTreeSet<Entry> {
        common::entries(self.store())
            .into_iter()
            .map(|(entry, _)| entry)
            .collect()
    }

    /// The rule keys of the metadata entries in the store.
    fn rule_keys(&self) -> BTreeSet<String> {
        self.entries()
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Meta(_)))
            .map(|e| e.key.to_string())
            .collect()
    }

    /// The upload journal's records.
    fn journal(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.store().join(JOURNAL_DIR)) {
            Ok(items) => items.map(|i| i.expect("journal item").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// What one `dune build` did, from its `_build/log`.
struct Build {
    output: Output,
    log: String,
}

impl Build {
    /// The rule keys Dune restored from the cache.
    fn cache_hits(&self) -> BTreeSet<String> {
        self.log
            .lines()
            .filter_map(|l| l.strip_prefix("# cache hit for "))
            .map(|key| key.trim().to_string())
            .collect()
    }

    /// The commands Dune ran for rules (not its own `nproc` and `ocamlc.opt -config` probes).
    fn rule_commands(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter_map(|l| l.strip_prefix("$ "))
            .filter(|c| !c.contains("/nproc") && !c.contains("ocamlc.opt -config"))
            .collect()
    }

    /// The compiler commands among them.
    fn compiles(&self) -> Vec<&str> {
        self.rule_commands()
            .into_iter()
            .filter(|c| c.contains("ocamlopt") || c.contains("ocamlc"))
            .collect()
    }

    /// Everything about it, for a failure message.
    fn describe(&self) -> String {
        format!("{}\n--- _build/log:\n{}", self.output.describe(), self.log)
    }
}

/// Asserts that every one of `entries` of `store` is on the box that owns it: artifacts byte for
/// byte, metadata too unless the box kept another machine's value for the rule (first writer
/// wins). Returns how many metadata entries the box holds another value for: rules whose output
/// differs between machines, as OCaml's debug info holds the absolute build path.
fn on_owning_boxes(cluster: &BoxCluster, store: &Path, entries: &BTreeSet<Entry>) -> usize {
    let mut others = 0;
    for entry in entries {
        let owner = &cluster.boxes[cluster.owner_of(&entry.key)];
        let on_box = owner.root().join(entry.relative_path());
        let held = fs::read(&on_box)
            .unwrap_or_else(|e| panic!("{entry} is not on its box {} ({e})", owner.url()));
        if held != fs::read(store.join(entry.relative_path())).expect("local entry") {
            assert!(
                matches!(entry.kind, EntryKind::Meta(_)),
                "{entry}: the box holds other bytes"
            );
            others += 1;
        }
    }
    others
}

/// Asserts that every one of `entries` of `store` is on the box that owns it, byte for byte.
fn assert_on_owning_boxes(cluster: &BoxCluster, store: &Path, entries: &BTreeSet<Entry>) {
    let others = on_owning_boxes(cluster, store, entries);
    assert_eq!(others, 0, "the boxes hold other values for {others} rules");
}

/// The requests every box of `cluster` served so far, by method and status (`"GET 200"`), summed.
fn box_requests(cluster: &BoxCluster) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for b in &cluster.boxes {
        let answer = common::raw_get(b.addr(), "/_status");
        let status: serde_json::Value =
            serde_json::from_slice(&answer.body).expect("box status is JSON");
        for (name, count) in status["requests"].as_object().expect("requests") {
            *all.entry(name.clone()).or_default() += count.as_u64().expect("a count");
        }
    }
    all
}

/// What the boxes served between two [`box_requests`].
fn requests_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Asserts `dune-cachefs fsck` passes on `db`.
fn assert_fsck(db: &Path) {
    let fsck = common::dune_cachefs(&["fsck".as_ref(), db.as_os_str()]);
    assert!(
        fsck.status.success(),
        "fsck {}: {}",
        db.display(),
        fsck.describe()
    );
}

/// Asserts two build trees hold the same files, byte for byte, with the same executable bits.
fn assert_same_tree(a: &Path, b: &Path) {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for item in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}")) {
            let path = item.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let (mut in_a, mut in_b) = (BTreeSet::new(), BTreeSet::new());
    walk(a, a, &mut in_a);
    walk(b, b, &mut in_b);
    assert_eq!(in_a, in_b, "the build trees hold different files");
    assert!(!in_a.is_empty(), "empty build tree {a:?}");
    let mut executables = 0;
    for relative in &in_a {
        let (pa, pb) = (a.join(relative), b.join(relative));
        assert!(
            fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
            "{} differs",
            relative.display()
        );
        let exe = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o111 != 0;
        assert_eq!(exe(&pa), exe(&pb), "{} executable bit", relative.display());
        executables += usize::from(exe(&pa));
    }
    assert!(executables >= 4, "only {executables} executables in {a:?}");
}

/// Machine A fills the cache through its mount; B, with an empty store, restores every rule from
/// it and gets the same files; B edits a source and stores the few rules that changed; A, pulling
/// the same edit, restores those.
#[test]
fn two_machines_share_their_builds_through_the_boxes() {
    if !fuse_available() {
        return;
    }
    let cluster = three_boxes();

    // A builds: everything it stores reaches its owning box, and both sides fsck clean.
    let a = Machine::new(&cluster);
    let built = a.build();
    assert!(
        built.cache_hits().is_empty(),
        "A's first build hit an empty cache: {}",
        built.describe()
    );
    a.wait_uploads_drained();
    let stored = a.entries();
    let rules = a.rule_keys();
    assert!(
        rules.len() >= 100 && stored.len() > rules.len(),
        "A stored only {} entries, {} of them rules",
        stored.len(),
        rules.len()
    );
    assert_on_owning_boxes(&cluster, a.store(), &stored);
    assert!(a.journal().is_empty(), "journal left: {:?}", a.journal());
    assert_fsck(a.store());
    for b in &cluster.boxes {
        assert_fsck(b.root());
    }

    // B, empty store: every rule A stored is a cache hit, no compiler runs, same files, and the
    // boxes send each entry exactly once (artifacts come by the prefetch their metadata starts).
    // Looking up a rule's metadata fetches it, so there is no `HEAD` for it; an artifact looked
    // up in the instant between its prefetch landing and the transfer being marked done rarely
    // costs one.
    let b = Machine::new(&cluster);
    let served_before = box_requests(&cluster);
    let restored = b.build();
    let mut served = requests_between(&served_before, &box_requests(&cluster));
    let heads = served.remove("HEAD 200").unwrap_or(0);
    assert_eq!(
        served,
        // (Each box's own status read before the build is a GET too.)
        BTreeMap::from([(
            "GET 200".to_string(),
            (stored.len() + cluster.boxes.len()) as u64
        )]),
        "the boxes' work for B's restore of {} entries",
        stored.len()
    );
    assert!(
        heads < (rules.len() / 4) as u64,
        "{heads} HEADs for {} rules and {} entries: a metadata lookup should cost none",
        rules.len(),
        stored.len()
    );
    assert_eq!(
        restored.cache_hits(),
        rules,
        "B's cache hits are not A's rules: {}",
        restored.describe()
    );
    assert_eq!(
        restored.rule_commands(),
        Vec::<&str>::new(),
        "B ran commands"
    );
    assert_same_tree(
        &a.project.join("_build/default"),
        &b.project.join("_build/default"),
    );
    assert_eq!(b.mount().counter("verification_failures"), 0);
    assert_eq!(b.mount().counter("stores"), 0, "B stored what it restored");

    // B edits one source: only the hello chain compiles, and its new entries reach the boxes.
    let before = b.entries();
    b.edit_source();
    let rebuilt = b.build();
    let compiles = rebuilt.compiles();
    assert!(
        !compiles.is_empty()
            && compiles.len() <= 8
            && compiles.iter().all(|c| c.contains("bin/hello")),
        "B's rebuild after editing {EDITED_SOURCE} compiled {compiles:#?}"
    );
    b.wait_uploads_drained();
    let new: BTreeSet<Entry> = b.entries().difference(&before).copied().collect();
    let new_rules: BTreeSet<String> = new
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Meta(_)))
        .map(|e| e.key.to_string())
        .collect();
    assert!(
        new_rules.len() >= compiles.len(),
        "B stored {} rules for {} compiles",
        new_rules.len(),
        compiles.len()
    );
    assert_on_owning_boxes(&cluster, b.store(), &new);

    // A pulls the same edit: those rules come from the cache, nothing compiles.
    a.edit_source();
    let pulled = a.build();
    assert_eq!(
        pulled.rule_commands(),
        Vec::<&str>::new(),
        "A ran commands after pulling B's edit"
    );
    assert_eq!(
        pulled.cache_hits(),
        new_rules,
        "A's hits are not B's new rules: {}",
        pulled.describe()
    );
    assert_same_tree(
        &a.project.join("_build/default"),
        &b.project.join("_build/default"),
    );
}

/// A box killed before B builds costs B only the rules whose entries lived there: B rebuilds
/// them, the build succeeds in bounded time, and what B stored for the dead box reaches it once
/// it is back.
#[test]
fn a_dead_box_costs_only_rebuilds() {
    if !fuse_available() {
        return;
    }
    let mut cluster = three_boxes();
    let a = Machine::new(&cluster);
    a.build();
    a.wait_uploads_drained();
    let rules = a.rule_keys().len();

    cluster.boxes[1].kill();
    let b = Machine::new(&cluster);
    let started = std::time::Instant::now();
    let built = b.build();
    let took = started.elapsed();
    let hits = built.cache_hits();
    assert!(
        !hits.is_empty() && hits.len() < rules && !built.compiles().is_empty(),
        "with one box of three dead, B hit {} of {rules} rules and compiled {}: {}",
        hits.len(),
        built.compiles().len(),
        built.describe()
    );
    assert!(
        b.mount().counter("box_unavailable") > 0,
        "the dead box was never noticed"
    );
    assert!(
        took < Duration::from_secs(30),
        "B's build took {took:?} with a dead box"
    );

    // What B stored for the dead box waits for it, and gets there once it is back.
    assert!(b.pending_uploads() > 0, "nothing waits for the dead box");
    cluster.boxes[1].restart();
    b.wait_uploads_drained();
    let others = on_owning_boxes(&cluster, b.store(), &b.entries());
    assert_eq!(
        b.mount().status()["uploads"]["collisions"],
        others,
        "every rule the box holds another value for is a collision the uploader saw"
    );
}

/// `kill -9` of a mount with uploads pending loses none of them: the journal survives, and the
/// next mount of the same store (on the recovered mount point) finishes them.
#[test]
fn kill_9_with_pending_uploads_then_remount_finishes_them() {
    if !fuse_available() {
        return;
    }
    let cluster = three_boxes();
    let mut a = Machine::new(&cluster);
    for b in &cluster.boxes {
        b.stop();
    }
    a.build();
    let stored = a.entries();
    assert!(!stored.is_empty(), "A stored nothing");
    assert_eq!(
        a.pending_uploads() as usize,
        stored.len(),
        "with every box frozen, every stored entry is a pending upload"
    );
    assert_eq!(a.journal().len(), stored.len(), "one journal record each");

    let store = a.store().to_path_buf();
    let dead = a.mount.take().expect("mounted").kill9();
    for b in &cluster.boxes {
        b.resume();
    }
    // A directory listing always reaches the daemon (a `stat` may be answered from the kernel's
    // cache even now).
    let refusal = fs::read_dir(&dead.point).expect_err("the killed mount still answers");
    assert_eq!(
        refusal.raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error()),
        "the killed mount's point: {refusal}"
    );
    a.mount = Some(dead.remount(&store, Some(&cluster.config), &["--recover"]));
    assert_eq!(
        mounts_at(&a.mount().point),
        1,
        "--recover left the dead mount under the new one"
    );
    a.wait_uploads_drained();
    assert_on_owning_boxes(&cluster, a.store(), &stored);
    assert!(a.journal().is_empty(), "journal left: {:?}", a.journal());
    assert_eq!(a.mount().status()["uploads"]["refused"], 0);
    for b in &cluster.boxes {
        assert_fsck(b.root());
    }
}
