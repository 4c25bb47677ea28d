//! The Strait sidecar proxy: listeners, mTLS, HTTP/1.1, HTTP/2, gRPC and
//! TCP forwarding that executes the routing decisions of `strait-routing`.
//!
//! - outbound ([`outbound`], [`forward`], [`router`]): the app's requests
//!   arrive on a service VIP or the explicit proxy port; the router picks an
//!   endpoint (locality plan, balancing, outlier ejection, retries) and
//!   sends the request over a pooled mTLS HTTP/2 connection to the
//!   destination sidecar, directly or in a `CONNECT` tunnel through the
//!   serving cluster's east-west gateway ([`transport`], [`tunnel`]);
//! - inbound ([`inbound`]): verifies the caller's SPIFFE ID, authorizes the
//!   request, replaces identity headers and forwards to the app ([`app`]);
//! - capture ([`capture`]): connections nftables redirected to the sidecar
//!   find their original destination and join the VIP path;
//! - [`admin`]: `/metrics`, `/ready`, `/live`, `/config`, `/trust`.
//!
//! The decisions themselves (`locality`, `balance`, `outlier`, `retry`,
//! `authz`, `route`) are pure functions in `strait-routing`, re-exported
//! here under their old paths.

pub mod access;
pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
mod copy;
pub mod egress;
pub mod forward;
pub mod h2client;
mod h2stream;
pub mod headers;
pub mod inbound;
pub mod metrics;
mod observe;
pub mod outbound;
mod proxy;
pub mod router;
pub mod sniff;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod tunnel;
pub mod upgrade;

pub use config::ProxyConfig;
pub use proxy::{Proxy, StartError};
pub use strait_routing::{authz, balance, locality, outlier, path, retry, route};
