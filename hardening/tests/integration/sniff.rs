//! Protocol sniffing: random and mutated first bytes, and every two-byte
//! prefix.

use proptest::prelude::*;
use strait_hardening::sniff::check;
use strait_proxy::sniff::{Detected, H2_PREFACE, classify};

use crate::support::{bytes_or_mutated, config};

const DICT: &[&[u8]] = &[
    b" ",
    b"PRI * HTTP/2.0",
    b"\r\n",
    b"\x16\x03",
    b"CONNECT ",
    b"GET",
];

fn seeds() -> Vec<Vec<u8>> {
    [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        H2_PREFACE,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"PROPFIND /x HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

proptest! {
    #![proptest_config(config(4096, 0x5_1ff))]
    #[test]
    fn any_first_bytes_decide_once_and_never_change(bytes in bytes_or_mutated(48, seeds(), DICT)) {
        check(&bytes);
    }
}

#[test]
fn a_sixteen_letter_method_decides_the_same_at_16_and_17_bytes() {
    check(b"AAAAAAAAAAAAAAAA ");
}

#[test]
fn every_two_byte_prefix_is_consistent() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            check(&[a, b]);
        }
    }
}

#[test]
fn long_method_shaped_input_decides_within_the_sniff_buffer() {
    let long = [b'A'; 64];
    assert_eq!(classify(&long[..24]), Some(Detected::Tcp));
    check(&long);
    check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nPRI * HTTP/2.0");
}
