//! Keys, and the file digests of both Dune eras.
//!
//! Dune names every cache entry by a 128-bit key written as 32 lowercase hex characters. For an
//! artifact the key is derived from its content *and* its executable bit (the "Jenga scheme"):
//!
//! - Dune >= 3.20 (BLAKE3 era): `BLAKE3_128(hex(BLAKE3_128(content)) ++ [exe])`;
//! - Dune 2.8-3.19 (MD5 era): `MD5(MD5(content) ++ [exe])`, with the raw 16-byte inner digest.
//!
//! Both eras share `files/v4`, and a key does not say which era made it. So verification hashes
//! the content once per era in a single pass ([`ContentHasher`]) and then tries the four
//! (era, executable) candidates: a match proves the bytes *and* recovers the executable bit, which
//! is why no header is needed to carry it. Test vectors for both eras, and how Dune uses keys:
//! `docs/dune-cache.md`.
//!
//! ```
//! use dune_cachefs::dune::key::{file_key, Era};
//! let key = file_key(Era::Md5, &b"content\n"[..], false).unwrap();
//! assert_eq!(key.to_string(), "6274851067c88e9990e912be27cce386");
//! ```

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use md5::Digest as _;

use super::md5_streams::Md5Stream;

/// A Dune cache key: 16 bytes, spelled as 32 lowercase hex characters in paths and on the wire.
///
/// Stored raw so that keys are cheap to copy, hash and compare, and so that a `Key` value is
/// always well-formed: the only way to get one from text is [`Key::from_str`], which refuses
/// anything but exactly 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 16]);

/// Why a piece of text is not a key; carries the text so the message can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key {input:?}: {reason}")]
pub struct KeyError {
    /// The rejected text (truncated to 80 characters so a hostile input cannot flood a log).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Key {
    /// The key's raw 16 bytes, as hashed into an outer digest or compared against a range table.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds a key from a digest's raw bytes: every 16-byte value is a valid key.
    pub fn from_bytes(bytes: [u8; 16]) -> Key {
        Key(bytes)
    }

    /// The 32-character lowercase hex spelling, without allocating: keys go into paths constantly.
    pub fn to_hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        out
    }

    /// The two-hex-character shard directory (`<hh>`) that Dune files this key under.
    pub fn shard(&self) -> Shard {
        Shard(self.0[0])
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Key, KeyError> {
        let fail = |reason| KeyError {
            input: s.chars().take(80).collect(),
            reason,
        };
        if s.len() != 32 {
            return Err(fail("a key is exactly 32 lowercase hex characters"));
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| fail("only 0-9 and a-f may appear"))?;
            let lo = hex_value(pair[1]).ok_or_else(|| fail("only 0-9 and a-f may appear"))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Key(out))
    }
}

/// The value of one *lowercase* hex digit: Dune never writes uppercase, so `A` is not a key char.
///
/// A table lookup rather than a `match` on ranges: a key's characters are random, so a branch on
/// "digit or letter" mispredicts for about half of them, and a box parses a key per request.
fn hex_value(c: u8) -> Option<u8> {
    const NOT_HEX: u8 = 0xff;
    const VALUES: [u8; 256] = {
        let mut values = [NOT_HEX; 256];
        let mut i = 0;
        while i < 16 {
            values[b"0123456789abcdef"[i] as usize] = i as u8;
            i += 1;
        }
        values
    };
    let value = VALUES[usize::from(c)];
    (value != NOT_HEX).then_some(value)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // The bytes are ASCII hex digits by construction.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// One of the 256 shard directories (`00` .. `ff`) that split each kind of entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Shard(pub u8);

impl Shard {
    /// Parses a directory name: exactly two lowercase hex characters, as Dune writes them.
    /// Anything else (`.`, `tmp`, `AB`) is not a shard, so callers can skip it silently.
    pub fn from_name(name: &str) -> Option<Shard> {
        match name.as_bytes() {
            [hi, lo] => Some(Shard((hex_value(*hi)? << 4) | hex_value(*lo)?)),
            _ => None,
        }
    }

    /// Every shard, in order: for walking a whole `db/` tree or listing a kind's directory.
    pub fn all() -> impl Iterator<Item = Shard> {
        (0..=255u8).map(Shard)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

/// Which Dune release family computed a file key; both live side by side in `files/v4`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Era {
    /// Dune >= 3.20: BLAKE3 truncated to 128 bits, with a hex inner digest.
    Blake3,
    /// Dune 2.8 to 3.19: MD5, with a raw inner digest.
    Md5,
}

impl Era {
    /// Both eras, newest first: the order verification tries them in.
    pub const ALL: [Era; 2] = [Era::Blake3, Era::Md5];

    /// The other era.
    pub fn other(self) -> Era {
        match self {
            Era::Blake3 => Era::Md5,
            Era::Md5 => Era::Blake3,
        }
    }

    /// The lowercase name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Era::Blake3 => "blake3",
            Era::Md5 => "md5",
        }
    }
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The content digests of one file, for the eras that were asked for. From these, the key for
/// either executable bit is two more tiny hashes away, which is what makes verification cheap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentDigests {
    blake3: Option<[u8; 16]>,
    md5: Option<[u8; 16]>,
}

