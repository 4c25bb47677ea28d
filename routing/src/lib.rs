//! Strait's routing decisions: where a request or connection goes and
//! whether it may pass, as pure functions over a
//! [`strait_api::snapshot::Snapshot`].
//!
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
//! There are no sockets, TLS, timers or clocks here. Time comes in as an
//! [`std::time::Instant`] argument and randomness through
//! [`balance::Random`], so every decision is reproducible in a table test.
//! The sidecar (`strait-proxy`) executes these decisions; the controller's
//! status ("who serves and why") and the DNS server use the same ones.

pub mod authz;
pub mod balance;
pub mod locality;
pub mod outlier;
pub mod path;
pub mod retry;
pub mod route;
