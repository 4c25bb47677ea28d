//! The Strait east-west gateway: the one public door of a cluster.
//!
//! What it is: an mTLS (TLS 1.3, ALPN h2) listener that accepts any client
//! whose certificate chains to the mesh's trust bundle, and serves HTTP/2
//! `CONNECT` streams to the endpoints of the services this cluster exports
//! ([`ExportTable`], pushed at runtime with [`Handle::apply`]). Each stream
//! is a tunnel: the gateway dials the endpoint's sidecar and pipes bytes both
//! ways. Policy: only exported endpoints are reachable (anything else is
//! refused with a `strait-error` reason), per-source-cluster stream limits,
//! idle timeouts, graceful drain. Metrics per source cluster and destination
//! service come from the outer peer's chain and the `CONNECT` authority.
//!
//! What it is not: it never terminates the inner TLS session between the
//! two sidecars, so it cannot read, route or authorize requests inside a
//! tunnel (the destination sidecar does that, seeing the caller's own
//! identity). It has no catalog of its own: the controller pushes exports.
//!
//! ```no_run
//! # async fn f(cfg: strait_gateway::GatewayConfig) -> Result<(), strait_gateway::StartError> {
//! let gw = strait_gateway::Gateway::start(cfg, Default::default()).await?;
//! println!("tunnels at {}, metrics at {}", gw.listener, gw.admin);
//! gw.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
pub mod config;
pub mod exports;
mod gateway;
pub mod identity;
pub mod metrics;
mod shared;
pub mod tunnel;

pub use config::{GatewayConfig, Limits, Listeners};
pub use exports::{ExportError, ExportTable, ExportedEndpoint, ExportedService, Refusal};
pub use gateway::{ALPN_H2, Gateway, Handle, StartError};
