//! Shared Strait types: identities (SPIFFE), cluster names, localities and
//! the protobuf APIs spoken between components.
//!
//! This crate holds data types and their validation only: no I/O, no
//! crypto. Everything that verifies or issues certificates lives in
//! `strait-ca`.

pub mod authority;
pub mod backoff;
pub mod cluster;
pub mod delta;
pub mod exports;
pub mod identity;
pub mod label;
pub mod meshdir;
pub mod places;
pub mod snapshot;
pub mod yaml;

pub use authority::parse_service_authority;
pub use cluster::{ClusterName, Locality, NameError};
pub use identity::{IdentityError, SpiffeId, TrustDomain};

/// Generated protobuf and gRPC code.
pub mod proto {
    /// The certificate authority's API (`strait.ca.v1`).
    pub mod ca {
        #![allow(clippy::all, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("strait.ca.v1");
    }
    /// Config push from a controller to its proxies (`strait.config.v1`).
    pub mod config {
        #![allow(clippy::all, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("strait.config.v1");
    }
    /// Controller-to-controller linking and catalog sync (`strait.federation.v1`).
    pub mod federation {
        #![allow(clippy::all, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("strait.federation.v1");
    }
}
