//! Protocol sniffing: [`strait_proxy::sniff::classify`] on any prefix.
//!
//! Invariants: the empty prefix is undecided; once a prefix decides, every
//! longer input with that prefix decides the same (the sidecar peeks more
//! bytes and must not change its mind); 24 bytes (the HTTP/2 preface, the
//! sniffer's whole buffer) always decide; each decision matches the bytes
//! it was made on.

use strait_proxy::sniff::{Detected, H2_PREFACE, classify};

/// Longest prefix re-classified byte by byte (the sniffer peeks 24).
const MAX_PREFIX: usize = 64;

/// Checks `classify` on every prefix of `bytes` (up to [`MAX_PREFIX`]).
pub fn check(bytes: &[u8]) {
    assert_eq!(classify(&[]), None, "the empty prefix must be undecided");
    let bytes = &bytes[..bytes.len().min(MAX_PREFIX)];
    let mut decided: Option<(usize, Detected)> = None;
    for n in 1..=bytes.len() {
        let prefix = &bytes[..n];
        let got = classify(prefix);
        if let Some((at, first)) = decided {
            assert_eq!(
                got,
                Some(first),
                "classify changed its mind: {first:?} after {at} bytes, {got:?} after {n} ({prefix:?})"
            );
        }
        if n >= H2_PREFACE.len() {
            assert!(got.is_some(), "{n} bytes and still undecided: {prefix:?}");
        }
        if let Some(d) = got {
            check_decision(prefix, d);
            decided.get_or_insert((n, d));
        }
    }
}

/// A decision agrees with the bytes it was made on.
fn check_decision(prefix: &[u8], d: Detected) {
    match d {
        Detected::Http2 => assert!(prefix.starts_with(H2_PREFACE), "{prefix:?}"),
        Detected::Tls => assert!(prefix.starts_with(&[0x16, 3]), "{prefix:?}"),
        Detected::Http1 => {
            let sp = prefix.iter().position(|b| *b == b' ');
            let method = &prefix[..sp.unwrap_or(0)];
            assert!(
                !method.is_empty()
                    && method.len() <= 16
                    && method.iter().all(u8::is_ascii_uppercase),
                "http1 without a method token: {prefix:?}"
            );
        }
        Detected::Tcp => assert!(!prefix.starts_with(H2_PREFACE), "{prefix:?}"),
    }
}
