//! The Strait sidecar proxy's decision layer.
//!
//! What it is: pure functions and small state machines over a
//! [`strait_api::snapshot::Snapshot`] that decide where a request or
//! connection goes and whether it may pass:
//! - [`locality`]: priority tiers (zone, region, failover order), the
//!   overprovisioning spill, `distribute` weights, stale and panic fallbacks,
//!   with a [`locality::Reason`] that `strait status` can show;
//! - [`balance`]: power of two choices over peak-EWMA latency, round robin,
//!   least connections for TCP;
//! - [`outlier`]: passive ejection after consecutive failures;
//! - [`retry`]: retry budgets, retryability and "another endpoint";
//! - [`authz`]: authorization policies over normalized HTTP paths;
//! - [`route`]: the per-request (or per-connection) entry point: VIP and
//!   port to service, plan, endpoint and hop (direct or through a gateway).
//!
//! What it is not: there are no sockets, TLS, timers or clocks here. Time
//! comes in as an [`std::time::Instant`] argument and randomness through
//! [`balance::Random`], so every decision is reproducible in a table test.
//! The I/O layer (listeners, mTLS, HTTP/2 CONNECT tunnels) executes these
//! decisions and lives elsewhere.

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod config;
mod copy;
pub mod forward;
pub mod h2client;
mod h2stream;
pub mod headers;
pub mod inbound;
pub mod locality;
pub mod metrics;
pub mod outbound;
pub mod outlier;
mod proxy;
pub mod retry;
pub mod route;
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