impl ContentDigests {
    /// The file key for this content in `era` with the given executable bit, or `None` if the
    /// digests were computed without that era.
    pub fn key(&self, era: Era, executable: bool) -> Option<Key> {
        let exe = [u8::from(executable)];
        match era {
            Era::Blake3 => {
                let inner = Key::from_bytes(self.blake3?).to_hex();
                let mut outer = blake3::Hasher::new();
                outer.update(&inner);
                outer.update(&exe);
                Some(Key::from_bytes(blake3_128(&outer)))
            }
            Era::Md5 => {
                let mut outer = md5::Md5::new();
                outer.update(self.md5?);
                outer.update(exe);
                Some(Key::from_bytes(outer.finalize().into()))
            }
        }
    }

    /// Which era and executable bit reproduce `key` from this content, if any.
    pub fn matching(&self, key: &Key) -> Option<KeyMatch> {
        Era::ALL.into_iter().find_map(|era| {
            [false, true].into_iter().find_map(|executable| {
                (self.key(era, executable).as_ref() == Some(key))
                    .then_some(KeyMatch { era, executable })
            })
        })
    }
}

/// What a successful verification learned: the era that made the key and the executable bit the
/// artifact must be served with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyMatch {
    /// The era whose scheme reproduces the key.
    pub era: Era,
    /// Whether the key was made with the executable bit set.
    pub executable: bool,
}

/// Hashes content as it streams past, for one or both eras in a single pass.
///
/// The store and the boxes feed it the same chunks they write to a temp file, so verification
/// costs no second read of the data.
pub struct ContentHasher {
    blake3: Option<blake3::Hasher>,
    md5: Option<Md5Hasher>,
}

/// Whether anyone waits for an entry being fetched: set by the first who comes to wait, read by
/// its hashing ([`ContentHasher::shared`]), which then stops waiting for other entries' company.
#[derive(Clone, Debug, Default)]
pub struct Awaited(Arc<AtomicBool>);

impl Awaited {
    /// Someone waits now.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether someone waits.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a [`ContentHasher`]'s MD5 is computed.
enum Md5Hasher {
    /// On the caller's thread as the bytes arrive: the digest is ready at once.
    Inline(md5::Md5),
    /// On the process's shared stage, beside other entries' bytes in vector lanes.
    Shared(Md5Stream),
}

impl ContentHasher {
    /// A hasher for one era (computing a key) or, with `None`, both (verifying an unknown key).
    pub fn new(era: Option<Era>) -> ContentHasher {
        ContentHasher::with_md5(era, || Md5Hasher::Inline(md5::Md5::new()))
    }

    /// The same, for bytes nobody is waiting for yet (an entry fetched ahead of its reader):
    /// their MD5 is computed beside other such entries', many at once in vector lanes, which
    /// costs a fraction of the CPU, and [`ContentHasher::finish`] may wait a moment (2 ms at
    /// most) for that company unless `awaited` says someone has come to wait. Where the
    /// processor has no such lanes (no AVX-512), this is [`ContentHasher::new`].
    pub fn shared(era: Option<Era>, awaited: Awaited) -> ContentHasher {
        if !md5_lanes::available() {
            return ContentHasher::new(era);
        }
        ContentHasher::with_md5(era, || Md5Hasher::Shared(Md5Stream::new(awaited)))
    }

    fn with_md5(era: Option<Era>, md5: impl FnOnce() -> Md5Hasher) -> ContentHasher {
        let want = |e| era.is_none() || era == Some(e);
        ContentHasher {
            blake3: want(Era::Blake3).then(blake3::Hasher::new),
            md5: want(Era::Md5).then(md5),
        }
    }

    /// Feeds the next chunk of content.
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.blake3 {
            h.update(chunk);
        }
        match &mut self.md5 {
            Some(Md5Hasher::Inline(h)) => h.update(chunk),
            Some(Md5Hasher::Shared(stream)) => stream.update(chunk),
            None => {}
        }
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> ContentDigests {
        ContentDigests {
            blake3: self.blake3.as_ref().map(blake3_128),
            md5: self.md5.map(|md5| match md5 {
                Md5Hasher::Inline(h) => h.finalize().into(),
                Md5Hasher::Shared(stream) => stream.finish(),
            }),
        }
    }

