//! What installing an entry did: [`InstallOutcome`] (stored, already there, or a collision).
//!
//! Apart from `mod.rs` because both the store and the entries being written (`pending.rs`), which
//! decide it when they are linked into place, return it: kept in the parent, `pending` would import
//! its parent while the parent imports `pending`, a cycle. A leaf: it imports nothing of the store.
//! Re-exported as `store::InstallOutcome`.

/// What happened to an entry offered to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum InstallOutcome {
    /// The entry is new and now installed.
    Stored,
    /// The same entry was already there (for metadata: byte-identical), so nothing changed.
    AlreadyPresent,
    /// A different metadata value is held for this rule key; it was kept, the offer dropped.
    Collision {
        /// BLAKE3 digest of the value the store keeps.
        held: [u8; 32],
        /// BLAKE3 digest of the value that was refused.
        offered: [u8; 32],
    },
}
