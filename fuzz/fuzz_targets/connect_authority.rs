//! Fuzz target: `name.namespace:port` / `ip:port` authorities (`parse_dst`, the gateway's CONNECT decision).
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::dst::check(data));
