//! The real thing: real Dune building the fixture on two "machines" that share their cache
//! through three boxes on loopback, each machine with its own store, its own mount as Dune's cache
//! and its own copy of the project. The two-machine test runs once per Dune generation (2.9, 3.19,
//! 3.22), and one cluster serves all three at once; the fault scenarios (a dead box, a killed
//! mount) run on Dune 2.9 alone, as they test the mount, not Dune.
//!
//! What Dune did (the rules it restored, the commands it ran) is read from its own report:
//! `_build/log` or `_build/trace.csexp` depending on the generation (see [`crate::dune_generations`]).
//! Every wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dune_cachefs::dune::key::{ContentHasher, Era, Key};
use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::upload::background::JOURNAL_DIR;
use tempfile::TempDir;

use crate::common::{self, BoxCluster, Output};
use crate::dune_generations::{Dune, DuneDirs, Generation, Report, DUNE_2_9, DUNE_3_19, DUNE_3_22};
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

/// One build machine: its Dune, its copy of the fixture, its store, and its mount where that
/// Dune looks for its cache.
pub(crate) struct Machine {
    /// Declared before `dir`: unmounted before the directory holding the mount point goes.
    /// `None` only between a crash and the remount.
    mount: Option<Mount>,
    dune: Dune,
    project: PathBuf,
    dirs: DuneDirs,
    /// Holds all of the above; removed with the machine.
    _dir: TempDir,
}

impl Machine {
    /// A fresh machine building with `dune`: a new copy of the project and an empty store,
    /// mounted.
    pub(crate) fn new(cluster: &BoxCluster, dune: &Dune) -> Machine {
        Machine::with_flags(cluster, dune, &[])
    }

    /// A fresh machine whose mount gets extra `flags`.
    fn with_flags(cluster: &BoxCluster, dune: &Dune, flags: &[&str]) -> Machine {
        Machine::with_config(&cluster.config, &[], dune, flags)
    }

    /// A fresh machine whose mount reads the cluster config `config`, with more variables in its
    /// environment (e.g. the user's Kerberos credential cache) and extra `flags`.
    pub(crate) fn with_config(
        config: &Path,
        env: &[(&str, std::ffi::OsString)],
        dune: &Dune,
        flags: &[&str],
    ) -> Machine {
        let dir = tempfile::tempdir().expect("machine dir");
        let project = dir.path().join("project");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocaml-project");
        let copied = common::run(
            Command::new("cp").arg("-r").arg(&fixture).arg(&project),
            common::COMMAND_DEADLINE,
        );
        assert!(copied.status.success(), "cp: {}", copied.describe());
        let dirs = DuneDirs::under(dir.path());
        let point = dune.cache_db(&dirs);
        fs::create_dir_all(&point).expect("mount point");
        let store = dir.path().join("store");
        let mount = Mount::spawn(
            &store,
            Some(config),
            flags,
            &point,
            tempfile::tempdir().expect("mount log dir"),
            env,
        );
        Machine {
            mount: Some(mount),
            dune: dune.clone(),
            project,
            dirs,
            _dir: dir,
        }
    }

    /// The machine's mount.
    pub(crate) fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// The store under the mount.
    pub(crate) fn store(&self) -> &Path {
        &self.mount().store
    }

    /// Runs `dune build` in the project with the mount as its cache, set up as the README's
    /// "Using it with Dune" says for this generation.
    pub(crate) fn build(&self) -> Build {
        let version = self.dune.generation.version;
        let output = common::run(
            &mut self.dune.build_command(&self.project, &self.dirs),
            BUILD_DEADLINE,
        );
        let report = self.dune.report(&self.project);
        assert!(
            output.status.success(),
            "dune {version} build failed: {}\n{}\n--- mount log:\n{}",
            output.describe(),
            report.text,
            self.mount().log()
        );
        Build {
            version,
            output,
            report,
        }
    }

