//! The gateway's own certificate (files or the cluster CA), and what it
//! reads from a verified peer: the source cluster of a tunnel.
//!
//! With files, the chain, key and bundle are watched (polled every second)
//! and swapped in place when they change (`strait_ca::reload`): new
//! handshakes use the new certificate and roots, open tunnels keep theirs;
//! bad files are refused with a log line and the current identity stays.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use strait_ca::reload::IdentityFiles;
use strait_ca::{CertStore, SharedBundle, TrustBundle};
use tokio::task::JoinHandle;
use x509_parser::prelude::FromDer;

use crate::config::{GatewayConfig, IdentitySource};
use crate::gateway::StartError;

/// The label used when a peer's chain names no cluster.
pub const UNKNOWN_CLUSTER: &str = "unknown";

fn read(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| StartError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn bad(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::Identity(format!("{}: {e}", path.display()))
}

/// Loads the certificate store and trust bundle, and starts the task that
/// keeps them current (file reload, or renewal from the CA), pushed to `tasks`.
pub async fn load(
    cfg: &GatewayConfig,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(CertStore, SharedBundle), StartError> {
    let td = cfg.trust_domain.clone();
    match &cfg.identity {
        IdentitySource::Files { chain, key, bundle } => {
            // The same checks as every later reload; the identity found is
            // the only one a reload accepts (a reload never changes who the
            // gateway is).
            let (certs, b, files) =
                IdentityFiles::new(chain.clone(), key.clone(), bundle.clone(), td)
                    .start()
                    .map_err(|e| StartError::Identity(e.to_string()))?;
            tasks.push(tokio::spawn(strait_ca::reload::watch(
                files,
                certs.clone(),
                b.clone(),
            )));
            Ok((certs, b))
        }
        IdentitySource::Ca {
            address,
            spiffe_id,
            token_file,
            bundle,
        } => {
            let b = TrustBundle::from_pem(td, &read(bundle)?).map_err(|e| bad(bundle, e))?;
            let bundle = SharedBundle::new(b);
            let token = read(token_file)?.trim().to_owned();
            let (certs, renew) =
                strait_ca::manager::bootstrap(*address, spiffe_id.clone(), token, bundle.clone())
                    .await
                    .map_err(|e| {
                        StartError::Identity(format!(
                            "the CA at {address} did not issue a certificate: {e}"
                        ))
                    })?;
            tasks.push(renew);
            Ok((certs, bundle))
        }
    }
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
