//! Fuzz target: peering tokens (decode, round trip, check against our bundle).
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::sync::check_peering_token(data));
