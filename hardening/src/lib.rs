//! Hostile-input checks for every external surface of Strait.
//!
//! What it is: one `check(bytes)` entry point per surface, each feeding
//! arbitrary bytes to the real parsing or decision code of another Strait
//! crate and asserting what must hold for *any* input: no panic, bounded
//! time and output, and the surface's own invariant (a sniffing decision
//! never changes with more bytes, an accepted SPIFFE ID satisfies every rule
//! of the spec, DNS answers for unknown names are never amplified, ...).
//! The same functions are called by the `cargo fuzz` targets in `fuzz/`
//! (nightly, unbounded) and by the bounded, seeded property tests in
//! `tests/integration` (stable, part of `cargo test -p strait-hardening`).
//!
//! What it is not: an API. Nothing outside `fuzz/` and this crate's tests
//! may depend on it; the modules are public only so that the fuzz targets
//! can reach them. Bugs found here are fixed in the crate that owns the
//! surface, never here: a failing case stays as an `#[ignore = "bug: .."]`
//! test until then. The surfaces, limits and threat model are described in
//! `docs/security.md`.

pub mod csr;
pub mod dns;
pub mod dst;
pub mod http1;
pub mod path;
pub mod sniff;
pub mod spiffe;
pub mod sync;
pub mod yaml;

/// Inputs as text: YAML, authorities and identities are strings, so
/// invalid UTF-8 is replaced rather than skipped (the replacement character
/// is itself a hostile input worth feeding).
pub(crate) fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
