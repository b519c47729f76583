//! `dune-cachefs meta`: show a metadata entry, for people or (with `--json`) for scripts.
//!
//! The readable form is one line per target, `<key>  <path>` (`<dir>  <path>` for a directory
//! target), under `#` header lines, so `grep -v '^#'` leaves exactly the targets. Paths are bytes
//! to Dune; both forms show them as lossy UTF-8.
//!
//! The file is read through the streaming [`MetadataReader`], so pointing the command at
//! something that is not an entry (a large artifact, say) fails at its first wrong bytes instead
//! of reading it whole.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dune_cachefs::dune::csexp::{Event, Sexp};
use dune_cachefs::dune::metadata::{Metadata, MetadataReader, TargetFile};
use serde_json::{json, Value};

/// Arguments of `meta`.
#[derive(clap::Args)]
pub struct MetaArgs {
    /// The metadata file (e.g. db/meta/v4/ab/KEY).
    file: PathBuf,
    /// Print JSON instead of the readable form.
    #[arg(long)]
    json: bool,
}

/// Prints the entry; a file that is not a valid entry is an error naming it.
pub fn run(args: &MetaArgs) -> anyhow::Result<ExitCode> {
    let meta = read_entry(&args.file)?;
    let mut out = BufWriter::new(io::stdout().lock());
    if args.json {
        // Rendered first so that a closed stdout surfaces as the io::Error `main` recognises.
        writeln!(out, "{}", serde_json::to_string_pretty(&to_json(&meta))?)?;
    } else {
        write_readable(&mut out, &args.file, &meta)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn read_entry(path: &Path) -> anyhow::Result<Metadata> {
    let invalid = || format!("{} is not a valid Dune metadata entry", path.display());
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = MetadataReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        reader.feed(&buf[..n]).with_context(invalid)?;
    }
    reader.finish().with_context(invalid)
}

fn write_readable(out: &mut impl Write, path: &Path, meta: &Metadata) -> io::Result<()> {
    let dirs = meta
        .files
        .iter()
        .filter(|t| t.file == TargetFile::Dir)
        .count();
    writeln!(
        out,
        "# {}: {} ({}, {})",
        path.display(),
        counted(meta.files.len(), "target", "targets"),
        counted(meta.files.len() - dirs, "artifact", "artifacts"),
        counted(dirs, "directory", "directories"),
    )?;
    for item in &meta.metadata {
        writeln!(out, "# metadata: {item}")?;
    }
    for target in &meta.files {
        let path = String::from_utf8_lossy(&target.path);
        match target.file {
            TargetFile::Artifact(key) => writeln!(out, "{key}  {path}")?,
            TargetFile::Dir => writeln!(out, "<dir>  {path}")?,
        }
    }
    Ok(())
}

fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn to_json(meta: &Metadata) -> Value {
    let files: Vec<Value> = meta
        .files
        .iter()
        .map(|target| {
            let key = match target.file {
                TargetFile::Artifact(key) => Value::String(key.to_string()),
                TargetFile::Dir => Value::Null,
            };
            json!({
                "path": String::from_utf8_lossy(&target.path),
                "key": key,
                "dir": target.file == TargetFile::Dir,
            })
        })
        .collect();
    json!({
        "metadata": meta.metadata.iter().map(sexp_to_json).collect::<Vec<_>>(),
        "files": files,
    })
}

/// An atom becomes a (lossy UTF-8) string, a list an array; built from the tree's events with
/// an explicit stack, like everything else that walks a [`Sexp`].
fn sexp_to_json(sexp: &Sexp) -> Value {
    let mut open: Vec<Vec<Value>> = Vec::new();
    for event in sexp.events() {
        let complete = match event {
            Event::Open => {
                open.push(Vec::new());
                continue;
            }
            Event::Atom(atom) => Value::String(String::from_utf8_lossy(atom).into_owned()),
            Event::Close => Value::Array(open.pop().unwrap_or_default()),
        };
        match open.last_mut() {
            Some(parent) => parent.push(complete),
            None => return complete,
        }
    }
    Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_items_become_nested_json() {
        let meta =
            Metadata::parse(b"((8:metadata(3:foo3:bar())2:\xffz)(5:files(1:d5:<dir>)))").unwrap();
        assert_eq!(
            to_json(&meta),
            json!({
                "metadata": [["foo", "bar", []], "\u{fffd}z"],
                "files": [{"path": "d", "key": null, "dir": true}],
            })
        );
    }

    #[test]
    fn readable_form_shows_items_and_counts() {
        let meta = Metadata::parse(
            b"((8:metadata(1:x))(5:files(1:d5:<dir>)(3:d/f32:d5b73f7b5d75090e1da54099e4458db3)))",
        )
        .unwrap();
        let mut out = Vec::new();
        write_readable(&mut out, Path::new("m"), &meta).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# m: 2 targets (1 artifact, 1 directory)\n\
             # metadata: (x)\n\
             <dir>  d\n\
             d5b73f7b5d75090e1da54099e4458db3  d/f\n"
        );
    }
}
