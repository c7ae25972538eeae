//! Payload commitments of many entries at once, with BLAKE3's SIMD kernels.
//!
//! Owns: [`commit_payloads`], which returns for every entry exactly what
//! [`commit_payload`] returns, in a fraction of the time when a request
//! carries many payloads.
//!
//! A commitment is `BLAKE3(salt || payload)` (FORMAT.md §2). Hashed one
//! entry at a time, the input of a 1 KiB payload (1,056 bytes: two chunks)
//! is 18 compressions one after another. BLAKE3's SIMD kernels compress up
//! to 16 chunks side by side, but the crate feeds them only the chunks of
//! one long input. Here the chunks of many commitments are lined up
//! instead: chunks with the same counter and the same number of whole
//! blocks before their last block go through `hash_many` together, and
//! what is left (each chunk's last block, and the parent node of a
//! two-chunk input) is one compression each.
//!
//! `hash_many` and `compress_in_place` come from `blake3::platform`, which
//! the crate exposes without documenting it ("for benchmarks only"). The
//! version is fixed by Cargo.lock; a release that changes those functions
//! fails to compile here rather than hashing differently, and the tests
//! compare every shape of input with [`commit_payload`]. Inputs longer than
//! two chunks go to `blake3::Hasher`, which already hashes their chunks
//! side by side. Nothing here is a format: only a faster way to the same
//! bytes, so verifiers may keep hashing one entry at a time.
//!
//! Invariant: `commit_payloads(s, p)[i] == commit_payload(&s[i], p[i])`.

use blake3::hazmat::{merge_subtrees_root, ChainingValue, Mode};
use blake3::platform::{le_bytes_from_words_32, words_from_le_bytes_32, Platform};
use blake3::IncrementCounter;

use super::entry::{commit_payload, Salt, SALT_LEN};
use super::hash::Hash;

const CHUNK_LEN: usize = 1024;
const BLOCK_LEN: usize = 64;

/// BLAKE3's initial chaining value (the BLAKE3 paper, §2.2).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

// Domain flags of a compression (the BLAKE3 paper, table 3).
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const ROOT: u8 = 1 << 3;

/// `commit_payload(&salts[i], payloads[i])` for every `i`, in order.
///
/// # Panics
/// When `salts` and `payloads` differ in length.
pub fn commit_payloads(salts: &[Salt], payloads: &[&[u8]]) -> Vec<Hash> {
    commit_payloads_on(Platform::detect(), salts, payloads)
}

/// [`commit_payloads`] with the kernels of `platform` (tests run each one
/// the machine has).
fn commit_payloads_on(platform: Platform, salts: &[Salt], payloads: &[&[u8]]) -> Vec<Hash> {
    assert_eq!(salts.len(), payloads.len(), "one salt per payload");
    if payloads.len() < 2 {
        return serial(salts, payloads);
    }
    // The first chunk of each input starts with the salt, so it is copied
    // into one piece; a second chunk lies whole inside the payload.
    let first_len = |p: &[u8]| (SALT_LEN + p.len()).min(CHUNK_LEN);
    let lined_up = |p: &[u8]| SALT_LEN + p.len() <= 2 * CHUNK_LEN;
    let mut firsts = Vec::new();
    for (salt, payload) in salts.iter().zip(payloads) {
        if lined_up(payload) {
            firsts.extend_from_slice(&salt.0);
            firsts.extend_from_slice(&payload[..first_len(payload) - SALT_LEN]);
        }
    }
    let mut chunks = Vec::new();
    let mut at = 0;
    for payload in payloads.iter().filter(|p| lined_up(p)) {
        let n = first_len(payload);
        let two = SALT_LEN + payload.len() > CHUNK_LEN;
        chunks.push(Chunk {
            bytes: &firsts[at..at + n],
            counter: 0,
            root: !two,
        });
        if two {
            chunks.push(Chunk {
                bytes: &payload[CHUNK_LEN - SALT_LEN..],
                counter: 1,
                root: false,
            });
        }
        at += n;
    }
    let mut cvs = compress_chunks(platform, &chunks).into_iter();
    salts
        .iter()
        .zip(payloads)
        .map(|(salt, payload)| {
            if !lined_up(payload) {
                return commit_payload(salt, payload);
            }
            let first = cvs.next().expect("one result per chunk");
            if SALT_LEN + payload.len() <= CHUNK_LEN {
                Hash(first)
            } else {
                let second = cvs.next().expect("one result per chunk");
                Hash(*merge_subtrees_root(&first, &second, Mode::Hash).as_bytes())
            }
        })
        .collect()
}

fn serial(salts: &[Salt], payloads: &[&[u8]]) -> Vec<Hash> {
    salts
        .iter()
        .zip(payloads)
        .map(|(salt, payload)| commit_payload(salt, payload))
        .collect()
}

