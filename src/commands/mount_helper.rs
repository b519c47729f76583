//! `mount.fuse.dune-cachefs`: the binary under the name `mount(8)` runs for
//! `mount -t fuse.dune-cachefs STORE MOUNTPOINT -o OPTIONS` and for an `/etc/fstab` line of that
//! type. It starts `dune-cachefs mount` in the background and returns once the mount is up (or
//! with the reason it failed); `umount MOUNTPOINT` then ends that process cleanly.
//!
//! `mount(8)` calls a helper as `mount.TYPE SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`.
//! The options are `dune-cachefs mount`'s flags with `_` for `-` (`config=FILE`, `allow_other`,
//! `metrics=ADDR`, ...), plus `log=FILE` (where the mount logs; by default, the helper's stderr,
//! which under systemd is the journal); the generic mount options that say nothing to a FUSE
//! daemon (`rw`, `defaults`, `nofail`, `_netdev`, `x-systemd.*`, ...) are ignored.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The name the helper is installed as (a link to the `dune-cachefs` binary).
pub const HELPER_NAME: &str = "mount.fuse.dune-cachefs";

/// How long the helper waits for the mount to come up.
const UP_DEADLINE: Duration = Duration::from_secs(60);

/// Options that take a value, each a `mount` flag taking it.
const VALUE_OPTIONS: [&str; 11] = [
    "config",
    "threads",
    "fetch_workers",
    "upload_workers",
    "prefetch_window",
    "prefetch_budget",
    "metrics",
    "platform_policy",
    "store_size",
    "trim_interval",
    "reads",
];

/// Options without a value, each a `mount` flag.
const SWITCH_OPTIONS: [&str; 2] = ["allow_other", "recover"];

/// Generic mount options that mean nothing to a FUSE daemon, or only to `mount(8)` and systemd.
const IGNORED_OPTIONS: [&str; 15] = [
    "rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "dev",
    "nodev", "suid", "nosuid", "exec", "noexec",
];

/// What `mount(8)` asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperCall {
    /// The `dune-cachefs mount` arguments, mount point last.
    pub mount_args: Vec<OsString>,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Where the mount logs, if not to the helper's stderr.
    pub log: Option<PathBuf>,
    /// `-f`: do everything but mount.
    pub fake: bool,
}

/// Whether the process was run as the helper (by its name).
pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|path| path.file_name().map(|name| name == HELPER_NAME))
        .unwrap_or(false)
}

/// Parses the helper's arguments (without the program name).
pub fn parse(args: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-o") => {
                let value = args.next().ok_or("-o needs a list of options")?;
                let value = value.to_str().ok_or("the options are not UTF-8")?;
                options.extend(value.split(',').filter(|o| !o.is_empty()).map(String::from));
            }
            Some("-t" | "-N") => {
                args.next();
            }
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{flag}")),
                    }
                }
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [store, mountpoint] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|given| format!("expected STORE MOUNTPOINT, got {} arguments", given.len()))?;
    let mut mount_args: Vec<OsString> = vec!["mount".into(), "--store".into(), store.into()];
    let mut log = None;
    for option in options {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option.as_str(), None),
        };
        let flag = format!("--{}", name.replace('_', "-"));
        match (name, value) {
            ("log", Some(file)) => log = Some(PathBuf::from(file)),
            (name, Some(value)) if VALUE_OPTIONS.contains(&name) => {
                mount_args.extend([flag.into(), value.into()]);
            }
            (name, None) if SWITCH_OPTIONS.contains(&name) => mount_args.push(flag.into()),
            (name, _) if IGNORED_OPTIONS.contains(&name) || name.starts_with("x-") => {}
            ("ro", None) => {
                return Err("a dune-cachefs mount is read-write: Dune stores through it".into())
            }
            (name, None) if VALUE_OPTIONS.contains(&name) || name == "log" => {
                return Err(format!("option {name} needs a value ({name}=...)"));
            }
            _ if sloppy => {}
            _ => return Err(format!("unknown option {option:?}")),
        }
    }
    mount_args.push(mountpoint.clone().into());
    Ok(HelperCall {
        mount_args,
        mountpoint,
        log,
        fake,
    })
}

