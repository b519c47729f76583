//! Kerberos for the tests: a real MIT KDC for a throw-away realm on a loopback port, and boxes
//! behind a real Apache running `scripts/apache-kerberos-proxy.conf` (TLS, SPNEGO by
//! mod_auth_gssapi), as docs/deployment.md sets them up.
//!
//! The KDC's database, its config and every keytab and credential cache live in the cluster's
//! temp dir; nothing of the system's Kerberos config is read or written (`KRB5_CONFIG` and
//! `KRB5_KDC_PROFILE` name the test's own files, for the KDC, Apache and every client run).

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{
    free_port, kill_group, proxied_nodes, run, write_nodes, BoxProcess, Certs, ProxyProcess,
    COMMAND_DEADLINE, WAIT_DEADLINE,
};

/// The test realm.
pub const REALM: &str = "CACHE.TEST";
/// The principal the proxy lets write.
pub const WRITER: &str = "builder@CACHE.TEST";
/// A principal of the realm that may only read.
pub const READER: &str = "reader@CACHE.TEST";

/// A running MIT KDC (`krb5kdc`) for [`REALM`], with principals and keytabs made by
/// `kadmin.local`. Dropping it kills the KDC.
pub struct Kdc {
    child: Child,
    dir: PathBuf,
}

impl Kdc {
    /// Creates the realm's database in `dir` (created) and starts its KDC on a free port, with
    /// the proxy's service principal `HTTP/localhost` and the users [`WRITER`] and [`READER`],
    /// each with a keytab in `dir`.
    pub fn start(dir: &Path) -> Kdc {
        fs::create_dir_all(dir).expect("kdc dir");
        let mut last = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let db = dir.join(format!("attempt{attempt}"));
            fs::create_dir(&db).expect("kdc db dir");
            // clockskew 1: an expired ticket is refused by the client as soon as it expires
            // (the default tolerance is 5 minutes). No DNS: the service is named as the URL says.
            fs::write(
                dir.join("krb5.conf"),
                format!(
                    "[libdefaults]\n default_realm = {REALM}\n dns_lookup_realm = false\n \
                     dns_lookup_kdc = false\n dns_canonicalize_hostname = false\n rdns = false\n \
                     clockskew = 1\n udp_preference_limit = 1\n\
                     [realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
                ),
            )
            .expect("krb5.conf");
            fs::write(
                dir.join("kdc.conf"),
                format!(
                    "[kdcdefaults]\n kdc_ports = {port}\n kdc_tcp_ports = {port}\n\
                     [realms]\n {REALM} = {{\n  database_name = {db}/principal\n  \
                     key_stash_file = {db}/stash\n  acl_file = {db}/kadm5.acl\n  \
                     max_life = 1h\n }}\n\
                     [logging]\n kdc = FILE:{dir}/kdc.log\n",
                    db = db.display(),
                    dir = dir.display(),
                ),
            )
            .expect("kdc.conf");
            let mut kdc = Kdc {
                child: Command::new("true").spawn().expect("spawn true"),
                dir: dir.to_path_buf(),
            };
            kdc.tool(kdc.command("kdb5_util").args([
                "create",
                "-s",
                "-r",
                REALM,
                "-P",
                "unused-master",
            ]));
            let _ = kdc.child.wait();
            kdc.child = kdc
                .command("krb5kdc")
                .args(["-n", "-r", REALM])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("kdc.stderr")).expect("kdc stderr"))
                .process_group(0)
                .spawn()
                .expect("spawn krb5kdc");
            for principal in ["HTTP/localhost", WRITER, READER] {
                let keytab = kdc.keytab(principal);
                let _ = fs::remove_file(&keytab);
                for query in [
                    format!("addprinc -randkey {principal}"),
                    format!("ktadd -k {} {principal}", keytab.display()),
                ] {
                    kdc.tool(
                        kdc.command("kadmin.local")
                            .args(["-r", REALM, "-q", &query]),
                    );
                }
            }
            match kdc.wait_ready() {
                Ok(()) => return kdc,
                Err(log) => last = log,
            }
        }
        panic!("the KDC would not start on any of 5 ports; last log:\n{last}");
    }

    /// The realm's client config.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.join("krb5.conf")
    }

    /// The keytab of `principal` (`HTTP/localhost`, [`WRITER`], [`READER`]).
    pub fn keytab(&self, principal: &str) -> PathBuf {
        let name = principal.split('@').next().unwrap().replace('/', "_");
        self.dir.join(format!("{name}.keytab"))
    }

    /// A fresh credential cache in the KDC's directory named `name`, holding a ticket for
    /// `principal` from its keytab (as `kinit` after a password), valid for `lifetime` (kinit's
    /// units, e.g. `1h`, `2s`).
    pub fn kinit(&self, principal: &str, name: &str, lifetime: &str) -> PathBuf {
        let cache = self.cache(name);
        let _ = fs::remove_file(&cache);
        let keytab = self.keytab(principal);
        let out = run(
            self.command("kinit")
                .env("KRB5CCNAME", format!("FILE:{}", cache.display()))
                .args(["-l", lifetime, "-k", "-t"])
                .arg(&keytab)
                .arg(principal),
            COMMAND_DEADLINE,
        );
        assert!(
            out.status.success(),
            "kinit {principal}: {}",
            out.describe()
        );
        cache
    }

    /// The credential cache named `name` (it exists once [`Kdc::kinit`] filled it).
    pub fn cache(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A Kerberos program (or Apache) with the realm's config.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(binary(program));
        command
            .env("KRB5_CONFIG", self.krb5_conf())
            .env("KRB5_KDC_PROFILE", self.dir.join("kdc.conf"));
        command
    }

    /// The environment of a client run with the credential cache `cache` (which need not
    /// exist: then it has no ticket).
    pub fn client_env(&self, cache: &Path) -> Vec<(&'static str, OsString)> {
        vec![
            ("KRB5_CONFIG", self.krb5_conf().into()),
            ("KRB5CCNAME", format!("FILE:{}", cache.display()).into()),
        ]
    }

    /// The KDC's logs so far.
    pub fn log(&self) -> String {
        let read = |name| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("kdc.stderr"), read("kdc.log"))
    }

    /// Runs a Kerberos admin tool (from [`Kdc::command`]).
    fn tool(&self, command: &mut Command) {
        let out = run(command, COMMAND_DEADLINE);
        assert!(
            out.status.success() && !out.stderr.contains("kadmin.local: "),
            "{command:?} (is krb5-kdc/krb5-admin-server installed? scripts/install-deps): {}",
            out.describe()
        );
    }

    /// Waits until the KDC issues a ticket (kinit of the writer succeeds).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        let cache = self.dir.join("probe-cache");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for krb5kdc") {
                return Err(format!("krb5kdc exited ({status}):\n{}", self.log()));
            }
            let ok = self
                .command("kinit")
                .env("KRB5CCNAME", format!("FILE:{}", cache.display()))
                .args(["-k", "-t"])
                .arg(self.keytab(WRITER))
                .arg(WRITER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no ticket within {WAIT_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- KDC log:\n{}", self.log());
        }
        kill_group(&mut self.child);
    }
}

