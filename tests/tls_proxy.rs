//! Cache boxes behind a real nginx terminating TLS (`scripts/nginx-tls-proxy.conf`, certificates
//! from `scripts/make-certs`), as docs/deployment.md sets them up: the real `push` and `get` of a
//! real Dune cache and the library client go through it with the CA and a client certificate;
//! a client without a certificate, with one from another CA, or not trusting the proxy's CA is
//! refused, and the error says so in plain words; with the write-only setting anyone reads and
//! only certified clients write.
//!
//! No FUSE is needed (the mount through the proxy is in mount-tests/tls_mount.rs).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    dune_cachefs, entries, get_args, mode, parallel_each, run, shared_real_cache, ClientAuth,
    Output, Running, TlsCluster, COMMAND_DEADLINE,
};
use dune_cachefs::cluster::client::{AuthFailure, ClientError, ClientOptions};
use dune_cachefs::cluster::config::ClusterConfig;
use dune_cachefs::cluster::health::HealthState;
use dune_cachefs::cluster::Cluster;
use dune_cachefs::dune::key::{self, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};
use dune_cachefs::fetch::{fetch_into, FetchError};
use dune_cachefs::store::{InstallOutcome, Store};

/// Two boxes, so that routing through the proxy is exercised (each public port reaches one box).
const TWO_BOXES: [&[(&str, &str)]; 2] = [&[("0x00", "0x7f")], &[("0x80", "0xff")]];

fn push(config: &Path, db: &Path) -> Output {
    dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        db.as_os_str(),
    ])
}

/// Options of the library client, as `--config` would give them.
fn options_of(config: &ClusterConfig) -> ClientOptions {
    ClientOptions {
        ca_file: config.ca_file().map(Into::into),
        client_cert: config
            .client_identity()
            .map(|id| (id.cert.clone(), id.key.clone())),
        ..ClientOptions::default()
    }
}

/// What `get` of `entry` under `config` prints when it fails, asserting that it fails with an
/// error (exit 2) and writes nothing.
fn refused_get(config: &Path, entry: &Entry, dir: &Path) -> String {
    let out_file = dir.join("refused-get");
    let out = dune_cachefs(&get_args(config, entry, &out_file));
    assert_eq!(
        out.status.code(),
        Some(2),
        "get with {}: {}",
        config.display(),
        out.describe()
    );
    assert!(!out_file.exists(), "a refused get wrote {out_file:?}");
    out.stderr
}

