//! Seeded proptest configs and a seed-corpus mutator (byte edits, splices
//! and dictionary tokens), the stable stand-in for libFuzzer's mutations.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

/// `cases` cases from a fixed seed, no regression files, short shrinking.
pub fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        max_shrink_time: 20_000,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
    Token(usize, usize),
    Splice(usize, usize, usize),
    /// Replace the token (scalar, number, word) around a position.
    Replace(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let pos = any::<usize>();
    prop_oneof![
        2 => (pos, any::<u8>()).prop_map(|(p, b)| Op::Set(p, b)),
        1 => (pos, 0u8..8).prop_map(|(p, b)| Op::Flip(p, b)),
        1 => (pos, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Op::Insert(p, v)),
        1 => (pos, 1usize..32).prop_map(|(p, n)| Op::Delete(p, n)),
        1 => pos.prop_map(Op::Truncate),
        1 => (pos, 1usize..64).prop_map(|(p, n)| Op::Duplicate(p, n)),
        2 => (pos, any::<usize>()).prop_map(|(p, t)| Op::Token(p, t)),
        1 => (pos, any::<usize>(), any::<usize>()).prop_map(|(p, s, o)| Op::Splice(p, s, o)),
        4 => (pos, any::<usize>()).prop_map(|(p, t)| Op::Replace(p, t)),
    ]
}

fn apply(mut v: Vec<u8>, ops: &[Op], seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    for op in ops {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match op {
            Op::Set(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] = *b;
            }
            Op::Flip(p, bit) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= 1 << bit;
            }
            Op::Insert(p, bytes) => {
                let i = at(*p, v.len());
                v.splice(i..i, bytes.iter().copied());
            }
            Op::Delete(p, n) if !v.is_empty() => {
                let i = p % v.len();
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Op::Truncate(p) => v.truncate(at(*p, v.len())),
            Op::Duplicate(p, n) if !v.is_empty() => {
                let i = p % v.len();
                let part: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
                v.splice(i..i, part);
            }
            Op::Token(p, t) if !dict.is_empty() => {
                let i = at(*p, v.len());
                v.splice(i..i, dict[t % dict.len()].iter().copied());
            }
            Op::Splice(p, s, o) if !seeds.is_empty() => {
                let other = &seeds[s % seeds.len()];
                let from = at(*o, other.len());
                let i = at(*p, v.len());
                v.truncate(i);
                v.extend_from_slice(&other[from..]);
            }
            Op::Replace(p, t) if !v.is_empty() && !dict.is_empty() => {
                let delim = |b: u8| b" \t\r\n:,{}[]\"'".contains(&b);
                let i = p % v.len();
                let start = v[..i].iter().rposition(|b| delim(*b)).map_or(0, |j| j + 1);
                let end = v[i..]
                    .iter()
                    .position(|b| delim(*b))
                    .map_or(v.len(), |j| i + j);
                v.splice(start..end, dict[t % dict.len()].iter().copied());
            }
            _ => {}
        }
    }
    v
}

/// A seed with 1-3 mutations.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty());
    (0..seeds.len(), prop::collection::vec(op(), 1..4))
        .prop_map(move |(i, ops)| apply(seeds[i].clone(), &ops, &seeds, dict))
}

/// Random bytes, or a mutated seed.
pub fn bytes_or_mutated(
    max_len: usize,
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..max_len),
        3 => mutated(seeds, dict),
    ]
}

/// Runs `f` and fails if it takes longer than `limit`.
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    assert!(
        took <= limit,
        "{what} took {took:?}; the bound is {limit:?}"
    );
    out
}

/// A seed with 1-4 bytes overwritten: framing (lengths, counts, offsets)
/// mostly survives, so the input gets past the first parser.
pub fn overwritten(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty());
    (
        0..seeds.len(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..5),
    )
        .prop_map(move |(i, sets)| {
            let mut v = seeds[i].clone();
            for (p, b) in sets {
                if !v.is_empty() {
                    let n = v.len();
                    v[p % n] = b;
                }
            }
            v
        })
}