/// Runs the helper: starts the mount in the background and waits until it is up.
pub fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let call = parse(args).map_err(|why| anyhow::anyhow!("{HELPER_NAME}: {why}"))?;
    if call.fake {
        return Ok(ExitCode::SUCCESS);
    }
    let before = std::fs::metadata(&call.mountpoint)
        .with_context(|| format!("mount point {}", call.mountpoint.display()))?
        .dev();
    let exe = std::env::current_exe().context("cannot find the dune-cachefs binary")?;
    let mut command = Command::new(exe);
    command
        .args(&call.mount_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Out of mount(8)'s process group, so nothing sent to it reaches the mount.
        .process_group(0);
    if let Some(log) = &call.log {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log {}", log.display()))?;
        command.stderr(file);
    }
    let mut child = command.spawn().context("cannot start dune-cachefs mount")?;
    let deadline = Instant::now() + UP_DEADLINE;
    loop {
        if let Some(exit) = child.try_wait().context("waiting for the mount")? {
            let log = call.log.as_deref().map(log_tail).unwrap_or_default();
            bail!(
                "the mount of {} ended before it was up ({exit}){log}",
                call.mountpoint.display()
            );
        }
        if is_up(&call.mountpoint, before) {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount of {} was not up after {UP_DEADLINE:?}; stopped it",
                call.mountpoint.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a new filesystem is at `mountpoint` (its device is no longer `before`) and answers:
/// its status file is read through it, from the mount's own process.
fn is_up(mountpoint: &Path, before: u64) -> bool {
    let moved = std::fs::metadata(mountpoint).is_ok_and(|meta| meta.dev() != before);
    moved && File::open(mountpoint.join(".dune-cachefs-status")).is_ok()
}

/// The last lines of the mount's log, to say why it failed.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    format!(":\n{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    fn strings(call: &HelperCall) -> Vec<&str> {
        call.mount_args
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect()
    }

    #[test]
    fn mount_options_become_flags_and_generic_ones_are_ignored() {
        let call = parse(&args(
            "/var/cache/store /mnt/db -n -o rw,config=/etc/c.sexp,allow_other,metrics=127.0.0.1:9464,_netdev,x-systemd.after=network-online.target,log=/var/log/m.log,prefetch_budget=1GiB -t fuse.dune-cachefs",
        ))
        .unwrap();
        assert_eq!(
            strings(&call),
            [
                "mount",
                "--store",
                "/var/cache/store",
                "--config",
                "/etc/c.sexp",
                "--allow-other",
                "--metrics",
                "127.0.0.1:9464",
                "--prefetch-budget",
                "1GiB",
                "/mnt/db"
            ]
        );
        assert_eq!(call.mountpoint, PathBuf::from("/mnt/db"));
        assert_eq!(call.log, Some(PathBuf::from("/var/log/m.log")));
        assert!(!call.fake);
        assert!(parse(&args("/s /m -fv")).unwrap().fake);
    }

    #[test]
    fn bad_calls_are_refused_in_words() {
        assert_eq!(
            parse(&args("/s /m -o colour=blue")),
            Err("unknown option \"colour=blue\"".to_string())
        );
        assert_eq!(
            parse(&args("/s /m -o config")),
            Err("option config needs a value (config=...)".to_string())
        );
        assert!(parse(&args("/s /m -o ro"))
            .unwrap_err()
            .contains("read-write"));
        assert_eq!(
            parse(&args("/m")),
            Err("expected STORE MOUNTPOINT, got 1 arguments".to_string())
        );
        assert_eq!(parse(&args("/s /m -x")), Err("unknown flag -x".to_string()));
        // -s (sloppy): unknown options are ignored.
        let sloppy = parse(&args("/s /m -s -o colour=blue,config=/c")).unwrap();
        assert_eq!(
            strings(&sloppy),
            ["mount", "--store", "/s", "--config", "/c", "/m"]
        );
    }
}
