//! Fuzz target: DER CSRs through `strait_ca::csr::check` (and issuance when accepted), and certificates through `spiffe_id_of`.
//! The same entry point runs as a bounded property test under
//! `cargo test -p strait-hardening`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_hardening::csr::check(data));
