//! Running a mount for a team: its Prometheus metrics and its boxes' (checked by `promtool`, the
//! Prometheus project's own checker, and against the status file).

use std::fs;
use std::net::SocketAddr;
use std::process::Command;

use dune_cachefs::dune::key::Era;
use dune_cachefs::dune::metadata::Metadata;

use crate::common::{self, COMMAND_DEADLINE};
use crate::harness::{fuse_available, pushed_cluster, store_artifact, Mount, MountedFs};

/// `promtool check metrics` on `page`: its output, whatever its verdict (problems are on stderr).
fn promtool_check(page: &str) -> common::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("metrics.txt");
    fs::write(&file, page).expect("write the page");
    common::run(
        // It reads the page on stdin (which `common::run` closes).
        Command::new("sh")
            .args(["-c", "promtool check metrics < \"$1\"", "sh"])
            .arg(&file),
        COMMAND_DEADLINE,
    )
}

/// Asserts that `promtool` accepts `page`, which came from `what`.
fn assert_promtool_accepts(what: &str, page: &str) {
    let checked = promtool_check(page);
    assert!(
        checked.status.success() && checked.stderr.trim().is_empty(),
        "promtool refuses the metrics of {what}: {}\n{page}",
        checked.describe()
    );
}

/// `GET /metrics` on `addr`: the page, after checking the answer's status and content type.
fn scrape(addr: SocketAddr) -> String {
    let response = common::raw_get(addr, "/metrics");
    assert_eq!(response.status, 200, "{addr}/metrics: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some(dune_cachefs::metrics::CONTENT_TYPE)
    );
    response.text()
}

/// The value of the sample `series` (a name with its labels, as written) on `page`.
fn sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// A mount with `--metrics` over a pushed real cache, read in full once: `promtool check
/// metrics` accepts its page and each box's `GET /metrics`; the mount's counters are the status
/// file's, its transfer histogram counted every transfer, every box shows up, and the boxes
/// counted the GETs the mount made and the bytes they sent. A page `promtool` must refuse (a
/// counter without `_total`) is refused, so the check is not one that cannot fail.
#[test]
fn metrics_of_a_mount_and_its_boxes_pass_promtool_and_agree_with_the_status_file() {
    if !fuse_available() {
        return;
    }
    let bad =
        promtool_check("# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n");
    assert!(
        !bad.status.success() && bad.stderr.contains("_total"),
        "promtool accepted a counter without _total: {}",
        bad.describe()
    );

    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mount = Mount::start(
        &cluster.dir().join("store"),
        Some(&cluster.config),
        &["--metrics", &addr.to_string()],
    );
    let originals = common::entries(&cache.db);
    for (entry, original) in &originals {
        let read = fs::read(mount.path(entry.relative_path()))
            .unwrap_or_else(|e| panic!("read {entry}: {e}"));
        assert_eq!(read, fs::read(original).unwrap(), "{entry}");
    }
    mount.wait_settled();

    let page = scrape(addr);
    assert_promtool_accepts("the mount", &page);
    let status = mount.status();
    let fetches = status["counters"]["fetches"].as_u64().unwrap();
    assert!(fetches > 0, "nothing fetched: {status}");
    // The status file was read after the page: nothing fetched in between, all was read.
    assert_eq!(sample(&page, "dune_cachefs_mount_fetches_total"), fetches);
    assert_eq!(
        sample(&page, "dune_cachefs_mount_bytes_fetched_total"),
        status["counters"]["bytes_fetched"].as_u64().unwrap()
    );
    assert_eq!(
        sample(&page, "dune_cachefs_mount_transfer_duration_seconds_count"),
        fetches,
        "every transfer ended and was timed"
    );
    assert_eq!(sample(&page, "dune_cachefs_mount_fetches_in_flight"), 0);
    assert_eq!(
        sample(&page, "dune_cachefs_mount_verification_failures_total"),
        0
    );
    // The kernel opens files without asking (`--reads kept`), and reads each once.
    assert!(
        sample(
            &page,
            "dune_cachefs_mount_kernel_requests_total{operation=\"read\"}"
        ) >= originals.len() as u64
    );
    for boxed in &cluster.boxes {
        let url = boxed.url();
        assert_eq!(
            sample(
                &page,
                &format!("dune_cachefs_mount_box_up{{box=\"{url}\"}}")
            ),
            1
        );
        assert_eq!(
            sample(
                &page,
                &format!("dune_cachefs_mount_uploads_pending{{box=\"{url}\"}}")
            ),
            0
        );
    }

    let (mut gets, mut sent) = (0, 0);
    for boxed in &cluster.boxes {
        let page = scrape(boxed.addr());
        assert_promtool_accepts(&boxed.url(), &page);
        let ok = "dune_cachefs_box_requests_total{method=\"GET\",code=\"200\",ahead=\"false\"}";
        gets += sample(&page, ok);
        sent += sample(&page, "dune_cachefs_box_sent_bytes_total");
        let held: u64 = ["files/v4", "meta/v4", "meta/v5"]
            .iter()
            .map(|kind| {
                sample(
                    &page,
                    &format!("dune_cachefs_box_held_entries{{kind=\"{kind}\"}}"),
                )
            })
            .sum();
        assert!(held > 0, "{}: holds nothing:\n{page}", boxed.url());
        assert!(
            sample(
                &page,
                "dune_cachefs_box_request_duration_seconds_count{method=\"GET\"}"
            ) >= 1
        );
    }
    // Each entry was fetched once, with a GET its box answered 200 (hints and listings are GETs
    // too, so at least as many).
    assert!(
        gets >= fetches,
        "{gets} GETs answered 200 for {fetches} fetches"
    );
    assert!(sent >= status["counters"]["bytes_fetched"].as_u64().unwrap());
}