/// Starts a real Apache running `scripts/apache-kerberos-proxy.conf` with its files in `prefix`
/// (created): one TLS port per box, for `routes` (public port, box address), SPNEGO with the
/// keytab of `HTTP/localhost`, [`WRITER`] the only writer. `Err` with the log if it does not
/// come up (typically: a port was taken).
fn start_kerberos_proxy(
    prefix: &Path,
    kdc: &Kdc,
    certs: &Certs,
    routes: &[(u16, std::net::SocketAddr)],
) -> Result<ProxyProcess, String> {
    fs::create_dir_all(prefix).expect("apache prefix");
    let template_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apache-kerberos-proxy.conf");
    let template = fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("read {template_path:?}: {e}"));
    let keytab = kdc.keytab("HTTP/localhost");
    // Apache's workers run as www-data when it starts as root; they read the keytab and
    // write to the prefix.
    let root = rustix::process::geteuid().is_root();
    let (user, group) = match root {
        true => ("www-data".to_string(), "www-data".to_string()),
        false => (
            format!("#{}", rustix::process::geteuid().as_raw()),
            format!("#{}", rustix::process::getegid().as_raw()),
        ),
    };
    if root {
        for path in [&keytab, &prefix.to_path_buf()] {
            let out = run(
                Command::new("chown").arg("www-data:www-data").arg(path),
                COMMAND_DEADLINE,
            );
            assert!(out.status.success(), "chown {path:?}: {}", out.describe());
        }
    }
    let text = super::repeat_box_block(&template, routes, |block, _, public, plain| {
        block
            .replace("@PUBLIC@", &format!("127.0.0.1:{public}"))
            .replace("@BOX@", &plain.to_string())
    })
    .replace("@PREFIX@", &prefix.display().to_string())
    .replace("@USER@", &user)
    .replace("@GROUP@", &group)
    .replace(
        "@SERVER_CERT@",
        &certs.file("server.pem").display().to_string(),
    )
    .replace(
        "@SERVER_KEY@",
        &certs.file("server.key").display().to_string(),
    )
    .replace("@KEYTAB@", &keytab.display().to_string())
    .replace("@WRITERS@", WRITER)
    .replace("@MAX_BODY@", "1073741824")
    .replace("@MODULES@", "/usr/lib/apache2/modules");
    super::assert_no_placeholder(&text);
    let conf = prefix.join("httpd.conf");
    fs::write(&conf, text).expect("write httpd.conf");
    let child = kdc
        .command("apache2")
        // The replay cache in the prefix, not the system's /var/tmp.
        .env("KRB5RCACHEDIR", prefix)
        .arg("-d")
        .arg(prefix)
        .arg("-f")
        .arg(&conf)
        .arg("-DFOREGROUND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(prefix.join("stderr.log")).expect("apache stderr"))
        .process_group(0)
        .spawn()
        .expect("spawn apache2");
    let ports: Vec<u16> = routes.iter().map(|(public, _)| *public).collect();
    ProxyProcess::ready(child, prefix, "Apache", &ports)
}

