//! `dune-cachefs get`: fetch one entry from the box that owns it (or, while entries move, from
//! its previous owner), verified.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dune_cachefs::dune::key::Key;
use dune_cachefs::dune::layout::{Entry, EntryKind, MetaVersion};
use dune_cachefs::fetch::fetch_into;
use dune_cachefs::store::Store;

use super::cluster_args::ClusterArgs;

/// Arguments of `get`.
#[derive(clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The key of the artifact (or, with --meta, of the rule).
    key: String,
    /// Fetch rule metadata instead of an artifact.
    #[arg(long)]
    meta: bool,
    /// Which metadata format (4: Dune 2.8-2.9, 5: Dune 3.x).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5), requires = "meta")]
    meta_version: u8,
    /// Where to write it (default: stdout). Written atomically, with the artifact's mode.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Fetches, verifies, then writes; exit 1 if no box holds the entry.
pub fn run(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let key: Key = args.key.parse()?;
    let kind = match (args.meta, args.meta_version) {
        (false, _) => EntryKind::File,
        (true, 4) => EntryKind::Meta(MetaVersion::V4),
        (true, _) => EntryKind::Meta(MetaVersion::V5),
    };
    let entry = Entry { kind, key };
    let cluster = args.cluster.connect(false)?;
    // Nothing unverified may reach the output: fetch into a throw-away store beside it first.
    let scratch_parent = match &args.output {
        Some(out) => out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => std::env::temp_dir(),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".dune-cachefs-get-")
        .tempdir_in(&scratch_parent)
        .with_context(|| {
            format!(
                "cannot create a scratch directory in {}",
                scratch_parent.display()
            )
        })?;
    let store = Store::open(scratch.path())?;
    if cluster
        .read(&key, |client| fetch_into(client, &store, &entry))?
        .is_none()
    {
        let mut boxes = cluster.owner(&key).url().to_string();
        if let Some(previous) = cluster.previous_owner(&key) {
            boxes = format!("{boxes} (nor its previous owner {})", previous.url());
        }
        eprintln!("dune-cachefs: box {boxes} does not hold {entry}");
        return Ok(ExitCode::from(1));
    }
    let fetched = store.path_of(&entry);
    match &args.output {
        Some(out) => std::fs::rename(&fetched, out)
            .with_context(|| format!("cannot move {entry} to {}", out.display()))?,
        None => {
            let mut file = std::fs::File::open(&fetched)
                .with_context(|| format!("cannot read back {}", fetched.display()))?;
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut file, &mut stdout)?;
            stdout.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