/// `dune-cachefs status` on a mount whose box died: the human view names every box with its
/// state, the hit rate and the failed fetch among the last errors; `--json` is the status file
/// itself; a directory that is not a mount gets a plain error, not a view.
#[test]
fn status_shows_the_boxes_the_hit_rate_and_the_last_errors() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let mut cluster = pushed_cluster(&cache.db);
    let mount = Mount::start(&cluster.dir().join("store"), Some(&cluster.config), &[]);
    let artifacts = common::artifacts(&cache.db);
    let (dead_key, _) = artifacts
        .iter()
        .find(|(key, _)| cluster.owner_of(key) == 0)
        .expect("an artifact on the first box");
    let (live_key, _) = artifacts
        .iter()
        .find(|(key, _)| cluster.owner_of(key) != 0)
        .expect("an artifact on another box");
    let path_of =
        |key: &dune_cachefs::dune::key::Key| mount.path(format!("files/v4/{}/{key}", key.shard()));
    fs::read(path_of(live_key)).expect("an artifact of a live box");
    let dead_url = cluster.boxes[0].url();
    cluster.boxes[0].kill();
    assert!(
        fs::read(path_of(dead_key)).is_err(),
        "read an artifact of a dead box"
    );

    let point = mount.point.to_str().unwrap();
    let shown = common::dune_cachefs(&["status", point]);
    assert!(shown.status.success(), "status: {}", shown.describe());
    let view = &shown.stdout;
    assert!(
        view.starts_with(&format!("mount:    {point} (store ")),
        "{view}"
    );
    for (i, boxed) in cluster.boxes.iter().enumerate() {
        let line = view
            .lines()
            .find(|line| line.contains(&format!(" {}  ", boxed.url())))
            .unwrap_or_else(|| panic!("box {} not shown:\n{view}", boxed.url()));
        let state = if i == 0 { "  down (" } else { "  up" };
        assert!(line.contains(state), "box {i}: {line}");
    }
    assert!(
        view.contains("lookups:  ") && view.contains("hit rate "),
        "{view}"
    );
    let error = view
        .lines()
        .skip_while(|line| *line != "last errors:")
        .find(|line| line.contains(&dead_key.to_string()))
        .unwrap_or_else(|| panic!("the failed fetch is not among the last errors:\n{view}"));
    assert!(error.contains(&dead_url), "{error}");

    let json = common::dune_cachefs(&["status", "--json", point]);
    assert!(json.status.success(), "status --json: {}", json.describe());
    let document: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(document["store"], mount.status()["store"]);
    assert_eq!(document["boxes"][0]["health"]["state"], "down");
    assert!(!document["errors"].as_array().unwrap().is_empty());

    let elsewhere = tempfile::tempdir().unwrap();
    let refused = common::dune_cachefs(&["status".as_ref(), elsewhere.path().as_os_str()]);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.describe());
    assert!(
        refused.stderr.contains("is not a dune-cachefs mount"),
        "{}",
        refused.describe()
    );
}

