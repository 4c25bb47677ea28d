//! Fuzz target: request path canonicalization under every path policy
//! (never panics, idempotent, no dot segments, no `//`, no encoded
//! unreserved characters). The same entry point runs as a bounded property
//! test under `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::path::check(data));
