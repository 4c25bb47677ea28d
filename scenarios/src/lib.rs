//! Strait scenarios: declarative multi-cluster setups that run whole meshes
//! on one machine (every component the real library, on loopback), inject
//! faults and assert outcomes; and the demo built on the same mesh.
//!
//! - [`mesh`]: start a mesh (CA, controllers, gateways, DNS, workloads,
//!   sidecars), and the fault operations;
//! - [`spec`]: the scenario file format (`docs/scenarios.md`);
//! - [`runner`]: runs a scenario's timeline and traffic, checks its
//!   assertions and writes a report;
//! - [`demo`]: `strait demo`.
//!
//! What it is not: a load tester, or a way to run a production mesh.

pub mod demo;
pub mod mesh;
pub mod relay;
mod rotation;
pub mod runner;
pub mod spec;
pub mod traffic;
