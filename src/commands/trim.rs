//! `dune-cachefs trim DB --size BYTES`: bound a Dune cache's size the way `dune cache trim` does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dune_cachefs::store::trim::TrimRules;
use dune_cachefs::store::Store;

/// Arguments of `trim`.
#[derive(clap::Args)]
pub struct TrimArgs {
    /// The Dune cache directory (the `db/` directory itself).
    db: PathBuf,
    /// The size to trim down to: bytes, or with a unit (kB, MB, GB, TB; KiB, MiB, GiB, TiB).
    #[arg(long, value_parser = parse_size)]
    size: u64,
}

/// Trims and prints a one-line summary.
pub fn run(args: &TrimArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&args.db)?;
    let report = store
        .trim(args.size, TrimRules::Dune)
        .with_context(|| format!("trimming {}", args.db.display()))?;
    println!(
        "trimmed {}: {} -> {} bytes; removed {} artifacts and {} metadata entries; {} artifacts in use kept",
        args.db.display(),
        report.size_before,
        report.size_after,
        report.removed_artifacts,
        report.removed_metadata,
        report.in_use_artifacts
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses `10GB`, `512MiB`, `4096`: decimal units are powers of 1000, `i` units of 1024, the same
/// convention as Dune's own `--size`. Anything ambiguous (`10G`, `1.5GB`) is refused rather than
/// guessed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: expected a whole number and a unit"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
            "unknown size unit {other:?} in {text:?}: use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("0B"), Ok(0));
        for bad in ["", "GB", "10G", "1.5GB", "-1", "99999999999TiB", "10 gigs"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
