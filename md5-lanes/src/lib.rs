//! MD5 compression of up to 16 independent messages at once, one per 32-bit lane of AVX-512
//! registers.
//!
//! One MD5 stream cannot go faster than its chain of dependent steps: each 64-byte block needs
//! the state the previous block left, and each of its 64 steps needs the one before. What a
//! wide register can do is run that chain for sixteen *different* messages side by side, which
//! is what a cache client verifying many MD5-keyed entries at once has on hand. On one core this
//! hashes about 1.5 times the bytes a second of the one-message code with two messages, 3 times
//! with four, 6 with eight and 7 with sixteen ([`compress`] takes any number up to [`LANES`]; the
//! `throughput` example measures them).
//!
//! The crate is apart from `dune-cachefs` because it needs `unsafe` (the vector loads and the
//! call into code compiled for AVX-512), which the main crate forbids. Everything unsafe is in
//! this file's `avx512` module, behind a safe function that checks its arguments; the tests hold
//! every lane count and length to the one-message code of the `md-5` crate.
//!
//! ```
//! let mut states = [md5_lanes::INITIAL_STATE; 2];
//! let blocks = [[0u8; 64], [1u8; 64]];
//! md5_lanes::compress(&mut states, &[&blocks[0][..], &blocks[1][..]]);
//! assert_ne!(states[0], states[1]);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

/// How many messages one call can carry: one per 32-bit lane of a 512-bit register.
pub const LANES: usize = 16;

/// MD5's state before the first block (RFC 1321, section 3.3).
pub const INITIAL_STATE: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Whether this machine runs the lanes (AVX-512F); without it [`compress`] hashes one message
/// after another, with the same results.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs MD5's compression over `blocks[i]` from `states[i]`, for every `i` at once.
///
/// Every slice of `blocks` must hold the same whole number of 64-byte blocks, and there may be at
/// most [`LANES`] of them, as many as `states`. Padding and the final digest are [`digest`]'s: this
/// is the block function alone, so messages can be fed in pieces across calls.
///
/// # Panics
///
/// If the slices are not as described: these are the caller's invariants, not input errors.
pub fn compress(states: &mut [[u32; 4]], blocks: &[&[u8]]) {
    assert_eq!(states.len(), blocks.len(), "one state per lane");
    assert!(blocks.len() <= LANES, "at most {LANES} lanes");
    let len = blocks.first().map_or(0, |b| b.len());
    assert!(
        len.is_multiple_of(64) && blocks.iter().all(|b| b.len() == len),
        "every lane holds the same whole number of blocks"
    );
    if len == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if blocks.len() > 1 && available() {
        // SAFETY: AVX-512F was detected just above, and the argument checks above are the ones
        // `compress_lanes` relies on.
        unsafe { avx512::compress_lanes(states, blocks) };
        return;
    }
    for (state, lane) in states.iter_mut().zip(blocks) {
        compress_one(state, lane);
    }
}

/// One message's blocks, by the `md-5` crate's compression function.
pub fn compress_one(state: &mut [u32; 4], blocks: &[u8]) {
    assert!(blocks.len().is_multiple_of(64), "whole blocks only");
    for block in blocks.chunks_exact(64) {
        let block: &[u8; 64] = block.try_into().expect("chunks_exact gives 64 bytes");
        md5::block_api::compress(state, std::slice::from_ref(block));
    }
}

/// A message's MD5 digest, from the state its whole blocks left and the bytes after them
/// (`tail`, less than a block): MD5's padding (a 1 bit, zeros up to 8 bytes short of a block
/// boundary, then the message's `len` in bits; RFC 1321, sections 3.1-3.2), its last
/// compression, and the state written out.
///
/// # Panics
///
/// If `tail` holds a whole block or more: the caller's invariant, as for [`compress`].
pub fn digest(mut state: [u32; 4], tail: &[u8], len: u64) -> [u8; 16] {
    assert!(tail.len() < 64, "the tail is less than a block");
    // One block, or two when the length no longer fits after the tail and its 1 bit.
    let mut padded = [0u8; 128];
    padded[..tail.len()].copy_from_slice(tail);
    padded[tail.len()] = 0x80;
    let end = if tail.len() < 56 { 64 } else { 128 };
    padded[end - 8..end].copy_from_slice(&len.wrapping_mul(8).to_le_bytes());
    compress_one(&mut state, &padded[..end]);
    let mut out = [0u8; 16];
    for (word, value) in state.iter().enumerate() {
        out[word * 4..word * 4 + 4].copy_from_slice(&value.to_le_bytes());
    }
    out
}

