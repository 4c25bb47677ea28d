//! A running CA service that follows its CA directory.
//!
//! `strait ca rotate` changes the CA directory while `strait ca serve`
//! runs: `add` writes old + new root into `bundle.pem`, `reissue` installs
//! a new intermediate per cluster, `drop` leaves only the new root. [`follow`]
//! polls those two files and swaps them into the service without a
//! restart: the bundle the service trusts and hands out, the intermediate it
//! signs with, and the service's own TLS certificate (re-issued under the
//! new intermediate, so workloads that trust only the new root still reach
//! it). Workloads learn of the change through the `TrustBundle` RPC
//! ([`crate::manager`] polls it). A half-written pair (new certificate, old
//! key) is refused and retried on the next tick; the current issuer stays.

use std::time::{Duration, SystemTime};

use strait_api::ClusterName;

use crate::authority::Authority;
use crate::server::{CaService, server_identity};
use crate::{CaDir, CaError, CertStore};

/// How long the service's own certificate lives; it is re-issued at 2/3.
const SERVER_CERT_TTL: Duration = Duration::from_secs(30 * 86400);

/// The service's own certificate (identity [`server_identity`]) under
/// `authority`, with a fresh key, and when it expires.
pub fn server_cert(authority: &Authority) -> Result<(CertStore, SystemTime), CaError> {
    let store = CertStore::empty();
    let not_after = reissue_server_cert(authority, &store)?;
    Ok((store, not_after))
}

fn reissue_server_cert(authority: &Authority, store: &CertStore) -> Result<SystemTime, CaError> {
    let id = server_identity(authority.trust_domain());
    let (issued, key_pem) = authority.issue_with_new_key(&id, SERVER_CERT_TTL)?;
    let chain = crate::pem::encode_certs([&issued.cert, authority.cert()]);
    let fresh = CertStore::from_pem(&chain, &key_pem)
        .map_err(|e| CaError::Certificate(format!("own certificate: {e}")))?;
    let current = fresh
        .current()
        .ok_or_else(|| CaError::Certificate("own certificate: empty store".into()))?;
    store.set_certified(current);
    Ok(SystemTime::from(issued.not_after))
}

/// What [`follow`] last loaded.
struct Seen {
    bundle: Vec<u8>,
    intermediate: Vec<u8>,
    /// The last intermediate refused (warned about once).
    refused: Vec<u8>,
    server_not_after: SystemTime,
}

/// Follows `dir` for `cluster` every `interval`, forever (abort the task
/// to stop). `server` is the store the service's TLS acceptor reads.
pub async fn follow(
    service: CaService,
    dir: CaDir,
    cluster: ClusterName,
    server: CertStore,
    server_not_after: SystemTime,
    interval: Duration,
) {
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap_or_default();
    let intermediate_path = dir.cluster_dir(&cluster).join("intermediate.pem");
    let mut seen = Seen {
        bundle: read(dir.bundle_path()),
        intermediate: read(intermediate_path.clone()),
        refused: Vec::new(),
        server_not_after,
    };
    loop {
        tokio::time::sleep(interval).await;
        let bundle = read(dir.bundle_path());
        if bundle != seen.bundle {
            match dir.bundle() {
                Ok(b) => {
                    tracing::info!(
                        roots = b.roots().len(),
                        "CA trust bundle changed; serving the new one"
                    );
                    service.bundle().set(b);
                    seen.bundle = bundle;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CA trust bundle changed but is unusable; keeping the current one")
                }
            }
        }
        let intermediate = read(intermediate_path.clone());
        let renew_own = SystemTime::now() + SERVER_CERT_TTL / 3 > seen.server_not_after;
        if intermediate != seen.intermediate || renew_own {
            match dir.intermediate(&cluster) {
                Ok(authority) => match reissue_server_cert(&authority, &server) {
                    Ok(not_after) => {
                        if intermediate != seen.intermediate {
                            tracing::info!(%cluster, "new intermediate installed; signing with it");
                        }
                        service.replace_issuer(authority);
                        seen.intermediate = intermediate;
                        seen.server_not_after = not_after;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-issue the CA's own certificate")
                    }
                },
                // Certificate and key are written one after the other:
                // a mismatch is a half-written pair, retried quietly.
                Err(CaError::KeyMismatch) => {
                    tracing::debug!("intermediate and key do not match yet; retrying");
                }
                Err(e) => {
                    if seen.refused != intermediate {
                        tracing::warn!(error = %e, "new intermediate refused; signing with the current one");
                        seen.refused = intermediate;
                    }
                }
            }
        }
    }
}
