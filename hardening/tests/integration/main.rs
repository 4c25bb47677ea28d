//! Bounded, seeded property tests over the `check` entry points that the
//! `cargo fuzz` targets in `fuzz/` also call, plus the hostile cases that
//! need a fixed input (bombs, smuggling shapes, foreign claims). Each
//! module is one surface; `support` holds the seeded config and mutator.

mod csr;
mod dns;
mod dst;
mod http1;
mod listeners;
mod path;
mod sniff;
mod spiffe;
mod support;
mod sync;
mod yaml;