    /// Hashes everything `reader` yields, in bounded memory, and returns the digests.
    pub fn digest_reader(era: Option<Era>, mut reader: impl Read) -> io::Result<ContentDigests> {
        let mut hasher = ContentHasher::new(era);
        let mut buf = vec![0u8; STREAM_CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// How much content is read per step when streaming: big enough for BLAKE3's SIMD paths and
/// few syscalls, small enough that a gigabyte file costs a fixed, small amount of memory.
const STREAM_CHUNK: usize = 256 * 1024;

fn blake3_128(h: &blake3::Hasher) -> [u8; 16] {
    let mut out = [0u8; 16];
    h.finalize_xof().fill(&mut out);
    out
}

/// The file key of the content `reader` yields, in `era`, with the given executable bit.
pub fn file_key(era: Era, reader: impl Read, executable: bool) -> io::Result<Key> {
    let digests = ContentHasher::digest_reader(Some(era), reader)?;
    Ok(digests
        .key(era, executable)
        .expect("digests were computed for the requested era"))
}

/// Checks content against a key in every era and for both executable bits, streaming.
/// `Ok(None)` means the bytes are not what the key names.
pub fn verify(key: &Key, reader: impl Read) -> io::Result<Option<KeyMatch>> {
    Ok(ContentHasher::digest_reader(None, reader)?.matching(key))
}

/// Whether a file mode makes Dune treat the file as executable: any of the 0o111 bits.
pub fn mode_is_executable(mode: u32) -> bool {
    mode & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        s.parse().unwrap()
    }

    /// The key vectors of `docs/dune-cache.md`: era, executable bit, key, content.
    fn documented_vectors() -> Vec<(Era, bool, Key, Vec<u8>)> {
        super::super::documented("key-vectors")
            .into_iter()
            .map(|line| {
                let [era, exe, want, content] = line.split_whitespace().collect::<Vec<_>>()[..]
                else {
                    panic!("a key vector is: era exe key content-hex, not {line:?}");
                };
                let era = Era::ALL.into_iter().find(|e| e.name() == era).unwrap();
                let content = match content {
                    "-" => vec![],
                    hex => (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                };
                (era, exe == "1", key(want), content)
            })
            .collect()
    }

    #[test]
    fn the_documented_vectors_hold_in_both_eras_for_both_exe_bits() {
        let vectors = documented_vectors();
        for era in Era::ALL {
            for exe in [false, true] {
                assert!(
                    vectors.iter().any(|v| (v.0, v.1) == (era, exe)),
                    "docs/dune-cache.md has no vector for {era} exe={exe}"
                );
            }
        }
        for (era, exe, want, content) in vectors {
            assert_eq!(
                file_key(era, &content[..], exe).unwrap(),
                want,
                "{era} exe={exe}"
            );
            assert_eq!(
                verify(&want, &content[..]).unwrap(),
                Some(KeyMatch {
                    era,
                    executable: exe
                }),
                "verify {want}"
            );
        }
    }

    #[test]
    fn verify_rejects_other_content() {
        let k = key("5ef8de0800908475d94747fef67940ed");
        assert_eq!(verify(&k, &b"content!"[..]).unwrap(), None);
        assert_eq!(verify(&k, &b""[..]).unwrap(), None);
    }

    #[test]
    fn streaming_matches_one_shot_across_chunk_boundaries() {
        let data: Vec<u8> = (0..3 * STREAM_CHUNK + 17)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut one_shot = ContentHasher::new(None);
        one_shot.update(&data);
        let whole = one_shot.finish();
        assert_eq!(
            ContentHasher::digest_reader(None, &data[..]).unwrap(),
            whole
        );
        let mut pieces = ContentHasher::new(None);
        for chunk in data.chunks(7919) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.finish(), whole);
    }

    #[test]
    fn key_parsing_accepts_only_32_lowercase_hex() {
        let good = "0123456789abcdef0123456789abcdef";
        assert_eq!(key(good).to_string(), good);
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdeg0123456789abcdef",
            "../23456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcd\u{e9}",
        ] {
            let err = bad.parse::<Key>().unwrap_err();
            assert!(err.to_string().contains("malformed key"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn shard_names() {
        assert_eq!(key("ab23456789abcdef0123456789abcdef").shard(), Shard(0xab));
        assert_eq!(Shard::from_name("0f"), Some(Shard(0x0f)));
        assert_eq!(Shard(0x0f).to_string(), "0f");
        for bad in ["", "0", "0F", "000", "..", "zz"] {
            assert_eq!(Shard::from_name(bad), None, "{bad:?}");
        }
        assert_eq!(Shard::all().count(), 256);
    }

    #[test]
    fn executable_bit_from_mode() {
        assert!(!mode_is_executable(0o644));
        assert!(mode_is_executable(0o744));
        assert!(mode_is_executable(0o645));
        assert!(mode_is_executable(0o100555));
    }
}
