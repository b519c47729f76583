//! Many tiny artifacts for the scale benchmark (`scripts/bench-scale`), fast: writes COUNT
//! entries into the Dune db DB as `files/v4/<hh>/<key>` (mode 0444), each under its real MD5-era
//! file key (Dune 2.8-3.19: `MD5(MD5(content) ++ [0])`, computed by the crate's own
//! [`file_key`], so `fsck`, the mount and the boxes all verify them), on several threads.
//!
//! ```sh
//! cargo run --release --example make-entries -- DB 1000000 --min-size 16 --max-size 64
//! ```
//!
//! Entry `i`'s content is `TAG i\n` padded with a fixed pattern to a size between the bounds
//! (spread evenly by `i`), so no two entries share a key and every run writes the same entries.
//! Shard directories are created as entries need them, as in Dune's own caches. A shell loop
//! running `dune-cachefs key` per file would take hours for a million; this takes seconds on a
//! tmpfs. It prints one line: the entries and bytes written, and the seconds taken.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dune_cachefs::dune::key::{file_key, Era};
use dune_cachefs::dune::layout::{Entry, EntryKind};

#[derive(Parser)]
#[command(about = "Write COUNT tiny artifacts under their MD5-era keys into a Dune db")]
struct Args {
    /// The Dune cache directory (`db/`); created if missing.
    db: PathBuf,
    /// How many entries to write.
    count: u64,
    /// The smallest entry, in bytes (at least the length of `TAG i\n`).
    #[arg(long, default_value_t = 16)]
    min_size: usize,
    /// The largest entry, in bytes.
    #[arg(long, default_value_t = 64)]
    max_size: usize,
    /// What every entry's content starts with, so that two data sets never share a key.
    #[arg(long, default_value = "scale")]
    tag: String,
    /// Threads writing (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

/// Entry `i`'s content: `TAG i\n`, padded to a size in `min..=max` chosen by `i`.
fn content(tag: &str, i: u64, min: usize, max: usize) -> Vec<u8> {
    let mut data = format!("{tag} {i}\n").into_bytes();
    let span = (max - min + 1) as u64;
    let size = min + (i.wrapping_mul(7919) % span) as usize;
    let mut pad = b"abcdefghijklmnopqrstuvwxyz0123456789".iter().cycle();
    while data.len() < size {
        data.push(*pad.next().expect("the pattern cycles"));
    }
    data
}

/// Writes the entries `first, first + step, ...` below `count`; returns the bytes written.
fn write_share(args: &Args, first: u64, step: u64) -> Result<u64> {
    let mut shards_made = [false; 256];
    let mut bytes = 0;
    let mut dirs = DirBuilder::new();
    dirs.recursive(true);
    let mut i = first;
    while i < args.count {
        let data = content(&args.tag, i, args.min_size, args.max_size);
        let key = file_key(Era::Md5, &data[..], false)?;
        let entry = Entry {
            kind: EntryKind::File,
            key,
        };
        let path = args.db.join(entry.relative_path());
        let shard = usize::from(key.as_bytes()[0]);
        if !shards_made[shard] {
            let dir = path.parent().expect("an entry's path has a shard");
            dirs.create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
            shards_made[shard] = true;
        }
        write_new(&path, &data).with_context(|| format!("write {}", path.display()))?;
        bytes += data.len() as u64;
        i += step;
    }
    Ok(bytes)
}

/// Creates PATH (it must not exist) read-only and writes DATA.
fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)?;
    file.write_all(data)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let longest_head = format!("{} {}\n", args.tag, args.count).len();
    if args.min_size < longest_head || args.max_size < args.min_size {
        bail!(
            "--min-size must be at least {longest_head} (\"{} {}\\n\") and --max-size at least --min-size",
            args.tag,
            args.count
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1) as u64;
    let start = Instant::now();
    let bytes = std::thread::scope(|scope| {
        let shares: Vec<_> = (0..threads)
            .map(|t| {
                let args = &args;
                scope.spawn(move || write_share(args, t, threads))
            })
            .collect();
        shares.into_iter().try_fold(0u64, |sum, share| {
            Ok::<u64, anyhow::Error>(sum + share.join().expect("a writer thread panicked")?)
        })
    })?;
    println!(
        "make-entries: {} entries, {bytes} bytes, in {:.1} s on {threads} threads",
        args.count,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