/// Where `mount(8)` looks for the helper of `-t fuse.dune-cachefs`.
const HELPER: &str = "/sbin/mount.fuse.dune-cachefs";

/// The helper installed as a link to the binary under test for as long as it lives; whatever
/// was there before is put back when it is dropped.
struct InstalledHelper {
    before: Option<std::path::PathBuf>,
}

impl InstalledHelper {
    fn install() -> InstalledHelper {
        let before = fs::read_link(HELPER).ok();
        let staged = format!("{HELPER}.test-{}", std::process::id());
        let _ = fs::remove_file(&staged);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dune-cachefs"), &staged)
            .expect("link the helper");
        fs::rename(&staged, HELPER).expect("install the helper");
        InstalledHelper { before }
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(before) = &self.before {
            let _ = std::os::unix::fs::symlink(before, HELPER);
        }
    }
}

/// The pids of live `dune-cachefs mount` processes serving `point`.
fn mount_processes(point: &std::path::Path) -> Vec<u32> {
    let point = point.to_str().unwrap();
    let mut pids = Vec::new();
    for item in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = item.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A zombie's cmdline is empty: it has exited.
        let cmdline = fs::read(item.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serving = args.get(1) == Some(&&b"mount"[..]) && args.contains(&point.as_bytes());
        if serving {
            pids.push(pid);
        }
    }
    pids
}

/// Runs `mount`/`umount` with `args`.
fn run_tool(tool: &str, args: &[&str]) -> common::Output {
    common::run(Command::new(tool).args(args), COMMAND_DEADLINE)
}

/// Unmounts `point` with `umount` and waits for its process to exit; its log (`log`) must then
/// say it exited after an unmount for the `nth` time, and show no error.
fn umount_cleanly(point: &std::path::Path, log: &std::path::Path, nth: usize) {
    let unmounted = run_tool("umount", &[point.to_str().unwrap()]);
    assert!(
        unmounted.status.success(),
        "umount: {}",
        unmounted.describe()
    );
    common::wait_until("the mount's process has exited", || {
        mount_processes(point).is_empty()
    });
    assert!(!crate::harness::is_mounted(point));
    let logged = fs::read_to_string(log).unwrap();
    let exits = format!("{} is unmounted: exiting", point.display());
    assert!(
        logged.matches(&exits).count() == nth && !logged.contains(" ERROR "),
        "the mount did not end cleanly:\n{logged}"
    );
}

