//! Fuzz target: SPIFFE ID parsing against an independent reading of the spec.
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::spiffe::check(data));
