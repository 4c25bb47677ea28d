//! Fuzz target: DNS packets through the pure answer path; no amplification for unknown names.
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::dns::check(data));
