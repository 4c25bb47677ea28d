//! The gateway's own certificate (files or the cluster CA), and what it
//! reads from a verified peer: the source cluster of a tunnel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use strait_ca::manager::{CertManager, GrpcSigner, RenewPolicy};
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

/// Loads the certificate store and trust bundle; with a CA source, also
/// starts the renewal task (pushed to `tasks`).
pub async fn load(
    cfg: &GatewayConfig,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(CertStore, SharedBundle), StartError> {
    let td = cfg.trust_domain.clone();
    match &cfg.identity {
        IdentitySource::Files { chain, key, bundle } => {
            let certs =
                CertStore::from_pem(&read(chain)?, &read(key)?).map_err(|e| bad(chain, e))?;
            let b = TrustBundle::from_pem(td, &read(bundle)?).map_err(|e| bad(bundle, e))?;
            Ok((certs, SharedBundle::new(b)))
        }
        IdentitySource::Ca {
            address,
            spiffe_id,
            token_file,
            bundle,
        } => {
            let b = TrustBundle::from_pem(td, &read(bundle)?).map_err(|e| bad(bundle, e))?;
            let bundle = SharedBundle::new(b);
            let signer = Arc::new(GrpcSigner {
                addr: *address,
                bundle: bundle.clone(),
                bootstrap_token: read(token_file)?.trim().to_owned(),
                ttl: None,
            });
            let mgr = Arc::new(
                CertManager::new(spiffe_id.clone(), signer, RenewPolicy::default())
                    .with_bundle(bundle.clone()),
            );
            let mut delay = Duration::from_millis(200);
            let mut last = String::new();
            for _ in 0..6 {
                match mgr.renew_once().await {
                    Ok(_) => break,
                    Err(e) => {
                        last = e.to_string();
                        tracing::warn!(error = %e, "first certificate not issued yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            if mgr.store().current().is_none() {
                return Err(StartError::Identity(format!(
                    "the CA at {address} did not issue a certificate: {last}"
                )));
            }
            let certs = mgr.store();
            tasks.push(tokio::spawn(mgr.run()));
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
