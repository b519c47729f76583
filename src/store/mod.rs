//! The local store: a real Dune `db/` directory that holds verified entries.
//!
//! A store is exactly the directory Dune itself would use — `files/v4/<hh>/<key>`,
//! `meta/v4/<hh>/<key>`, `meta/v5/<hh>/<key>` — so Dune, `dune cache trim` and our own `fsck` all
//! work on it, and a cache box's root is a store too. What this module adds over Dune's own
//! directory is a discipline for *writing*:
//!
//! - **Nothing partial is ever visible.** A new entry's bytes are held in memory (small ones) or
//!   written to a temp file under [`TEMP_DIR`] (same filesystem) as they arrive, checked, written
//!   out and flushed to disk, and only then moved into place. A crash leaves at most a temp file
//!   there, which is never an entry (it is not under a kind directory, and its name is not a key)
//!   and is swept when the store's owner — a mount or a box, see [`Store::open_exclusive`] —
//!   starts again. A mount serves what it fetched before that flush ([`landing`]).
//! - **Nothing unverified is installed.** Artifact bytes must reproduce their key (either era; the
//!   match also fixes the executable bit and so the file mode); metadata must parse. An artifact
//!   is hashed as it arrives in the era the store's last artifact matched (a team's cache is
//!   nearly always of one era), and in the other only when that does not reproduce its key: each
//!   byte is hashed once, not once per era.
//! - **First writer wins.** Installing renames with `RENAME_NOREPLACE` (or, on a filesystem
//!   without it, uses `link(2)`), which never replaces an existing name. A second, *different*
//!   metadata value for a held rule key is reported as a [`InstallOutcome::Collision`] and
//!   dropped, exactly as Dune's own cache keeps the first value.
//!
//! Trimming and checking are in [`trim`] and [`fsck`]. The store itself is in `db.rs`, what it
//! reports in `error.rs` and `outcome.rs`, entries being written in `pending.rs`: this module
//! only gathers them, so its parts import one another and never their parent.

mod db;
mod error;
pub mod fsck;
pub mod journal;
pub mod landing;
mod outcome;
mod pending;
pub mod trim;

use std::path::{Path, PathBuf};

pub use db::{LocalEntry, Store, TEMP_DIR};
pub use error::StoreError;
pub use outcome::InstallOutcome;
pub use pending::{EntryStat, PendingEntry, Stage, Staged, VerifiedEntry};

/// The user's own Dune cache directory, as Dune 2.9 finds it: `$XDG_CACHE_HOME/dune/db`, else
/// `~/.cache/dune/db`. `None` when neither variable is set.
pub fn default_dune_db() -> Option<PathBuf> {
    let non_empty = |var| std::env::var_os(var).filter(|v| !v.is_empty());
    let cache = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(cache.join("dune").join("db"))
}

#[cfg(test)]
mod tests;