/// `mount -t fuse.dune-cachefs STORE MOUNTPOINT -o config=...` returns once the mount is up (an
/// entry reads back at once), `umount` ends its process cleanly, the same works from an fstab
/// line (`mount -T FSTAB MOUNTPOINT`), and bad options or a bad config fail the `mount` command
/// with the reason, leaving nothing mounted.
#[test]
fn mount_and_umount_through_mount8_and_an_fstab_line() {
    if !fuse_available() {
        return;
    }
    let _helper = InstalledHelper::install();
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let point = cluster.dir().join("mnt");
    fs::create_dir(&point).unwrap();
    let log = cluster.dir().join("mount.log");
    let (store, point_str) = (cluster.dir().join("store"), point.to_str().unwrap());
    let options = format!(
        "config={},log={},nofail,_netdev",
        cluster.config.display(),
        log.display()
    );
    let (entry, original) = common::entries(&cache.db).swap_remove(0);

    let store_str = store.to_str().unwrap();
    let mount_t = |options: &str| {
        let args = [
            "-t",
            "fuse.dune-cachefs",
            store_str,
            point_str,
            "-o",
            options,
        ];
        run_tool("mount", &args)
    };

    let mounted = mount_t(&options);
    assert!(mounted.status.success(), "mount: {}", mounted.describe());
    assert_eq!(
        fs::read(point.join(entry.relative_path())).expect("read through the mount at once"),
        fs::read(&original).unwrap()
    );
    let pids = mount_processes(&point);
    assert_eq!(pids.len(), 1, "one process serves the mount: {pids:?}");
    umount_cleanly(&point, &log, 1);

    // The same from an fstab line.
    let fstab = cluster.dir().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {point_str} fuse.dune-cachefs {options} 0 0\n",
            store.display()
        ),
    )
    .unwrap();
    let mounted = run_tool("mount", &["-T", fstab.to_str().unwrap(), point_str]);
    assert!(
        mounted.status.success(),
        "mount from fstab: {}",
        mounted.describe()
    );
    assert!(point.join(entry.relative_path()).exists());
    umount_cleanly(&point, &log, 2);

    // Bad options and a bad config: refused with the reason, nothing mounted.
    let missing = cluster.dir().join("no-such-config.sexp");
    for (options, reason) in [
        ("colour=blue".to_string(), "unknown option \"colour=blue\""),
        (
            format!("config={}", missing.display()),
            "no-such-config.sexp",
        ),
    ] {
        let refused = mount_t(&options);
        assert!(
            !refused.status.success() && refused.stderr.contains(reason),
            "-o {options}: {}",
            refused.describe()
        );
    }
    assert!(!crate::harness::is_mounted(&point));
    assert!(mount_processes(&point).is_empty());
}

/// A mount started with `$NOTIFY_SOCKET` (as its systemd unit starts it) sends `READY=1` there
/// once it is mounted: its status file answers at once after it.
#[test]
fn a_mount_tells_systemd_when_it_is_ready() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(common::WAIT_DEADLINE))
        .unwrap();
    let point = dir.path().join("db");
    fs::create_dir(&point).unwrap();
    let mut child = common::dune_cachefs_command()
        .arg("mount")
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg(&point)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start a mount");
    let mut buf = [0; 64];
    let received = socket.recv(&mut buf);
    let status = received
        .is_ok()
        .then(|| fs::read(point.join(".dune-cachefs-status")).is_ok());
    common::signal(child.id(), rustix::process::Signal::TERM);
    let exit = child.wait().expect("the mount exits");
    let n = received.expect("READY=1 from the mount");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(
        status,
        Some(true),
        "the status file did not answer after READY=1"
    );
    assert!(exit.success(), "the mount ended with {exit}");
    assert!(!crate::harness::is_mounted(&point));
}