/// Per step: the rotation (RFC 1321's `s`), then which message word it adds.
const ROTATIONS: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, //
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, //
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, //
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// Per step: `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321's table `T`).
const SINES: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The message word step `i` adds (RFC 1321's round order).
const fn word_of(i: usize) -> usize {
    match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The lanes. Lane `l` of register `w` holds word `w` of message `l`'s current block, so each
    //! MD5 step is a handful of vector instructions for all messages: the round functions are one
    //! `vpternlogd` each and the rotation one `vprold`. Up to eight messages run in 256-bit
    //! registers, more in 512-bit ones: on processors that execute a 512-bit instruction as two
    //! 256-bit halves, eight lanes in 512-bit registers would cost as much as sixteen.

    use std::arch::x86_64::*;

    use super::{word_of, LANES, ROTATIONS, SINES};

    /// Where lanes without a message read from: their results are never stored.
    static IDLE_BLOCK: [u8; 64] = [0; 64];

    /// # Safety
    ///
    /// The CPU must have AVX-512F; `blocks` must hold `states.len()` (at most [`LANES`], at
    /// least 1) slices of the same whole, non-zero number of 64-byte blocks.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn compress_lanes(states: &mut [[u32; 4]], blocks: &[&[u8]]) {
        if states.len() <= LANES / 2 && std::arch::is_x86_feature_detected!("avx512vl") {
            // SAFETY: AVX-512F is this function's precondition and AVX-512VL was just detected;
            // at most 8 lanes, and the slices are as this function requires.
            unsafe { compress_8(states, blocks) };
        } else {
            // SAFETY: AVX-512F is this function's precondition; the slices are as it requires.
            unsafe { compress_16(states, blocks) };
        }
    }

    /// Calls `$step!(i)` for each of MD5's 64 steps, in order.
    macro_rules! for_each_step {
        ($step:ident) => {
            $step!(0);
            $step!(1);
            $step!(2);
            $step!(3);
            $step!(4);
            $step!(5);
            $step!(6);
            $step!(7);
            $step!(8);
            $step!(9);
            $step!(10);
            $step!(11);
            $step!(12);
            $step!(13);
            $step!(14);
            $step!(15);
            $step!(16);
            $step!(17);
            $step!(18);
            $step!(19);
            $step!(20);
            $step!(21);
            $step!(22);
            $step!(23);
            $step!(24);
            $step!(25);
            $step!(26);
            $step!(27);
            $step!(28);
            $step!(29);
            $step!(30);
            $step!(31);
            $step!(32);
            $step!(33);
            $step!(34);
            $step!(35);
            $step!(36);
            $step!(37);
            $step!(38);
            $step!(39);
            $step!(40);
            $step!(41);
            $step!(42);
            $step!(43);
            $step!(44);
            $step!(45);
            $step!(46);
            $step!(47);
            $step!(48);
            $step!(49);
            $step!(50);
            $step!(51);
            $step!(52);
            $step!(53);
            $step!(54);
            $step!(55);
            $step!(56);
            $step!(57);
            $step!(58);
            $step!(59);
            $step!(60);
            $step!(61);
            $step!(62);
            $step!(63);
        };
    }

    /// Defines one width's kernel: `$lanes` lanes in registers of type `$v`, with that width's
    /// loads, stores, gather, addition, broadcast, `vpternlogd` and `vprold`.
    macro_rules! kernel {
        ($name:ident, $features:literal, $lanes:literal, $v:ty,
         $load:ident, $store:ident, $gather:expr, $add:ident, $set1:ident, $logic:ident,
         $rol:ident) => {
            /// # Safety
            ///
            /// As [`compress_lanes`], with at most this kernel's lanes and its CPU features.
            #[target_feature(enable = $features)]
            unsafe fn $name(states: &mut [[u32; 4]], blocks: &[&[u8]]) {
                let count = blocks[0].len() / 64;
                let mut starts = [IDLE_BLOCK.as_ptr(); $lanes];
                let mut strides = [0usize; $lanes];
                for (lane, bytes) in blocks.iter().enumerate() {
                    starts[lane] = bytes.as_ptr();
                    strides[lane] = 64;
                }
                // The state, one register per word, lane `l` from `states[l]`.
                let mut columns = [[0u32; $lanes]; 4];
                for (lane, state) in states.iter().enumerate() {
                    for word in 0..4 {
                        columns[word][lane] = state[word];
                    }
                }
                // SAFETY: each column is `$lanes` u32s, one register's worth (unaligned loads).
                let mut state: [$v; 4] =
                    columns.map(|column| unsafe { $load(column.as_ptr().cast()) });
                // Lane `l`'s block laid out as row `l`, read back a column (one word of every
                // lane) at a time by a gather.
                let mut rows = [[0u32; 16]; $lanes];
                for block in 0..count {
                    for (lane, row) in rows.iter_mut().enumerate() {
                        // SAFETY: a lane with a message reads its block `block` of `count`, 64
                        // bytes within its slice; an idle lane (stride 0) reads IDLE_BLOCK's 64.
                        // The row is 16 u32s, 64 bytes.
                        unsafe {
                            let source = starts[lane].add(block * strides[lane]);
                            std::ptr::copy_nonoverlapping(
                                source,
                                row.as_mut_ptr().cast::<u8>(),
                                64,
                            );
                        }
                    }
                    let base: *const i32 = rows.as_ptr().cast();
                    // SAFETY: word `word` of each row: `base + word` plus the row offsets (16
                    // u32s apart, `$lanes` rows) stays inside `rows`.
                    let words: [$v; 16] =
                        std::array::from_fn(|word| unsafe { $gather(base.add(word)) });
                    let [mut a, mut b, mut c, mut d] = state;
                    // Unrolled by the compiler: `I` is a constant in each copy.
                    macro_rules! step {
                        ($i:expr) => {{
                            const I: usize = $i;
                            // F = (b & c) | (!b & d), G = (b & d) | (c & !d), H = b ^ c ^ d,
                            // I = c ^ (b | !d), each as the truth table `vpternlogd` takes.
                            let mixed = match I / 16 {
                                0 => $logic::<0xCA>(b, c, d),
                                1 => $logic::<0xE4>(b, c, d),
                                2 => $logic::<0x96>(b, c, d),
                                _ => $logic::<0x39>(b, c, d),
                            };
                            let sum = $add(
                                $add(mixed, a),
                                $add($set1(SINES[I] as i32), words[word_of(I)]),
                            );
                            let rotated = $rol::<{ ROTATIONS[I] as i32 }>(sum);
                            a = d;
                            d = c;
                            c = b;
                            b = $add(b, rotated);
                        }};
                    }
                    for_each_step!(step);
                    state = [
                        $add(state[0], a),
                        $add(state[1], b),
                        $add(state[2], c),
                        $add(state[3], d),
                    ];
                }
                for (word, column) in columns.iter_mut().enumerate() {
                    // SAFETY: each column is `$lanes` u32s, one register's worth (unaligned stores).
                    unsafe { $store(column.as_mut_ptr().cast(), state[word]) };
                }
                for (lane, state) in states.iter_mut().enumerate() {
                    for word in 0..4 {
                        state[word] = columns[word][lane];
                    }
                }
            }
        };
    }

    kernel!(
        compress_16,
        "avx512f",
        16,
        __m512i,
        _mm512_loadu_si512,
        _mm512_storeu_si512,
        |word: *const i32| _mm512_i32gather_epi32::<4>(
            _mm512_setr_epi32(
                0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240
            ),
            word.cast(),
        ),
        _mm512_add_epi32,
        _mm512_set1_epi32,
        _mm512_ternarylogic_epi32,
        _mm512_rol_epi32
    );

    kernel!(
        compress_8,
        "avx512f,avx512vl",
        8,
        __m256i,
        _mm256_loadu_si256,
        _mm256_storeu_si256,
        |word: *const i32| _mm256_i32gather_epi32::<4>(
            word,
            _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112),
        ),
        _mm256_add_epi32,
        _mm256_set1_epi32,
        _mm256_ternarylogic_epi32,
        _mm256_rol_epi32
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;

    /// Bytes that differ from lane to lane and block to block.
    fn message(lane: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ lane.wrapping_mul(97) ^ (i >> 7)) as u8)
            .collect()
    }

    /// The MD5 of `bytes`: its whole blocks by `lanes_with`, then [`digest`].
    fn digest_by_blocks(bytes: &[u8], lanes_with: impl Fn(&mut [u32; 4], &[u8])) -> [u8; 16] {
        let mut state = INITIAL_STATE;
        let whole = bytes.len() / 64 * 64;
        lanes_with(&mut state, &bytes[..whole]);
        digest(state, &bytes[whole..], bytes.len() as u64)
    }

    #[test]
    fn the_block_function_with_padding_is_md5() {
        for len in [0, 1, 55, 56, 63, 64, 65, 1000] {
            let bytes = message(0, len);
            let ours = digest_by_blocks(&bytes, compress_one);
            assert_eq!(ours[..], md5::Md5::digest(&bytes)[..], "length {len}");
        }
    }

    #[test]
    fn every_lane_count_matches_one_message_at_a_time() {
        for lanes in 1..=LANES {
            for blocks in [1, 2, 7] {
                let messages: Vec<Vec<u8>> =
                    (0..lanes).map(|lane| message(lane, blocks * 64)).collect();
                let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                // Different starting states per lane, as for messages fed in pieces.
                let mut states: Vec<[u32; 4]> = (0..lanes as u32)
                    .map(|lane| INITIAL_STATE.map(|word| word.wrapping_add(lane * 0x0101_0101)))
                    .collect();
                let mut expected = states.clone();
                compress(&mut states, &slices);
                for (state, bytes) in expected.iter_mut().zip(&slices) {
                    compress_one(state, bytes);
                }
                assert_eq!(states, expected, "{lanes} lanes of {blocks} blocks");
            }
        }
    }

    #[test]
    fn lanes_fed_in_pieces_give_each_message_its_md5() {
        let len = 64 * 37 + 13;
        let messages: Vec<Vec<u8>> = (0..LANES).map(|lane| message(lane, len)).collect();
        let whole = len / 64 * 64;
        let mut states = [INITIAL_STATE; LANES];
        // Uneven pieces: 1 block, then 20, then the rest, all lanes together.
        for (from, to) in [(0, 64), (64, 64 * 21), (64 * 21, whole)] {
            let pieces: Vec<&[u8]> = messages.iter().map(|m| &m[from..to]).collect();
            compress(&mut states, &pieces);
        }
        for (lane, bytes) in messages.iter().enumerate() {
            let state = states[lane];
            let digest = digest_by_blocks(bytes, |s, _| *s = state);
            assert_eq!(digest[..], md5::Md5::digest(bytes)[..], "lane {lane}");
        }
    }

    #[test]
    fn no_blocks_changes_nothing() {
        let mut states = [INITIAL_STATE; 3];
        compress(&mut states, &[&[][..], &[][..], &[][..]]);
        assert_eq!(states, [INITIAL_STATE; 3]);
    }

    #[test]
    #[should_panic(expected = "same whole number of blocks")]
    fn lanes_of_different_lengths_are_refused() {
        let mut states = [INITIAL_STATE; 2];
        compress(&mut states, &[&[0u8; 64][..], &[0u8; 128][..]]);
    }

    #[test]
    #[should_panic(expected = "at most 16 lanes")]
    fn more_lanes_than_the_register_holds_are_refused() {
        let mut states = [INITIAL_STATE; LANES + 1];
        let block = [0u8; 64];
        let blocks = [&block[..]; LANES + 1];
        compress(&mut states, &blocks);
    }
}
