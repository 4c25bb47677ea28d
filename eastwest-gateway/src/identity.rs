//! The gateway's own certificate (files or the cluster CA), and what it
//! reads from a verified peer: the source cluster of a tunnel.
//!
//! With files, the chain, key and bundle are watched (polled every second)
//! and swapped in place when they change (`strait_ca::reload`): new
//! handshakes use the new certificate and roots, open tunnels keep theirs;
//! bad files are refused with a log line and the current identity stays.

use rustls::pki_types::CertificateDer;
use strait_ca::identity::IdentityError;
use strait_ca::{CertStore, SharedBundle};
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::gateway::StartError;

/// The label used when a peer's chain names no cluster.
pub const UNKNOWN_CLUSTER: &str = "unknown";

/// Loads the certificate store and trust bundle, and starts the task that
/// keeps them current (file reload, or renewal from the CA), pushed to `tasks`.
pub async fn load(
    cfg: &GatewayConfig,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(CertStore, SharedBundle), StartError> {
    let (certs, bundle, task) =
        cfg.identity
            .start(&cfg.trust_domain)
            .await
            .map_err(|e| match e {
                IdentityError::Read { path, reason } => StartError::File { path, reason },
                e => StartError::Identity(e.to_string()),
            })?;
    tasks.push(task);
    Ok((certs, bundle))
}

/// The cluster a verified peer belongs to ([`strait_ca::tls::peer_cluster`]),
/// or [`UNKNOWN_CLUSTER`] when its chain names none.
pub fn source_cluster(peer: Option<&[CertificateDer<'_>]>) -> String {
    strait_ca::tls::peer_cluster(peer)
        .map_or_else(|| UNKNOWN_CLUSTER.to_owned(), |c| c.as_str().to_owned())
}
