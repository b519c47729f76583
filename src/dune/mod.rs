//! Dune's cache formats: what a key is, how a file's key is computed in each era, the csexp
//! encoding, rule metadata, and where entries live in a `db/` directory.
//!
//! Nothing here does I/O beyond reading from a caller-supplied reader: these are the pure facts
//! the store, the boxes and the mount all agree on.

pub mod csexp;
pub mod key;
pub mod layout;
pub(crate) mod md5_streams;
pub mod metadata;

/// The lines of one machine-read block of `docs/dune-cache.md` (a fenced block opened with
/// ```` ```text NAME ````), without comments and blank lines: the document's key vectors and
/// metadata examples are read by the tests that check them, so the two cannot drift apart.
#[cfg(test)]
fn documented(name: &str) -> Vec<&'static str> {
    const DOC: &str = include_str!("../../docs/dune-cache.md");
    let opening = format!("```text {name}\n");
    let start = DOC.find(&opening).map(|at| at + opening.len());
    let block = start.map_or("", |start| DOC[start..].split("```").next().unwrap_or(""));
    let lines: Vec<&str> = block
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!lines.is_empty(), "docs/dune-cache.md has no {name} block");
    lines
}