#[test]
fn push_get_and_the_library_client_work_through_the_tls_proxy() {
    let cache = shared_real_cache();
    let cluster = TlsCluster::start(&TWO_BOXES, ClientAuth::Always);
    let all = entries(&cache.db);

    let out = push(&cluster.config, &cache.db);
    assert!(out.status.success(), "push through TLS: {}", out.describe());
    assert!(
        out.stdout.contains(&format!(
            ": {} uploaded, 0 already there, 0 collisions, 0 failed",
            all.len()
        )),
        "{}",
        out.describe()
    );
    // Each entry reached the box behind the public port its node names: the boxes refuse keys
    // outside their ranges (421), so a proxy port wired to the wrong box would fail the push.
    let on_boxes: usize = cluster.boxes.iter().map(|b| entries(b.root()).len()).sum();
    assert_eq!(on_boxes, all.len(), "entries on the boxes");
    assert!(
        cluster.boxes.iter().all(|b| !entries(b.root()).is_empty()),
        "every box got some entries"
    );

    // Every entry comes back through the proxy, verified, with its mode.
    let got = cluster.dir().join("got");
    fs::create_dir(&got).unwrap();
    parallel_each(&all, 4, |i, (entry, path)| {
        let out_file = got.join(format!("out-{i}"));
        let out = dune_cachefs(&get_args(&cluster.config, entry, &out_file));
        assert!(out.status.success(), "get {entry}: {}", out.describe());
        assert!(
            fs::read(&out_file).unwrap() == fs::read(path).unwrap(),
            "get {entry}: other bytes"
        );
        if entry.kind == EntryKind::File {
            assert_eq!(mode(&out_file), mode(path), "mode of get -o {entry}");
        }
    });

    // Bodies went through the proxy as streams, in both directions: nginx warns when it spools
    // one to disk ("a client request body is buffered to a temporary file", "an upstream
    // response is buffered ..."), which large artifacts would make it do otherwise.
    assert!(
        all.iter()
            .any(|(_, p)| fs::metadata(p).unwrap().len() > 256 * 1024),
        "the real cache has a large artifact"
    );
    let log = cluster.proxy.log();
    assert!(!log.contains("buffered to a temporary file"), "{log}");

    // The library client, as the mount uses it: HEAD, fetch into a store, shard listings.
    let config = cluster.cluster_config();
    let remote = Cluster::new(config.clone(), &options_of(&config)).expect("TLS material loads");
    let local = cluster.dir().join("local");
    fs::create_dir(&local).unwrap();
    let store = Store::open(&local).unwrap();
    for (entry, path) in &all {
        let client = remote.owner(&entry.key);
        let head = client
            .head(entry)
            .unwrap_or_else(|e| panic!("HEAD {entry}: {e}"));
        assert_eq!(
            head.map(|h| h.size),
            Some(fs::metadata(path).unwrap().len()),
            "HEAD {entry}"
        );
        assert_eq!(
            fetch_into(client, &store, entry).unwrap(),
            Some(InstallOutcome::Stored),
            "fetch {entry}"
        );
        assert!(fs::read(store.path_of(entry)).unwrap() == fs::read(path).unwrap());
    }
    let (entry, _) = &all[0];
    let listed = remote
        .clients_for_shard(entry.key.shard())
        .iter()
        .flat_map(|c| c.list(entry.kind, entry.key.shard()).expect("listing"))
        .any(|l| l.key == entry.key);
    assert!(listed, "{entry} is listed in its shard through the proxy");
    let absent = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"never stored\n"[..], false).unwrap(),
    };
    assert_eq!(remote.owner(&absent.key).head(&absent).unwrap(), None);

    // Trimming is kept to the box's own host, even for a certified client.
    let trim = curl(
        &cluster,
        Some("client"),
        &["-X", "POST", &format!("{}/_trim", url0(&cluster))],
    );
    assert!(
        trim.stdout.ends_with("403"),
        "POST /_trim: {}",
        trim.describe()
    );
}

#[test]
fn a_client_without_an_accepted_certificate_is_told_which_one_is_wrong() {
    let cache = shared_real_cache();
    let cluster = TlsCluster::start(&TWO_BOXES, ClientAuth::Always);
    let (entry, _) = entries(&cache.db)
        .into_iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .expect("an artifact");
    let owner = cluster.cluster_config().owner(&entry.key).url().to_string();
    let certs = &cluster.certs;
    let dir = cluster.dir();

    // No client certificate.
    let none = cluster.config_with("no-cert.sexp", &certs.config_fields(Some("ca.pem"), None));
    let stderr = refused_get(&none, &entry, dir);
    assert!(
        stderr.contains(&format!(
            "box {owner} refused the connection: it requires a client certificate, and none is \
             configured (set client_cert/client_key in the cluster config, or \
             --client-cert/--client-key)"
        )),
        "{stderr}"
    );
    // push starts with HEAD, whose refusal has no body: the client asks again to explain it.
    let out = push(&none, &cache.db);
    assert_eq!(
        out.status.code(),
        Some(1),
        "push without a certificate: {}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("refused the connection: it requires a client certificate, and none is"),
        "{}",
        out.describe()
    );
    // The flags supply what the config lacks.
    let out_file = dir.join("with-flags");
    let mut args = get_args(&none, &entry, &out_file);
    args.extend([
        "--client-cert".to_string(),
        certs.file("client.pem").display().to_string(),
        "--client-key".to_string(),
        certs.file("client.key").display().to_string(),
    ]);
    // The proxy lets it through: the box answers that it does not hold the entry (nothing was
    // pushed here).
    let out = dune_cachefs(&args);
    assert!(
        out.status.code() == Some(1) && out.stderr.contains("does not hold"),
        "get with --client-cert: {}",
        out.describe()
    );

    // A certificate signed by another CA.
    let other = cluster.config_with(
        "other-client.sexp",
        &certs.config_fields(Some("ca.pem"), Some("other-client")),
    );
    let stderr = refused_get(&other, &entry, dir);
    assert!(
        stderr.contains(&format!(
            "box {owner} refused the connection: the client certificate {} was rejected (is it \
             signed by the CA the proxy trusts?)",
            certs.file("other-client.pem").display()
        )),
        "{stderr}"
    );

    // The proxy's certificate, checked against another CA, and against the public web CAs.
    let wrong_ca = cluster.config_with(
        "other-ca.sexp",
        &certs.config_fields(Some("other-ca.pem"), Some("client")),
    );
    let stderr = refused_get(&wrong_ca, &entry, dir);
    assert!(
        stderr.contains(&format!(
            "box {owner} is not trusted: its certificate is not signed by a trusted CA (ca_file \
             {})",
            certs.file("other-ca.pem").display()
        )),
        "{stderr}"
    );
    let no_ca = cluster.config_with("no-ca.sexp", &certs.config_fields(None, Some("client")));
    let stderr = refused_get(&no_ca, &entry, dir);
    assert!(
        stderr.contains(&format!(
            "box {owner} is not trusted: its certificate is not signed by a trusted CA (no \
             ca_file is configured"
        )),
        "{stderr}"
    );

    // The library client: a typed error, the box counted as unavailable (a miss for the mount),
    // and marked down with the reason, so the next request fails at once and says why.
    let config = ClusterConfig::load(&none).unwrap();
    let remote = Cluster::new(config.clone(), &options_of(&config)).unwrap();
    let client = remote.owner(&entry.key);
    let store_dir = dir.join("local");
    fs::create_dir(&store_dir).unwrap();
    let store = Store::open(&store_dir).unwrap();
    match client.head(&entry) {
        Err(
            e @ ClientError::Authentication {
                failure:
                    AuthFailure::ClientCertMissing {
                        writes_only: false,
                        configured: None,
                    },
                ..
            },
        ) => assert!(e.is_box_unavailable()),
        other => panic!("HEAD without a certificate: {other:?}"),
    }
    assert!(
        matches!(client.health(), HealthState::Down { cause, .. } if cause.contains("requires a client certificate")),
        "{:?}",
        client.health()
    );
    match fetch_into(client, &store, &entry) {
        Err(FetchError::Box(ClientError::BoxDown { cause, .. })) => {
            assert!(cause.contains("requires a client certificate"), "{cause}")
        }
        other => panic!("the next request: {other:?}, want BoxDown with the reason"),
    }
    assert!(!store.path_of(&entry).exists());
}

