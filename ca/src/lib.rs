//! Strait's certificate authority and the trust layer every component uses.
//!
//! - [`authority`]: make the mesh root, per-cluster intermediates and
//!   short-lived workload certificates (rcgen).
//! - [`store`]: the CA directory on disk (keys 0600, atomic writes).
//! - [`csr`] and [`token`]: what the signing service checks before it signs.
//! - [`server`] / [`client`]: the gRPC signing service and its client;
//!   [`follow`]: the running service picks up a rotated CA directory.
//! - [`verify`] and [`tls`]: chain + SPIFFE identity verification and the
//!   rustls configs proxies, gateways and controllers use.
//! - [`manager`]: the workload-side `CertManager` that renews at 2/3 of
//!   the certificate's life; [`reload`]: hot reload of identity files.
//! - [`trust`]: what a component trusts and presents (`/trust` on admin
//!   ports); [`metrics`]: the signing service's metrics and admin port;
//!   [`rotation`]: staged root rotation of a CA directory and the
//!   certificate directories it issued.
//! - [`pipe`]: moving bytes on mesh hops (the tunnel pump and TLS write
//!   batching), shared by the sidecar and the gateway.
//!
//! It is not a general-purpose PKI: it issues SPIFFE X.509-SVIDs for one
//! trust domain, nothing else.

pub mod admin_http;
pub mod authority;
pub mod client;
pub mod csr;
mod der;
pub mod dial;
mod error;
pub mod follow;
pub mod identity;
pub mod manager;
pub mod metrics;
pub mod pem;
pub mod pipe;
pub mod reload;
pub mod rotation;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;
pub mod tokenreview;
pub mod trust;
pub mod verify;

pub use authority::Authority;
pub use error::CaError;
pub use manager::CertManager;
pub use store::CaDir;
pub use tls::CertStore;
pub use verify::{SharedBundle, TrustBundle, VerifyError};