/// One chunk of an input: 1 to 1,024 bytes, its chunk counter, and whether
/// it is the whole input (its output is then the root hash).
struct Chunk<'a> {
    bytes: &'a [u8],
    counter: u64,
    root: bool,
}

/// The chaining value of every chunk (its hash when it is the root), in
/// order.
fn compress_chunks(platform: Platform, chunks: &[Chunk<'_>]) -> Vec<ChainingValue> {
    // Chaining values after the blocks before each chunk's last one: those
    // blocks are full, so chunks with as many of them and the same counter
    // are compressed side by side.
    let before_last = |c: &Chunk<'_>| (c.bytes.len() - 1) / BLOCK_LEN;
    let key = |i: usize| (before_last(&chunks[i]), chunks[i].counter);
    let mut states = vec![IV; chunks.len()];
    let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| key(i).0 > 0).collect();
    order.sort_by_key(|&i| key(i));
    let mut out = Vec::new();
    for group in order.chunk_by(|&a, &b| key(a) == key(b)) {
        let (blocks, counter) = key(group[0]);
        let inputs: Vec<&[u8]> = group.iter().map(|&i| chunks[i].bytes).collect();
        out.clear();
        out.resize(group.len() * 32, 0);
        full_blocks(platform, blocks, &inputs, counter, &mut out);
        for (&i, cv) in group.iter().zip(out.chunks_exact(32)) {
            states[i] = words_from_le_bytes_32(cv.try_into().expect("32 bytes"));
        }
    }
    chunks
        .iter()
        .zip(states)
        .map(|(c, mut cv)| {
            let from = before_last(c) * BLOCK_LEN;
            let last = &c.bytes[from..];
            let mut block = [0u8; BLOCK_LEN];
            block[..last.len()].copy_from_slice(last);
            let mut flags = CHUNK_END;
            if from == 0 {
                flags |= CHUNK_START;
            }
            if c.root {
                flags |= ROOT;
            }
            let len = u8::try_from(last.len()).expect("a block is 64 bytes");
            platform.compress_in_place(&mut cv, &block, len, c.counter, flags);
            le_bytes_from_words_32(&cv)
        })
        .collect()
}

/// Compresses the first `blocks` whole blocks (1 to 15) of each input side
/// by side, from the start of a chunk with `counter`: `out` receives the
/// chaining value after them, 32 bytes per input.
fn full_blocks(platform: Platform, blocks: usize, inputs: &[&[u8]], counter: u64, out: &mut [u8]) {
    macro_rules! dispatch {
        ($($n:literal)*) => {
            match blocks {
                $($n => {
                    let arrays: Vec<&[u8; $n * BLOCK_LEN]> = inputs
                        .iter()
                        .map(|b| b[..$n * BLOCK_LEN].try_into().expect("long enough"))
                        .collect();
                    platform.hash_many(
                        &arrays,
                        &IV,
                        counter,
                        IncrementCounter::No,
                        0,
                        CHUNK_START,
                        0,
                        out,
                    );
                })*
                _ => unreachable!("a chunk has 1 to 15 blocks before its last"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every kernel this machine runs, the portable one first.
    fn platforms() -> Vec<Platform> {
        let mut all = vec![Platform::portable()];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        all.extend(
            [
                Platform::sse2(),
                Platform::sse41(),
                Platform::avx2(),
                Platform::avx512(),
            ]
            .into_iter()
            .flatten(),
        );
        all
    }

    fn check(lens: &[usize]) {
        let salts: Vec<Salt> = (0..lens.len())
            .map(|i| Salt([i as u8 ^ 0xa5; SALT_LEN]))
            .collect();
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let want: Vec<Hash> = salts
            .iter()
            .zip(&refs)
            .map(|(s, p)| commit_payload(s, p))
            .collect();
        assert_eq!(
            commit_payloads(&salts, &refs),
            want,
            "payloads of {lens:?} bytes"
        );
        for platform in platforms() {
            let got = commit_payloads_on(platform, &salts, &refs);
            assert_eq!(got, want, "{platform:?}, payloads of {lens:?} bytes");
        }
    }

    #[test]
    fn every_length_around_the_block_and_chunk_edges_matches_one_at_a_time() {
        // Every payload length up to three chunks, each next to a 1 KiB
        // payload and next to one of the same length (so groups of one and
        // of several both run).
        for n in 0..=3 * CHUNK_LEN {
            check(&[n, 1024]);
            check(&[n, n, n]);
        }
    }

    #[test]
    fn more_inputs_than_simd_lanes_and_mixed_shapes() {
        check(&[1024; 40]);
        let mixed: Vec<usize> = (0..100).map(|i| (i * 97) % 2300).collect();
        check(&mixed);
        check(&[]);
        check(&[5]);
    }

    proptest! {
        #[test]
        fn random_requests_match_one_at_a_time(lens in proptest::collection::vec(0usize..4200, 0..40)) {
            check(&lens);
        }
    }
}