#[test]
fn with_write_only_authentication_anyone_reads_and_only_certified_clients_write() {
    let cache = shared_real_cache();
    let cluster = TlsCluster::start(&TWO_BOXES, ClientAuth::WritesOnly);
    let certs = &cluster.certs;
    let dir = cluster.dir();
    let all = entries(&cache.db);
    let owner_of = |entry: &Entry| cluster.cluster_config().owner(&entry.key).url().to_string();
    let anonymous =
        cluster.config_with("anonymous.sexp", &certs.config_fields(Some("ca.pem"), None));

    // Without a certificate nothing is stored, and every failure says why.
    let out = push(&anonymous, &cache.db);
    assert_eq!(
        out.status.code(),
        Some(1),
        "anonymous push: {}",
        out.describe()
    );
    let (artifact, _) = all
        .iter()
        .find(|(e, _)| e.kind == EntryKind::File)
        .expect("an artifact");
    assert!(
        out.stdout.contains(&format!(
            "failed: {artifact}: box {} refused to store: writing to it requires a client \
             certificate, and none is configured (set client_cert/client_key in the cluster \
             config, or --client-cert/--client-key)",
            owner_of(artifact)
        )),
        "{}",
        out.describe()
    );
    assert!(
        cluster.boxes.iter().all(|b| entries(b.root()).is_empty()),
        "an anonymous push stored something"
    );
    // Only writes are refused: reads go on (the box is not marked down).
    let config = ClusterConfig::load(&anonymous).unwrap();
    let remote = Cluster::new(config.clone(), &options_of(&config)).unwrap();
    let client = remote.owner(&artifact.key);
    let file = fs::File::open(cache.db.join(artifact.relative_path())).unwrap();
    match client.put(artifact, &file, false) {
        Err(ClientError::Authentication {
            failure:
                AuthFailure::ClientCertMissing {
                    writes_only: true, ..
                },
            ..
        }) => {}
        other => panic!("anonymous PUT: {other:?}"),
    }
    assert_eq!(client.health(), HealthState::Up);
    assert_eq!(client.head(artifact).unwrap(), None, "an anonymous HEAD");

    // A certified client writes; then anyone reads.
    let out = push(&cluster.config, &cache.db);
    assert!(out.status.success(), "certified push: {}", out.describe());
    let got = dir.join("got");
    fs::create_dir(&got).unwrap();
    parallel_each(&all, 4, |i, (entry, path)| {
        let out_file = got.join(format!("out-{i}"));
        let out = dune_cachefs(&get_args(&anonymous, entry, &out_file));
        assert!(
            out.status.success(),
            "anonymous get {entry}: {}",
            out.describe()
        );
        assert!(fs::read(&out_file).unwrap() == fs::read(path).unwrap());
    });

    // The proxy's 403 for a write, as any HTTP client sees it.
    let path = format!("{}/{}", url0(&cluster), all[0].0.relative_path().display());
    let put = curl(&cluster, None, &["-X", "PUT", "--data-binary", "x", &path]);
    assert!(
        put.stdout.ends_with("403"),
        "anonymous curl PUT: {}",
        put.describe()
    );
    assert!(
        put.stdout
            .contains("writing to this cache needs a client certificate"),
        "{}",
        put.describe()
    );

    // A certificate that is presented must still verify, even for reads.
    let other = cluster.config_with(
        "other-client.sexp",
        &certs.config_fields(Some("ca.pem"), Some("other-client")),
    );
    let stderr = refused_get(&other, artifact, dir);
    assert!(
        stderr.contains("was rejected (is it signed by the CA the proxy trusts?)"),
        "{stderr}"
    );
}