/// Boxes behind Apache with Kerberos, named `https://localhost:PORT` (the host of the proxy's
/// service principal and of its certificate), and the KDC of their realm. Dropping it stops the
/// proxy, the boxes and the KDC, then removes the directory.
pub struct KerberosCluster {
    /// The proxy. (Fields drop in order: proxy, boxes, KDC, then the directory.)
    pub proxy: ProxyProcess,
    /// The boxes, in config order.
    pub boxes: Vec<BoxProcess>,
    /// The realm's KDC.
    pub kdc: Kdc,
    /// A cluster config trusting the proxy's CA (no client certificate: Kerberos instead).
    pub config: PathBuf,
    dir: TempDir,
}

impl KerberosCluster {
    /// Starts one box per element of `ranges` behind one Apache, and the realm's KDC.
    pub fn start(ranges: &[&[(&str, &str)]]) -> KerberosCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // Apache's workers (www-data) reach the keytab and the certificates through it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let certs = Certs::make(&dir.path().join("certs"));
        fs::set_permissions(certs.file("server.key"), fs::Permissions::from_mode(0o644))
            .expect("chmod server.key");
        let kdc = Kdc::start(&dir.path().join("kdc"));
        let mut last = String::new();
        'attempt: for attempt in 0..5 {
            let public: Vec<u16> = ranges.iter().map(|_| free_port()).collect();
            let nodes = proxied_nodes("localhost", &public, ranges);
            let cluster_dir = dir.path().join(format!("attempt{attempt}"));
            fs::create_dir(&cluster_dir).expect("attempt dir");
            let config = cluster_dir.join("cluster.sexp");
            write_nodes(&config, &nodes, &certs.config_fields(Some("ca.pem"), None));
            let mut boxes = Vec::new();
            for (i, (url, _)) in nodes.iter().enumerate() {
                let args = [
                    "--config".to_string(),
                    config.display().to_string(),
                    "--node".to_string(),
                    url.clone(),
                ];
                match BoxProcess::start(&cluster_dir.join(format!("box{i}")), free_port(), &args) {
                    Ok(process) => boxes.push(process),
                    Err(log) => {
                        last = log;
                        continue 'attempt;
                    }
                }
            }
            let routes: Vec<_> = public
                .iter()
                .zip(&boxes)
                .map(|(port, b)| (*port, b.addr()))
                .collect();
            match start_kerberos_proxy(&cluster_dir.join("apache"), &kdc, &certs, &routes) {
                Ok(proxy) => {
                    return KerberosCluster {
                        proxy,
                        boxes,
                        kdc,
                        config,
                        dir,
                    }
                }
                Err(log) => last = log,
            }
        }
        panic!("boxes behind Apache would not start; last log:\n{last}");
    }

    /// The directory holding everything (a place for scratch files too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A Kerberos program: on PATH, or in /usr/sbin (not on every PATH).
fn binary(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    match sbin.exists() {
        true => sbin,
        false => PathBuf::from(name),
    }
}