    /// Appends a definition to the file the fixture's README names for "one source changed".
    pub(crate) fn edit_source(&self) {
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
    pub(crate) fn wait_uploads_drained(&self) {
        common::wait_until("the mount's uploads drain (uploads.pending == 0)", || {
            self.pending_uploads() == 0
        });
    }

    /// Every entry in the store.
    pub(crate) fn entries(&self) -> BTreeSet<Entry> {
        common::entries(self.store())
            .into_iter()
            .map(|(entry, _)| entry)
            .collect()
    }

    /// The rule keys of the metadata entries in the store.
    pub(crate) fn rule_keys(&self) -> BTreeSet<String> {
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

/// What one `dune build` did, as its Dune reported it.
pub(crate) struct Build {
    version: &'static str,
    output: Output,
    report: Report,
}

impl Build {
    /// The rule keys Dune restored from the cache.
    pub(crate) fn cache_hits(&self) -> &BTreeSet<String> {
        &self.report.hits
    }

    /// The commands Dune ran for rules (not its own probes).
    pub(crate) fn rule_commands(&self) -> Vec<&str> {
        self.report.rule_commands()
    }

    /// The compiler commands among them.
    pub(crate) fn compiles(&self) -> Vec<&str> {
        self.report.compiles()
    }

    /// Everything about it, for a failure message.
    pub(crate) fn describe(&self) -> String {
        format!(
            "dune {}: {}\n{}",
            self.version,
            self.output.describe(),
            self.report.text
        )
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
pub(crate) fn assert_fsck(db: &Path) {
    let fsck = common::dune_cachefs(&["fsck".as_ref(), db.as_os_str()]);
    assert!(
        fsck.status.success(),
        "fsck {}: {}",
        db.display(),
        fsck.describe()
    );
}

/// Asserts that `entries` of `store` are what `dune`'s generation writes: every rule's metadata
/// in its `meta/` version, every artifact keyed in its era.
fn assert_generation_wrote(dune: &Dune, store: &Path, entries: &BTreeSet<Entry>) {
    let generation = dune.generation;
    for entry in entries {
        match entry.kind {
            EntryKind::Meta(version) => assert_eq!(
                version, generation.meta,
                "dune {} stored {entry}",
                generation.version
            ),
            EntryKind::File => {
                let file = fs::File::open(store.join(entry.relative_path())).expect("artifact");
                let matched = ContentHasher::digest_reader(None, file)
                    .expect("read artifact")
                    .matching(&entry.key);
                assert_eq!(
                    matched.map(|m| m.era),
                    Some(generation.era),
                    "dune {} stored {entry}: the key of another era, or of other bytes",
                    generation.version
                );
            }
        }
    }
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

/// Asserts that machine `b`'s build `restored` hit every one of `rules` (machine `a`'s), ran no
/// command, verified everything it fetched, and left the same build tree as `a`'s.
pub(crate) fn assert_restored_every_rule(
    a: &Machine,
    b: &Machine,
    restored: &Build,
    rules: &BTreeSet<String>,
) {
    assert_eq!(
        restored.cache_hits(),
        rules,
        "B's cache hits are not A's rules: {}\n--- B's mount log:\n{}",
        restored.describe(),
        b.mount().log()
    );
    assert_eq!(
        restored.rule_commands(),
        Vec::<&str>::new(),
        "B ran commands: {}",
        restored.describe()
    );
    assert_same_tree(
        &a.project.join("_build/default"),
        &b.project.join("_build/default"),
    );
    assert_eq!(b.mount().counter("verification_failures"), 0);
}

/// The Dune of `generation` when this machine can mount and has it; `None` after a loud skip
/// message (a failure under CI).
pub(crate) fn dune_and_fuse(generation: &'static Generation) -> Option<Dune> {
    if !fuse_available() {
        return None;
    }
    generation.find()
}

#[test]
fn dune_2_9_two_machines_share_their_builds_through_the_boxes() {
    if let Some(dune) = dune_and_fuse(&DUNE_2_9) {
        two_machines_share_their_builds(&dune);
    }
}

#[test]
fn dune_3_19_two_machines_share_their_builds_through_the_boxes() {
    if let Some(dune) = dune_and_fuse(&DUNE_3_19) {
        two_machines_share_their_builds(&dune);
    }
}

#[test]
fn dune_3_22_two_machines_share_their_builds_through_the_boxes() {
    if let Some(dune) = dune_and_fuse(&DUNE_3_22) {
        two_machines_share_their_builds(&dune);
    }
}

/// Machine A fills the cache through its mount; B, with an empty store, restores every rule from
/// it and gets the same files; B edits a source and stores the few rules that changed; A, pulling
/// the same edit, restores those. Both machines build with `dune`.
fn two_machines_share_their_builds(dune: &Dune) {
    let cluster = three_boxes();

    // A builds: everything it stores reaches its owning box, and both sides fsck clean.
    let a = Machine::new(&cluster, dune);
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
    assert_generation_wrote(dune, a.store(), &stored);
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
    let b = Machine::new(&cluster, dune);
    let served_before = box_requests(&cluster);
    let restored = b.build();
    let mut served = requests_between(&served_before, &box_requests(&cluster));
    let heads = served.remove("HEAD 200").unwrap_or(0);
    // Hints (the order Dune asked for rules in) published by A or B are no entries; entries
    // fetched ahead of Dune are counted apart by the boxes, and still fetched once.
    served.remove("PUT 204");
    let ahead = served.remove("GET 200 ahead").unwrap_or(0);
    *served.entry("GET 200".to_string()).or_default() += ahead;
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
    assert_restored_every_rule(&a, &b, &restored, &rules);
    assert_eq!(b.mount().counter("stores"), 0, "B stored what it restored");

    // B edits one source: only the hello chain compiles, and its new entries reach the boxes.
    // (What B fetched is named in its store just after Dune read it: wait for that, or a fetched
    // entry still settling would count as new.)
    b.mount().wait_settled();
    let before = b.entries();
    b.edit_source();
    let rebuilt = b.build();
    let compiles = rebuilt.compiles();
    assert!(
        !compiles.is_empty()
            && compiles.len() <= 8
            && compiles.iter().all(|c| c.contains("bin/hello")),
        "B's rebuild after editing {EDITED_SOURCE} compiled {compiles:#?}: {}",
        rebuilt.describe()
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
        "A ran commands after pulling B's edit: {}",
        pulled.describe()
    );
    assert_eq!(
        *pulled.cache_hits(),
        new_rules,
        "A's hits are not B's new rules: {}",
        pulled.describe()
    );
    assert_same_tree(
        &a.project.join("_build/default"),
        &b.project.join("_build/default"),
    );
}

#[test]
fn dune_2_9_restores_ahead_of_itself_with_hints() {
    if let Some(dune) = dune_and_fuse(&DUNE_2_9) {
        restores_ahead_with_hints(&dune);
    }
}

#[test]
fn dune_3_22_restores_ahead_of_itself_with_hints() {
    if let Some(dune) = dune_and_fuse(&DUNE_3_22) {
        restores_ahead_with_hints(&dune);
    }
}

/// The hints under each box's root.
fn hints_held(cluster: &BoxCluster) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for b in &cluster.boxes {
        let root = b.root().join(dune_cachefs::boxd::hints::HINTS_DIR);
        for kind in ["meta/v4", "meta/v5"] {
            let Ok(shards) = fs::read_dir(root.join(kind)) else {
                continue;
            };
            for shard in shards {
                for hint in fs::read_dir(shard.unwrap().path()).unwrap() {
                    all.push(hint.unwrap().path());
                }
            }
        }
    }
    all
}

/// Machine A stores a build and so publishes hints: the order its Dune asked for rules in.
/// Returns it once every hint is out (its publishing counters stay still).
fn machine_a_publishing_hints(cluster: &BoxCluster, dune: &Dune) -> Machine {
    let a = Machine::new(cluster, dune);
    a.build();
    a.wait_uploads_drained();
    let settled = || {
        let mount = a.mount();
        mount.counter("hints_published") + mount.counter("hints_dropped")
    };
    let mut last = u64::MAX;
    common::wait_until("A's hints are all published", || {
        let now = settled();
        let still = now == last && now > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        still
    });
    assert_eq!(a.mount().counter("hints_dropped"), 0, "{}", a.mount().log());
    a
}

/// A cold machine with hints asks the boxes for far fewer entries on Dune's own path than one
/// without: the rest it fetched ahead, each entry still once, and the build is the same. And,
/// warming the kernel with what it fetched ahead, it spares Dune most of its lookups and reads
/// (counted at the mount: the kernel's requests, less those it sent for the warming thread).
fn restores_ahead_with_hints(dune: &Dune) {
    let cluster = three_boxes();
    let a = machine_a_publishing_hints(&cluster, dune);
    let rules = a.rule_keys();
    let held = hints_held(&cluster);
    assert!(
        held.len() >= rules.len() / 2,
        "{} hints on the boxes for {} rules",
        held.len(),
        rules.len()
    );

    let mut served = Vec::new();
    for flags in [&["--prefetch-window", "0"][..], &["--no-warming"], &[]] {
        let machine = Machine::with_flags(&cluster, dune, flags);
        let before = box_requests(&cluster);
        let build = machine.build();
        let after = box_requests(&cluster);
        assert_eq!(
            *build.cache_hits(),
            rules,
            "{flags:?}: {}",
            build.describe()
        );
        assert!(
            build.rule_commands().is_empty(),
            "{flags:?}: {}",
            build.describe()
        );
        assert_same_tree(
            &a.project.join("_build/default"),
            &machine.project.join("_build/default"),
        );
        assert_eq!(machine.mount().counter("verification_failures"), 0);
        served.push((requests_between(&before, &after), machine));
    }
    let count = |served: &BTreeMap<String, u64>, name: &str| served.get(name).copied().unwrap_or(0);
    let (without, _) = &served[0];
    let (with, b) = &served[2];
    let (demand_without, demand_with) = (count(without, "GET 200"), count(with, "GET 200"));
    let ahead = count(with, "GET 200 ahead");
    assert_eq!(count(without, "GET 200 ahead"), 0, "{without:?}");
    assert_eq!(
        demand_with + ahead,
        demand_without,
        "each entry is fetched once either way: {with:?} vs {without:?}"
    );
    assert!(
        demand_with * 2 < demand_without,
        "with hints, Dune waited for {demand_with} requests; without, {demand_without}"
    );
    assert!(b.mount().counter("ahead_used") > 0);
    // What was fetched ahead in the MD5 era was hashed on the shared stage (many entries at
    // once where they meet), and verified all the same: the tree above is the same, with no
    // verification failure.
    let md5 = &b.mount().status()["md5_ahead_hashed_bytes"];
    let md5_hashed = ["alone", "beside_others"].map(|how| md5[how].as_u64().unwrap());
    if dune.generation.era == Era::Md5 {
        assert!(md5_hashed[0] + md5_hashed[1] > 0, "{md5}");
    }
    let no_warming = &served[1].0;
    assert_eq!(
        count(no_warming, "GET 200") + count(no_warming, "GET 200 ahead"),
        demand_with + ahead,
        "warming fetches nothing more: {no_warming:?} vs {with:?}"
    );
    // Dune's own lookups and reads, with and without warming.
    let dunes_requests = |machine: &Machine| {
        let status = machine.mount().status();
        let requests = |name: &str| status["requests"][name].as_u64().unwrap();
        requests("lookup") - machine.mount().counter("warming_lookups") + requests("read")
    };
    let (cold, warmed) = (dunes_requests(&served[1].1), dunes_requests(b));
    assert_eq!(served[1].1.mount().counter("warming_lookups"), 0);
    assert!(b.mount().counter("warmed") > 0, "nothing was warmed");
    assert!(
        warmed * 4 < cold * 3,
        "with the kernel warmed Dune sent {warmed} lookups and reads; without, {cold}"
    );
    // A rule's metadata is handed to the kernel once the hint of a rule Dune asked for names
    // it: Dune reads most rules with no READ at all (each rule would cost one otherwise).
    let reads = b.mount().status()["requests"]["read"].as_u64().unwrap();
    let handed = b.mount().counter("rules_handed");
    assert!(
        handed > 0 && reads < rules.len() as u64,
        "{handed} rules handed; Dune read {reads} times through the daemon for {} rules",
        rules.len()
    );
    eprintln!(
        "HINTS | dune {} | {} rules | requests Dune waited for: {demand_without} without hints, \
         {demand_with} with ({ahead} fetched ahead) | lookups and reads Dune sent: {cold} without \
         warming, {warmed} with | {handed} rules handed, {reads} reads | MD5 of what was fetched \
         ahead: {} bytes alone, {} beside others",
        dune.generation.version,
        rules.len(),
        md5_hashed[0],
        md5_hashed[1]
    );

    // The last machine restarted over its full store: nothing is fetched, so no hint comes with
    // a fetch; the mount asks the boxes for the hints of the rules Dune finds, and warms the
    // kernel all the same.
    let (_, mut restarted) = served.pop().expect("the machine with warming");
    restarted.mount().wait_settled();
    let store = restarted.store().to_path_buf();
    let dead = restarted.mount.take().expect("mounted").kill9();
    restarted.mount = Some(dead.remount(&store, Some(&cluster.config), &["--recover"]));
    restores_every_rule_again(&restarted, &rules);
    assert_eq!(
        restarted.mount().counter("fetches"),
        0,
        "the store held it all"
    );
    let fresh = dunes_requests(&restarted);
    assert!(
        restarted.mount().counter("hints_received") > 0,
        "no hint asked"
    );
    assert!(
        restarted.mount().counter("warmed") > 0,
        "nothing was warmed"
    );
    assert!(
        fresh * 4 < cold * 3,
        "restarted, Dune sent {fresh} lookups and reads; a cold machine without warming, {cold}"
    );
    eprintln!(
        "HINTS | dune {} | restarted over a full store: Dune sent {fresh} lookups and reads",
        dune.generation.version
    );

    // A machine that got no hint with what it fetched (the boxes had none yet; here they are
    // deleted) follows the order it recorded itself: its next build warms the kernel all the
    // same, with no hint from any box.
    for hint in hints_held(&cluster) {
        fs::remove_file(&hint).expect("a hint removed");
    }
    let first = Machine::new(&cluster, dune);
    let build = first.build();
    assert_eq!(*build.cache_hits(), rules, "{}", build.describe());
    let warmed = first.mount().counter("warmed");
    // What it fetched is in the store once fetching paused (the rules are listed from there).
    first.mount().wait_settled();
    // The kernel forgets the rules' pages (as a host reclaiming idle pages does between builds),
    // so Dune reads each rule through the daemon again: the sign that it reached it.
    for rule in first.entries().iter().filter(|e| e.kind != EntryKind::File) {
        let file = fs::File::open(first.mount().path(rule.relative_path())).expect("a rule");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    }
    restores_every_rule_again(&first, &rules);
    assert_eq!(
        first.mount().counter("hints_received"),
        0,
        "a box sent a hint"
    );
    assert!(
        first.mount().counter("warmed") > warmed,
        "the second build warmed nothing ({warmed} warmed by the first)"
    );
}

#[test]
fn dune_2_9_restores_through_artifacts_shown_as_links() {
    if let Some(dune) = dune_and_fuse(&DUNE_2_9) {
        restores_through_links(&dune);
    }
}

#[test]
fn dune_3_22_restores_through_artifacts_shown_as_links() {
    if let Some(dune) = dune_and_fuse(&DUNE_3_22) {
        restores_through_links(&dune);
    }
}

/// `--reads links`: a cold machine restores every rule as any other does, through links from
/// the start: what it fetches is a link to its temp file as soon as it lands, so Dune sends the
/// mount no SETATTR even then (Dune 2.9 touches each artifact it restores). Once its store names
/// them, the same mount's links name the store files, and the temp names go. Dune restores every
/// rule through those links with no SETATTR and no READ of an artifact, and so does a fresh mount
/// over that store, with the same files as A.
fn restores_through_links(dune: &Dune) {
    let cluster = three_boxes();
    let a = Machine::new(&cluster, dune);
    a.build();
    a.wait_uploads_drained();
    let rules = a.rule_keys();
    let mut b = Machine::with_flags(&cluster, dune, &["--reads", "links"]);
    let cold = b.build();
    assert_restored_every_rule(&a, &b, &cold, &rules);
    let requests = |mount: &Mount, kind: &str| mount.status()["requests"][kind].as_u64().unwrap();
    assert_eq!(requests(b.mount(), "setattr"), 0, "{}", cold.describe());
    let cold_reads = requests(b.mount(), "read");
    // No artifact had its pages handed to the kernel: each was a link (rules' metadata may be).
    assert_eq!(
        b.mount().counter("pages_handed"),
        b.mount().counter("rules_handed"),
        "artifacts were read as files of the mount"
    );

    b.mount().wait_settled();
    let store = b.store().to_path_buf();
    let artifacts = common::artifacts(&store);
    assert!(!artifacts.is_empty());
    let links_named = |mount: &Mount| {
        artifacts.iter().all(|(key, in_store)| {
            let entry = Entry {
                kind: EntryKind::File,
                key: *key,
            };
            fs::read_link(mount.path(entry.relative_path()))
                .is_ok_and(|target| target == fs::canonicalize(in_store).unwrap())
        })
    };
    // Once the store names them, the links name the store files, and the temp files go.
    common::wait_until(
        "the fetched artifacts' links name their store files",
        || links_named(b.mount()),
    );
    common::wait_until("the temp names of the settled artifacts went", || {
        common::temp_files(&store).is_empty()
    });
    // Dune reads the artifacts through the links, not through the daemon: what it sends the
    // mount is no SETATTR (Dune 2.9 touches each artifact it restores) and at most a READ of
    // each rule's metadata (the artifacts outnumber the rules).
    let metadata = b.entries().len() - artifacts.len();
    // (So a READ of each artifact would show.)
    assert!(
        artifacts.len() > metadata,
        "{} artifacts, {metadata} metadata entries",
        artifacts.len()
    );
    // The cold build read no artifact through the daemon either.
    assert!(
        cold_reads <= metadata as u64,
        "the cold build: {cold_reads} READs for {metadata} metadata entries"
    );
    // Dune's own lookups and READLINKs: the kernel holds the links already. Counted from one
    // reading of the status file before the build and one after: the status file is itself a
    // link, looked up and read at each reading (which the one after counts: 2).
    let walks = |status: &serde_json::Value| {
        let (requests, counters) = (&status["requests"], &status["counters"]);
        count_in(requests, "lookup") + count_in(requests, "readlink")
            - count_in(counters, "warming_lookups")
            - count_in(counters, "warming_readlinks")
    };
    let before = b.mount().status();
    let again = restores_every_rule_again(&b, &rules);
    let after = b.mount().status();
    assert_restored_every_rule(&a, &b, &again, &rules);
    let change =
        |what: &str| count_in(&after["requests"], what) - count_in(&before["requests"], what);
    assert_eq!(change("setattr"), 0, "{}", again.describe());
    let read = change("read");
    assert!(
        read <= metadata as u64,
        "{read} READs for {metadata} metadata entries"
    );
    let walked = walks(&after) - walks(&before) - 2;
    assert!(
        walked * 4 < artifacts.len() as u64,
        "Dune sent {walked} lookups and READLINKs for {} artifacts",
        artifacts.len()
    );

    let dead = b.mount.take().expect("mounted").kill9();
    let flags = ["--recover", "--reads", "links"];
    b.mount = Some(dead.remount(&store, Some(&cluster.config), &flags));
    let fresh = restores_every_rule_again(&b, &rules);
    assert_restored_every_rule(&a, &b, &fresh, &rules);
    let mount = b.mount();
    assert_eq!(mount.counter("fetches"), 0, "the store held it all");
    assert_eq!(requests(mount, "setattr"), 0, "{}", fresh.describe());
    let read = requests(mount, "read");
    assert!(
        read <= metadata as u64,
        "{read} READs for {metadata} metadata entries"
    );
    assert!(links_named(mount));
    eprintln!(
        "LINKS | dune {} | {} rules restored through links | a fresh mount's requests: {}",
        dune.generation.version,
        rules.len(),
        mount.status()["requests"]
    );
}

/// The number `what` of a status document's object (its `requests` or `counters`).
fn count_in(object: &serde_json::Value, what: &str) -> u64 {
    object[what]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {what} in {object}"))
}

/// A clean build on `machine` again (its `_build` removed) restores every one of `rules`.
fn restores_every_rule_again(machine: &Machine, rules: &BTreeSet<String>) -> Build {
    fs::remove_dir_all(machine.project.join("_build")).expect("a clean build");
    let build = machine.build();
    assert_eq!(*build.cache_hits(), *rules, "{}", build.describe());
    build
}

/// With a small byte budget, what is fetched ahead stays within it (and the build is the same).
/// Hints that lie (naming rules no box holds, the rule itself) cost only requests: a cold machine
/// still restores every rule, the same files, nothing else.
#[test]
fn a_small_budget_holds_and_wrong_hints_change_only_traffic() {
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let cluster = three_boxes();
    let a = machine_a_publishing_hints(&cluster, &dune);
    let rules = a.rule_keys();
    let restores_as_a = |machine: &Machine, build: &Build| {
        assert_eq!(*build.cache_hits(), rules, "{}", build.describe());
        assert!(build.rule_commands().is_empty(), "{}", build.describe());
        assert_same_tree(
            &a.project.join("_build/default"),
            &machine.project.join("_build/default"),
        );
        assert_eq!(machine.mount().counter("verification_failures"), 0);
        assert!(
            machine.mount().counter("hints_received") > 0,
            "no hint was read"
        );
    };

    let budget = 64 << 10;
    let b = Machine::with_flags(&cluster, &dune, &["--prefetch-budget", "64KiB"]);
    let peak = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let build = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = b.mount().status()["ahead"]["bytes"].as_u64().unwrap_or(0);
                peak.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let build = b.build();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        build
    });
    restores_as_a(&b, &build);
    let peak = peak.into_inner();
    assert!(
        peak <= budget,
        "{peak} bytes fetched ahead, over the {budget}-byte budget"
    );
    assert!(
        b.mount().counter("ahead_over_budget") > 0,
        "the budget never bound: the test proves nothing"
    );

    // Every hint replaced by lies, written as a box keeps them.
    let held = hints_held(&cluster);
    assert!(!held.is_empty());
    for (i, path) in held.iter().enumerate() {
        let own = path.file_name().unwrap().to_str().unwrap().to_string();
        let kind_dir = path.parent().unwrap().parent().unwrap();
        let kind = format!(
            "{}/{}",
            kind_dir
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap(),
            kind_dir.file_name().unwrap().to_str().unwrap()
        );
        let mut lies = vec![format!("{kind}/{own}")];
        for n in 0..15u128 {
            lies.push(format!("{kind}/{:032x}", (i as u128) << 64 | n));
        }
        fs::write(path, lies.join("\n") + "\n").unwrap();
    }
    let c = Machine::new(&cluster, &dune);
    let before = box_requests(&cluster);
    let build = c.build();
    let served = requests_between(&before, &box_requests(&cluster));
    restores_as_a(&c, &build);
    assert!(
        served.get("GET 404 ahead").copied().unwrap_or(0) > 0,
        "the lies cost no request: {served:?}"
    );
}

/// One cluster serves Dune 2.9, 3.19 and 3.22 at once: a machine A of each generation stores
/// its build (the three in parallel), then a machine B of each, with an empty store, restores
/// exactly its own generation's rules (the three in parallel). No rule is shared between
/// generations; 2.9 and 3.19 key artifacts alike (MD5), so they share some, and an A may find
/// one already stored by the other and store only the rest; 3.22's (BLAKE3) are all its own.
/// Every store and box passes `fsck`.
#[test]
fn three_dune_generations_share_one_cluster() {
    if !fuse_available() {
        return;
    }
    let found: Vec<Option<Dune>> = [&DUNE_2_9, &DUNE_3_19, &DUNE_3_22]
        .into_iter()
        .map(Generation::find)
        .collect();
    let Some(dunes) = found.into_iter().collect::<Option<Vec<Dune>>>() else {
        return;
    };
    let cluster = three_boxes();

    let a: Vec<Machine> = dunes.iter().map(|d| Machine::new(&cluster, d)).collect();
    for built in in_parallel(&a, Machine::build) {
        assert!(
            built.cache_hits().is_empty(),
            "a first build hit the cache another generation filled: {}",
            built.describe()
        );
    }
    let mut stored = Vec::new();
    for machine in &a {
        machine.wait_uploads_drained();
        let entries = machine.entries();
        assert_generation_wrote(&machine.dune, machine.store(), &entries);
        assert_on_owning_boxes(&cluster, machine.store(), &entries);
        stored.push(entries);
    }
    for b in &cluster.boxes {
        assert_fsck(b.root());
    }
    let rules: Vec<BTreeSet<String>> = a.iter().map(Machine::rule_keys).collect();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        assert!(
            rules[i].is_disjoint(&rules[j]),
            "dune {} and {} share rule keys",
            dunes[i].generation.version,
            dunes[j].generation.version
        );
    }

    let b: Vec<Machine> = dunes.iter().map(|d| Machine::new(&cluster, d)).collect();
    let restored = in_parallel(&b, Machine::build);
    let mut needed: Vec<BTreeSet<Key>> = Vec::new();
    for (i, build) in restored.iter().enumerate() {
        assert_eq!(
            *build.cache_hits(),
            rules[i],
            "B's hits are not its generation's rules: {}",
            build.describe()
        );
        assert_eq!(
            build.rule_commands(),
            Vec::<&str>::new(),
            "B ran commands: {}",
            build.describe()
        );
        assert_same_tree(
            &a[i].project.join("_build/default"),
            &b[i].project.join("_build/default"),
        );
        // B's store now holds its rules and every artifact they name: all of what its A stored,
        // plus what its A found already stored by another generation of its era.
        b[i].mount().wait_settled();
        let fetched = b[i].entries();
        assert_generation_wrote(&b[i].dune, b[i].store(), &fetched);
        assert_eq!(b[i].rule_keys(), rules[i], "dune {}'s B", build.version);
        let missing: Vec<_> = stored[i].difference(&fetched).collect();
        let by_others: Vec<_> = fetched
            .difference(&stored[i])
            .filter(|e| !stored.iter().any(|other| other.contains(e)))
            .collect();
        assert!(
            missing.is_empty() && by_others.is_empty(),
            "dune {}'s B lacks {missing:?} of what its A stored, and holds {by_others:?} \
             that no A stored",
            build.version
        );
        assert_fsck(b[i].store());
        let files = fetched.iter().filter(|e| e.kind == EntryKind::File);
        needed.push(files.map(|e| e.key).collect());
    }
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let shared = needed[i].intersection(&needed[j]).count();
        let (gi, gj) = (dunes[i].generation, dunes[j].generation);
        assert_eq!(
            shared > 0,
            gi.era == gj.era,
            "dune {} and {} share {shared} artifacts",
            gi.version,
            gj.version
        );
    }
    for b in &cluster.boxes {
        assert_fsck(b.root());
    }
}

/// `f` of every machine, each on its own thread; the results in the machines' order.
fn in_parallel<T: Send>(machines: &[Machine], f: impl Fn(&Machine) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let f = &f;
        let running: Vec<_> = machines
            .iter()
            .map(|machine| scope.spawn(move || f(machine)))
            .collect();
        running
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    })
}

/// A box killed before B builds costs B only the rules whose entries lived there: B rebuilds
/// them, the build succeeds in bounded time, and what B stored for the dead box reaches it once
/// it is back.
#[test]
fn a_dead_box_costs_only_rebuilds() {
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let mut cluster = three_boxes();
    let a = Machine::new(&cluster, &dune);
    a.build();
    a.wait_uploads_drained();
    let rules = a.rule_keys().len();

    cluster.boxes[1].kill();
    let b = Machine::new(&cluster, &dune);
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
    let Some(dune) = dune_and_fuse(&DUNE_2_9) else {
        return;
    };
    let cluster = three_boxes();
    let mut a = Machine::new(&cluster, &dune);
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