/// A server that checks client certificates during the TLS handshake (as Apache's
/// `SSLVerifyClient require` does; nginx answers 400 after it instead) is explained the same way:
/// `openssl s_server -Verify` stands in for it.
#[test]
fn a_refusal_during_the_handshake_is_explained_too() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::Certs::make(&dir.path().join("certs"));
    let (server, port) = start_s_server(&certs);
    let url = format!("https://127.0.0.1:{port}");
    let config = dir.path().join("cluster.sexp");
    let entry = Entry {
        kind: EntryKind::File,
        key: key::file_key(Era::Md5, &b"anything\n"[..], false).unwrap(),
    };
    let cases = [
        (
            None,
            "it requires a client certificate, and none is configured".to_string(),
        ),
        (
            Some("other-client"),
            format!(
                "the client certificate {} was rejected",
                certs.file("other-client.pem").display()
            ),
        ),
    ];
    for (client, want) in cases {
        common::write_config(
            &config,
            &[(&url, &[("0", "f")])],
            &certs.config_fields(Some("ca.pem"), client),
        );
        let stderr = refused_get(&config, &entry, dir.path());
        assert!(
            stderr.contains(&format!("box {url} refused the connection: {want}")),
            "client certificate {client:?}: {stderr}"
        );
    }
    drop(server);
}

/// `openssl s_server` requiring a client certificate signed by the CA, on a free port.
fn start_s_server(certs: &common::Certs) -> (Running, u16) {
    for _ in 0..5 {
        let port = common::free_port();
        let server = Running::spawn(
            Command::new("openssl")
                .args([
                    "s_server",
                    "-quiet",
                    "-www",
                    "-Verify",
                    "1",
                    "-verify_return_error",
                ])
                .arg("-accept")
                .arg(port.to_string())
                .arg("-cert")
                .arg(certs.file("server.pem"))
                .arg("-key")
                .arg(certs.file("server.key"))
                .arg("-CAfile")
                .arg(certs.file("ca.pem")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (server, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("openssl s_server would not start");
}

/// The first box's public URL.
fn url0(cluster: &TlsCluster) -> String {
    cluster.cluster_config().nodes()[0].url().to_string()
}

/// `curl` through the proxy trusting its CA, with the client certificate `client` if given;
/// stdout is the body followed by the status code.
fn curl(cluster: &TlsCluster, client: Option<&str>, args: &[&str]) -> Output {
    let certs = &cluster.certs;
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-w", "%{http_code}", "--cacert"])
        .arg(certs.file("ca.pem"));
    if let Some(client) = client {
        command
            .arg("--cert")
            .arg(certs.file(&format!("{client}.pem")))
            .arg("--key")
            .arg(certs.file(&format!("{client}.key")));
    }
    let out = run(command.args(args), COMMAND_DEADLINE);
    assert!(out.status.success(), "curl {args:?}: {}", out.describe());
    out
}
