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
use x509_parser::prelude::FromDer;

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

/// The cluster a verified peer belongs to: the organizational unit of its
/// leaf's issuer (Strait intermediates carry the cluster name there). The
/// chain was verified in the handshake, so the issuer name is the verified
/// intermediate's subject.
pub fn source_cluster(peer: Option<&[CertificateDer<'_>]>) -> String {
    let Some(leaf) = peer.and_then(|c| c.first()) else {
        return UNKNOWN_CLUSTER.to_owned();
    };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf) else {
        return UNKNOWN_CLUSTER.to_owned();
    };
    cert.issuer()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .filter(|s| strait_api::ClusterName::new(s).is_ok())
        .map_or_else(|| UNKNOWN_CLUSTER.to_owned(), str::to_owned)
}
