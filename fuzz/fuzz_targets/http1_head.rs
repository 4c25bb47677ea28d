//! Fuzz target: HTTP/1 request heads through hyper (outbound listener settings) and the proxy's header hygiene.
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::http1::check(data));
