//! The Strait federation controller: one per cluster.
//!
//! What it is:
//! - [`catalog`]: the local catalog (services, exports, traffic policies)
//!   from a [`catalog::CatalogSource`]; the directory store for plain hosts;
//! - [`health`]: active HTTP/TCP checks and passive reports from proxies;
//! - [`snapshot`]: the pure function that builds a proxy's
//!   [`strait_api::snapshot::Snapshot`] from the local catalog, imported
//!   services and policies, reporting conflicts;
//! - [`push`]: config push to proxies, gateways and DNS servers (gRPC
//!   bidi stream, ACK/NACK; the client side is `strait-agent`);
//! - [`peering`] and [`sync`]: links from peering tokens, and catalog sync of
//!   exported services between linked controllers with leases;
//! - [`controller`]: `Controller::start` wires it all, with an admin HTTP
//!   port (`/metrics`, `/ready`, `/status`);
//! - [`grpc`]: tonic over the mesh rustls configs of `strait_ca::tls`, with
//!   the caller's verified SPIFFE ID on every request; [`metrics`]: the
//!   Prometheus families.
//!
//! What it is not: no data path (proxies and gateways carry traffic), no
//! certificate issuing (`strait-ca`). [`kube`] (feature `kubernetes`) is
//! the Kubernetes catalog source.

pub mod catalog;
pub mod controller;
pub mod grpc;
pub mod health;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod metrics;
pub mod peering;
pub mod push;
pub mod snapshot;
pub mod sync;
