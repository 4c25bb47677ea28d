//! Catalog sync between linked controllers.
//!
//! The exporter keeps one [`export::ExportLog`]: every exported service
//! with the version at which it last changed, plus tombstones. A peer
//! subscribes with the (epoch, version) it last applied and gets only what
//! changed since (removals included), or a full resend when the log cannot
//! answer (new epoch after a restart, tombstones compacted). Per peer the
//! exporter holds just that position: no queue, so memory per peer is
//! bounded. Heartbeats renew the importer's lease.
//!
//! The importer ([`import`]) applies updates idempotently, refuses entries a
//! peer claims for another cluster, caps what one peer may send, and on
//! lease expiry marks the peer's services stale (`fail-static`) or
//! withdraws them (`fail-closed`).

use std::time::Duration;

pub mod convert;
pub mod export;
pub mod import;
pub mod server;

/// Timing and limits of catalog sync.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often an exporter sends a heartbeat on an idle stream.
    pub heartbeat: Duration,
    /// How long imported data stays fresh without any message.
    pub lease: Duration,
    /// Most services one peer may export to us.
    pub max_services_per_peer: usize,
    /// Most endpoints one imported service may have.
    pub max_endpoints_per_service: usize,
    /// Most bytes of partial (chunked) updates buffered before a version
    /// is complete; a peer sending more is refused.
    pub max_pending_bytes: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            max_services_per_peer: 5_000,
            max_endpoints_per_service: 1_000,
            max_pending_bytes: 64 * 1024 * 1024,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Services per message in a full resend.
pub const CHUNK: usize = 100;
/// Largest sync message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