/// `--store-size` keeps a mount's store under its bound while mounted. A pushed cache read
/// through an empty mount bounded to 1 byte is trimmed down to the one artifact the test holds
/// open (still readable, its file still in the store) and the metadata whose artifacts are all
/// still here; every trimmed entry reads back the same (fetched again from its box); the status
/// file counts the trims and the open entry kept. An artifact stored through the mount while
/// its box is down is kept until its upload.
#[test]
fn store_size_trims_the_store_while_mounted_and_keeps_open_entries() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = pushed_cluster(&cache.db);
    let store = cluster.dir().join("store");
    let mount = Mount::start(
        &store,
        Some(&cluster.config),
        // The mount is asked at each open only in the modes other than `kept` (the default),
        // and only what it is asked to open can it keep.
        &[
            "--store-size",
            "1",
            "--trim-interval",
            "1",
            "--reads",
            "daemon",
        ],
    );
    let originals = common::entries(&cache.db);
    let (kept, kept_original) = common::artifacts(&cache.db).swap_remove(0);
    let kept_path = format!("files/v4/{}/{kept}", kept.shard());
    let mut held = fs::File::open(mount.path(&kept_path)).expect("open an artifact");
    let read_all = || {
        for (entry, original) in &originals {
            let read = fs::read(mount.path(entry.relative_path()))
                .unwrap_or_else(|e| panic!("read {entry}: {e}"));
            assert_eq!(read, fs::read(original).unwrap(), "{entry}");
        }
    };
    read_all();
    mount.wait_settled();
    // Only the open artifact, and metadata naming nothing else (metadata that settled while a
    // trim walked the store goes at the next one).
    let trimmed = || {
        let artifacts: Vec<_> = common::artifacts(&store)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        artifacts == [kept]
            && common::metadata_entries(&store).iter().all(|(_, path)| {
                // Read after the listing, it may have been trimmed meanwhile.
                fs::read(path).map_or(true, |bytes| {
                    let metadata = Metadata::parse(&bytes).expect("metadata");
                    let names_only_kept = metadata.artifact_keys().all(|key| key == kept);
                    names_only_kept
                })
            })
    };
    common::wait_until("the store is trimmed down to the open artifact", trimmed);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut bytes).unwrap();
    assert_eq!(
        bytes,
        fs::read(&kept_original).unwrap(),
        "the open artifact"
    );
    let status = mount.status();
    let counters = &status["counters"];
    assert!(counters["trims"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        counters["trim_kept_open"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        counters["trimmed_artifacts"].as_u64().unwrap() + 1
            >= common::artifacts(&cache.db).len() as u64,
        "{status}"
    );
    let shown = common::dune_cachefs(&["status", mount.point.to_str().unwrap()]);
    assert!(
        shown.stdout.contains("\nstore:    ") && shown.stdout.contains(" trims; "),
        "status does not show the trims: {}",
        shown.describe()
    );
    drop(held);
    read_all();
    // Fetched entries are named in the store once fetching pauses: only then can a trim see them.
    mount.wait_settled();

    // An entry Dune stores while its box is down waits for its upload: trims keep it.
    let bytes = b"stored while its box is down\n".to_vec();
    let key = dune_cachefs::dune::key::file_key(Era::Md5, &bytes[..], false).unwrap();
    let mut cluster = cluster;
    let owner = cluster.owner_of(&key);
    let kept_open = mount.counter("trim_kept_open");
    cluster.boxes[owner].kill();
    store_artifact(&mount, &key, &bytes);
    // Nothing else is open or pending now: a trim that walked the store since keeps it.
    common::wait_until("a trim keeps the pending artifact", || {
        mount.counter("trim_kept_open") > kept_open
    });
    assert_eq!(mount.status()["uploads"]["pending"], 1);
    let artifacts: Vec<_> = common::artifacts(&store)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        artifacts,
        [key],
        "the pending artifact, and only it, is kept"
    );
}

/// A small ext4 filesystem in a file, made with the given `mkfs.ext4 -O` features and mounted
/// through a loop device under `dir`; `None` (and a note) where `mkfs.ext4` is missing, as on a
/// machine without e2fsprogs.
fn loop_ext4(dir: &std::path::Path, name: &str, features: &str) -> Option<MountedFs> {
    let image = dir.join(format!("{name}.img"));
    fs::File::create(&image)
        .and_then(|file| file.set_len(64 << 20))
        .expect("an image file");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", features])
        .arg(&image)
        .status();
    match made {
        Ok(status) => assert!(status.success(), "mkfs.ext4 -O {features} failed"),
        Err(e) => {
            eprintln!("SKIP: mkfs.ext4 is missing ({e}): it is in Debian's e2fsprogs");
            return None;
        }
    }
    let point = dir.join(name);
    fs::create_dir(&point).unwrap();
    let mounted = run_tool(
        "mount",
        &[
            "-o",
            "loop",
            image.to_str().unwrap(),
            point.to_str().unwrap(),
        ],
    );
    assert!(mounted.status.success(), "{}", mounted.describe());
    Some(MountedFs { point })
}

/// A store on ext4 made without a journal is named in a warning when the mount starts (there,
/// making files right after removing many is slow, which nothing else would show); a store on
/// ext4 with a journal is not.
#[test]
fn a_store_on_ext4_without_a_journal_is_named_at_start() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, features, warned) in [
        ("without-journal", "^has_journal", true),
        ("with-journal", "has_journal", false),
    ] {
        let Some(filesystem) = loop_ext4(dir.path(), name, features) else {
            return;
        };
        let mut mount = Mount::start(&filesystem.point.join("store"), None, &[]);
        let log = mount.log();
        mount.stop();
        assert_eq!(
            log.contains("is on ext4 without a journal"),
            warned,
            "ext4 -O {features}:\n{log}"
        );
    }
}
