//! `dune-cachefs status [MOUNTPOINT]`: what a mount is doing, read from its status file (the
//! one source of truth, `MOUNTPOINT/.dune-cachefs-status`), shown short for a person or as the
//! JSON it is.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dune_cachefs::store;
use serde_json::Value;

/// The status file's name at the root of a mount.
const STATUS_FILE: &str = ".dune-cachefs-status";

/// Arguments of `status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The mount point (default: Dune's cache, $XDG_CACHE_HOME/dune/db, else ~/.cache/dune/db).
    mountpoint: Option<PathBuf>,
    /// Print the status document as JSON, as the mount wrote it.
    #[arg(long)]
    json: bool,
}

/// Prints the mount's status.
pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mountpoint = match &args.mountpoint {
        Some(mountpoint) => mountpoint.clone(),
        None => store::default_dune_db()
            .context("no MOUNTPOINT given, and neither XDG_CACHE_HOME nor HOME is set")?,
    };
    let text = read_status(&mountpoint)?;
    let mut out = io::stdout().lock();
    if args.json {
        out.write_all(&text)?;
    } else {
        let document: Value = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{}: not the JSON a mount writes",
                mountpoint.join(STATUS_FILE).display()
            )
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        out.write_all(render(&mountpoint, &document, now).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The status file's bytes, or why there are none in words.
fn read_status(mountpoint: &Path) -> anyhow::Result<Vec<u8>> {
    let path = mountpoint.join(STATUS_FILE);
    match std::fs::read(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => bail!(
            "{} is a dead mount (its process is gone): `umount {0}` clears it",
            mountpoint.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{} is not a dune-cachefs mount (it has no {STATUS_FILE})",
            mountpoint.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The short human view of a status document, at `now` (Unix seconds).
fn render(mountpoint: &Path, status: &Value, now: u64) -> String {
    let counter = |name: &str| status["counters"][name].as_u64().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mount:    {} (store {})",
        mountpoint.display(),
        status["store"].as_str().unwrap_or("?")
    );
    if counter("trims") > 0 {
        let _ = writeln!(
            out,
            "store:    {} after the last of {} trims; {} artifacts and {} metadata entries trimmed, {} kept as open or pending",
            bytes(counter("store_bytes")),
            counter("trims"),
            counter("trimmed_artifacts"),
            counter("trimmed_metadata"),
            counter("trim_kept_open"),
        );
    }
    let boxes = status["boxes"].as_array().map_or(&[][..], Vec::as_slice);
    if boxes.is_empty() {
        let _ = writeln!(out, "boxes:    none (the local store alone)");
    }
    for (i, boxed) in boxes.iter().enumerate() {
        let label = if i == 0 { "boxes:" } else { "" };
        let url = boxed["url"].as_str().unwrap_or("?");
        let health = &boxed["health"];
        let state = match health["state"].as_str() {
            Some("down") => format!(
                "down ({}), next try in {:.1} s",
                health["cause"].as_str().unwrap_or("?"),
                health["retry_in_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            Some(state) => state.to_string(),
            None => "?".to_string(),
        };
        let _ = writeln!(out, "{label:<9} {url}  {state}");
    }
    let lookups = counter("entry_lookups");
    let from_boxes = counter("remote_known") + counter("remote_found");
    let _ = writeln!(
        out,
        "lookups:  {lookups}; hit rate {} (answered from the local store), {} found on the boxes",
        percent(counter("local_hits"), lookups),
        percent(from_boxes, lookups),
    );
    let _ = writeln!(
        out,
        "fetches:  {} in flight, {} waiting; {} done, {} fetched, {} failed, {} did not verify",
        counter("fetches_in_flight"),
        counter("fetch_waiters"),
        counter("fetches"),
        bytes(counter("bytes_fetched")),
        counter("fetch_failures"),
        counter("verification_failures"),
    );
    let _ = writeln!(
        out,
        "ahead:    {} rules fetched ahead of Dune, {} entries of them used",
        counter("ahead_rules"),
        counter("ahead_used"),
    );
    let uploads = &status["uploads"];
    if uploads.is_object() {
        let _ = writeln!(
            out,
            "uploads:  {} pending, {} uploaded, {} refused",
            uploads["pending"].as_u64().unwrap_or(0),
            uploads["uploaded"].as_u64().unwrap_or(0),
            uploads["refused"].as_u64().unwrap_or(0),
        );
    }
    let fetch_errors = status["errors"].as_array().map_or(&[][..], Vec::as_slice);
    let refusals = uploads["refusals"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if fetch_errors.is_empty() && refusals.is_empty() {
        let _ = writeln!(out, "errors:   none");
    } else {
        let _ = writeln!(out, "last errors:");
        for error in fetch_errors {
            let age = now.saturating_sub(error["time"].as_u64().unwrap_or(0));
            let _ = writeln!(
                out,
                "  {} ago: {}",
                duration(age),
                error["error"].as_str().unwrap_or("?")
            );
        }
        for refusal in refusals {
            let _ = writeln!(out, "  upload refused: {}", refusal.as_str().unwrap_or("?"));
        }
    }
    out
}

/// `part` of `whole` as a percentage, or `-` when there is no whole.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// A number of seconds, in the largest unit of s, min, h or d that keeps it at least 1.
fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86400),
    }
}

/// A byte count in the largest binary unit that keeps it at least 1.
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_with_a_box_down_and_errors() {
        let status = serde_json::json!({
            "store": "/var/cache/store",
            "counters": {
                "entry_lookups": 200, "local_hits": 150, "remote_known": 30, "remote_found": 10,
                "fetches": 40, "fetches_in_flight": 2, "fetch_waiters": 3,
                "bytes_fetched": 3 * 1024 * 1024 + 512 * 1024, "fetch_failures": 1,
                "verification_failures": 0, "ahead_rules": 5, "ahead_used": 4,
                "trims": 3, "store_bytes": 2048, "trimmed_artifacts": 9, "trimmed_metadata": 2,
                "trim_kept_open": 1,
            },
            "uploads": {"pending": 7, "uploaded": 12, "refused": 1,
                        "refusals": ["files/v4/ab/ab01: refused by http://b:1 (422)"]},
            "boxes": [
                {"url": "http://a:1", "health": {"state": "up"}},
                {"url": "http://b:1", "health": {"state": "down", "cause": "connection refused",
                                                 "retry_in_ms": 1500}},
            ],
            "errors": [{"time": 1700000000, "error": "fetching meta/v5/cd/cd02 from http://b:1: unavailable: connection refused"}],
        });
        assert_eq!(
            render(Path::new("/mnt/db"), &status, 1_700_000_125),
            "mount:    /mnt/db (store /var/cache/store)\n\
             store:    2.0 KiB after the last of 3 trims; 9 artifacts and 2 metadata entries trimmed, 1 kept as open or pending\n\
             boxes:    http://a:1  up\n          \
             http://b:1  down (connection refused), next try in 1.5 s\n\
             lookups:  200; hit rate 75.0% (answered from the local store), 20.0% found on the boxes\n\
             fetches:  2 in flight, 3 waiting; 40 done, 3.5 MiB fetched, 1 failed, 0 did not verify\n\
             ahead:    5 rules fetched ahead of Dune, 4 entries of them used\n\
             uploads:  7 pending, 12 uploaded, 1 refused\n\
             last errors:\n  \
             2 min ago: fetching meta/v5/cd/cd02 from http://b:1: unavailable: connection refused\n  \
             upload refused: files/v4/ab/ab01: refused by http://b:1 (422)\n"
        );
    }

    #[test]
    fn a_local_mount_that_has_done_nothing() {
        let status = serde_json::json!({"store": "/s", "counters": {}, "uploads": null,
                                        "boxes": [], "errors": null});
        assert_eq!(
            render(Path::new("/m"), &status, 0),
            "mount:    /m (store /s)\n\
             boxes:    none (the local store alone)\n\
             lookups:  0; hit rate - (answered from the local store), - found on the boxes\n\
             fetches:  0 in flight, 0 waiting; 0 done, 0 B fetched, 0 failed, 0 did not verify\n\
             ahead:    0 rules fetched ahead of Dune, 0 entries of them used\n\
             errors:   none\n"
        );
    }
}
