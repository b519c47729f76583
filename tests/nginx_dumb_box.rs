//! A plain nginx with WebDAV `PUT` (`scripts/nginx-dumb-box.conf`) as a *dumb* cache box: the
//! real `push` fills it with a real Dune cache, its root becomes that cache's `db/` layout, and
//! the real `get` reads every entry back, verified by the client since the box verifies nothing.
//! The dumb box's limits (docs/protocol.md) are checked too, so a change in them is noticed.

mod common;

use std::fs;

use common::{
    build_real_cache, dune_cachefs, entries, mode, parallel_each, raw_put, write_config, NginxBox,
};
use dune_cachefs::cluster::client::{
    make_agent, BoxClient, ClientError, ClientOptions, RemoteEntry,
};
use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};

#[test]
fn a_plain_nginx_with_webdav_put_serves_as_a_dumb_box() {
    let cache = build_real_cache();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let nginx = NginxBox::start(&root, &dir.path().join("nginx"), "1g");
    let config = dir.path().join("cluster.sexp");
    write_config(&config, &[(&nginx.url(), &[("0", "f")])], "");
    let config_arg = config.to_str().unwrap();
    let all = entries(&cache.db);
    let artifacts = all
        .iter()
        .filter(|(e, _)| e.kind == EntryKind::File)
        .count();

    let out = dune_cachefs(&["push", "--config", config_arg, cache.db.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "push to nginx: {}\nnginx log:\n{}",
        out.describe(),
        nginx.log()
    );
    assert!(
        out.stdout.contains(&format!(
            ": {} uploaded, 0 already there, 0 collisions, 0 failed",
            all.len()
        )),
        "{}",
        out.describe()
    );
    // nginx's root is now the cache's db/ layout, entry for entry.
    for (entry, path) in &all {
        let held = fs::read(root.join(entry.relative_path()))
            .unwrap_or_else(|e| panic!("{entry} is not in nginx's root: {e}"));
        assert!(
            held == fs::read(path).unwrap(),
            "{entry} differs in nginx's root"
        );
    }
    assert_eq!(
        entries(&root).len(),
        all.len(),
        "nginx's root holds other entries"
    );

    // The one way the layout falls short: nginx keeps no executable bit, and fsck says so for
    // exactly the executables.
    let executables = all
        .iter()
        .filter(|(e, p)| e.kind == EntryKind::File && mode(p) & 0o111 != 0)
        .count();
    let fsck = dune_cachefs(&["fsck", root.to_str().unwrap()]);
    let findings: Vec<&str> = fsck.stdout.lines().collect();
    assert!(
        executables > 0
            && findings.len() == executables
            && findings.iter().all(|l| l.contains("key says executable")),
        "fsck of nginx's root should report the {executables} executables and nothing else: {}",
        fsck.describe()
    );

    // Every entry comes back verified; artifacts get their mode from the key, since nginx
    // stores every file 0644.
    let got = dir.path().join("got");
    fs::create_dir(&got).unwrap();
    parallel_each(&all, 4, |i, (entry, path)| {
        let out_file = got.join(format!("out-{i}"));
        let key = entry.key.to_string();
        let mut args = vec![
            "get",
            "--config",
            config_arg,
            &key,
            "-o",
            out_file.to_str().unwrap(),
        ];
        if let EntryKind::Meta(v) = entry.kind {
            args.extend([
                "--meta",
                "--meta-version",
                if v == MetaVersion::V4 { "4" } else { "5" },
            ]);
        }
        let out = dune_cachefs(&args);
        assert!(
            out.status.success(),
            "get {entry} from nginx: {}",
            out.describe()
        );
        assert!(
            fs::read(&out_file).unwrap() == fs::read(path).unwrap(),
            "get {entry}: other bytes"
        );
        if entry.kind == EntryKind::File {
            assert_eq!(mode(&out_file), mode(path), "mode of get -o {entry}");
        }
    });

    // A second push finds every artifact there (HEAD). Metadata is sent again: nginx answers 204
    // (replaced), which a dumb box cannot tell from new, so it counts as uploaded.
    let again = dune_cachefs(&["push", "--config", config_arg, cache.db.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "second push to nginx: {}",
        again.describe()
    );
    assert!(
        again.stdout.contains(&format!(
            ": {} uploaded, {artifacts} already there, 0 collisions, 0 failed",
            all.len() - artifacts
        )),
        "{}",
        again.describe()
    );

    // A miss is a 404 (HEAD and GET): `get` says the box does not hold it.
    let absent = key::file_key(Era::Md5, &b"never stored\n"[..], false).unwrap();
    let out = dune_cachefs(&["get", "--config", config_arg, &absent.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "get of an absent key: {}",
        out.describe()
    );
    assert!(out.stderr.contains("does not hold"), "{}", out.describe());

    // nginx stores whatever it is sent under any key; the client refuses it and writes nothing.
    let forged = Entry {
        kind: EntryKind::File,
        key: absent,
    };
    let answer = raw_put(
        nginx.addr(),
        &format!("/{}", forged.relative_path().display()),
        "",
        b"forged\n",
    );
    assert_eq!(
        answer.status, 201,
        "nginx stores unverified bytes: {answer:?}"
    );
    let out_file = got.join("forged");
    let out = dune_cachefs(&[
        "get",
        "--config",
        config_arg,
        &absent.to_string(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "get accepted forged bytes: {}",
        out.describe()
    );
    assert!(out.stderr.contains("bad copy"), "{}", out.describe());
    assert!(!out_file.exists(), "get wrote unverified bytes");

    // HEAD, as the mount will use it: the size, no executable bit (the key gives it), and 404
    // (None) for a miss.
    let client = BoxClient::new(&nginx.url(), make_agent(&ClientOptions::default()).unwrap());
    let (entry, path) = &all[0];
    let size = fs::metadata(path).unwrap().len();
    assert_eq!(
        client.head(entry).unwrap(),
        Some(RemoteEntry {
            size,
            executable: None
        })
    );
    let missing = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"never stored either\n"[..], false).unwrap(),
    };
    assert_eq!(
        client.head(&missing).unwrap(),
        None,
        "HEAD of a missing entry"
    );

    // No shard listings on a dumb box: the client reports the refusal, never a wrong listing.
    let shard = entry.key.shard();
    match client.list(EntryKind::File, shard) {
        Err(ClientError::Status { status: 400, .. }) => {}
        other => panic!("listing a shard on nginx: {other:?}, want HTTP 400"),
    }

    let leftovers: Vec<_> = fs::read_dir(&got)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("out-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "get left scratch files: {leftovers:?}"
    );
}
