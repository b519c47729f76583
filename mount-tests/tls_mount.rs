//! A mount whose boxes are behind the TLS proxy (`scripts/nginx-tls-proxy.conf`), named by
//! `https://` URLs with a CA and a client certificate in the config, as docs/deployment.md sets
//! them up; and what a mount without its certificate shows.

use std::collections::BTreeSet;
use std::fs;

use crate::common::{self, ClientAuth, TlsCluster};
use crate::harness::{fuse_available, Mount};

/// A real cache pushed through the proxy is seen whole through a mount with an empty store:
/// every listing and every fetch goes through TLS with the client certificate, and every entry
/// reads back byte for byte.
#[test]
fn a_mount_reads_a_pushed_cache_through_the_tls_proxy() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = TlsCluster::start(
        &[&[("0x00", "0x7f")], &[("0x80", "0xff")]],
        ClientAuth::Always,
    );
    let push = common::dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        cache.db.as_os_str(),
    ]);
    assert!(push.status.success(), "push: {}", push.describe());

    let store = cluster.dir().join("store");
    let mount = Mount::start(&store, Some(&cluster.config), &[]);
    let original = common::entries(&cache.db);
    // The listings (served by the boxes through the proxy) name exactly the cache's entries.
    let listed: BTreeSet<_> = common::entries(&mount.point)
        .into_iter()
        .map(|(entry, _)| entry)
        .collect();
    let want: BTreeSet<_> = original.iter().map(|(entry, _)| *entry).collect();
    assert_eq!(listed, want, "entries listed through the mount");
    for (entry, path) in &original {
        let through = mount.path(entry.relative_path());
        assert!(
            fs::read(&through).unwrap_or_else(|e| panic!("{entry}: {e}\n{}", mount.log()))
                == fs::read(path).unwrap(),
            "{entry} read through the mount"
        );
    }
    assert_eq!(mount.counter("verification_failures"), 0);
    let status = mount.status();
    let boxes = status["boxes"].as_array().expect("boxes in status");
    assert_eq!(boxes.len(), 2);
    for b in boxes {
        assert!(
            b["url"].as_str().is_some_and(|u| u.starts_with("https://")),
            "{b}"
        );
        assert_eq!(b["health"]["state"], "up", "{b}\n{}", mount.log());
    }
}

/// A mount whose config has no client certificate for a proxy that requires one: entries of the
/// refusing boxes look absent (Dune rebuilds, it never hangs), and the status file says why, in
/// the words `get` would use.
#[test]
fn a_mount_without_a_client_certificate_says_why_in_its_status() {
    if !fuse_available() {
        return;
    }
    let cache = common::shared_real_cache();
    let cluster = TlsCluster::start(&[&[("0", "f")]], ClientAuth::Always);
    let push = common::dune_cachefs(&[
        "push".as_ref(),
        "--config".as_ref(),
        cluster.config.as_os_str(),
        cache.db.as_os_str(),
    ]);
    assert!(push.status.success(), "push: {}", push.describe());
    let no_cert = cluster.config_with(
        "no-cert.sexp",
        &cluster.certs.config_fields(Some("ca.pem"), None),
    );

    let mount = Mount::start(&cluster.dir().join("store"), Some(&no_cert), &[]);
    let (entry, _) = &common::entries(&cache.db)[0];
    let err = fs::metadata(mount.path(entry.relative_path()))
        .expect_err("an entry behind a refusing proxy");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let status = mount.status();
    let health = &status["boxes"][0]["health"];
    assert_eq!(health["state"], "down", "{status}");
    let cause = health["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains(
            "refused the connection: it requires a client certificate, and none is configured"
        ),
        "{status}"
    );
}
