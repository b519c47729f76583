//! `dune-cachefs key` and `dune-cachefs verify`: Dune file keys from the command line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dune_cachefs::dune::key::{self, ContentHasher, Era, Key};

/// The era on the command line; a separate type so clap can list the values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EraArg {
    /// Dune >= 3.20.
    Blake3,
    /// Dune 2.8 to 3.19.
    Md5,
}

impl From<EraArg> for Era {
    fn from(e: EraArg) -> Era {
        match e {
            EraArg::Blake3 => Era::Blake3,
            EraArg::Md5 => Era::Md5,
        }
    }
}

/// Arguments of `key`.
#[derive(clap::Args)]
pub struct KeyArgs {
    /// Which Dune era's scheme to use.
    #[arg(long, value_enum, default_value = "blake3")]
    era: EraArg,
    /// The files to key.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Only accept this era's scheme (default: either).
    #[arg(long, value_enum)]
    era: Option<EraArg>,
    /// The expected key.
    key: String,
    /// The file to check.
    file: PathBuf,
}

/// Prints `<key>  <file>` per file. A file that cannot be read is reported and the rest still
/// printed; the exit code remembers the failure.
pub fn run_key(args: &KeyArgs) -> anyhow::Result<ExitCode> {
    let era = Era::from(args.era);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut failed = false;
    for path in &args.files {
        match key_of_file(era, path) {
            Ok(key) => writeln!(out, "{key}  {}", path.display())?,
            Err(err) => {
                out.flush()?;
                eprintln!("dune-cachefs: {err:#}");
                failed = true;
            }
        }
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn key_of_file(era: Era, path: &Path) -> anyhow::Result<Key> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode();
    key::file_key(era, file, key::mode_is_executable(mode))
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Exits 0 when the file's bytes match the key (in the allowed eras, either executable bit).
pub fn run_verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let key: Key = args.key.parse()?;
    let path = &args.file;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let digests = ContentHasher::digest_reader(args.era.map(Era::from), file)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match digests.matching(&key) {
        Some(m) => {
            let exe = if m.executable {
                "executable"
            } else {
                "not executable"
            };
            println!("{}: OK ({} era, {exe})", path.display(), m.era);
            ExitCode::SUCCESS
        }
        None => {
            println!("{}: does not match {key}", path.display());
            ExitCode::from(1)
        }
    })
}
