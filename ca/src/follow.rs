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
use rustls::pki_types::CertificateDer;

use crate::server::{CaService, server_identity};
use crate::{CaDir, CaError, CertStore};

/// How long the service's own certificate lives; it is re-issued at 2/3.
const SERVER_CERT_TTL: Duration = Duration::from_secs(30 * 86400);

/// The service's own certificate (identity [`server_identity`]) under
/// `authority`, with a fresh key, and when it expires.
pub fn server_cert(authority: &Authority) -> Result<(CertStore, SystemTime), CaError> {
    let id = server_identity(authority.trust_domain());
    let (issued, key_pem) = authority.issue_with_new_key(&id, SERVER_CERT_TTL)?;
    let chain = crate::pem::encode_certs([&issued.cert, authority.cert()]);
    let store = CertStore::from_pem(&chain, &key_pem)
        .map_err(|e| CaError::Certificate(format!("own certificate: {e}")))?;
    Ok((store, SystemTime::from(issued.not_after)))
}

/// The chain `store` presents now.
fn chain_of(store: &CertStore) -> Vec<CertificateDer<'static>> {
    store
        .current()
        .map(|ck| ck.cert.clone())
        .unwrap_or_default()
}

/// What [`follow`] last loaded, and last refused (each warned about once).
#[derive(Default)]
struct Seen {
    /// The bundle file's bytes whose roots the service holds (so an
    /// unchanged file is not parsed every tick; the intermediate is
    /// compared with the service's own).
    bundle: Vec<u8>,
    refused_bundle: Vec<u8>,
    refused_intermediate: Vec<u8>,
}

/// Logs `why` at warn the first time `bytes` are refused.
fn refuse_once(last: &mut Vec<u8>, bytes: &[u8], why: &str) {
    if last.as_slice() != bytes {
        tracing::warn!("{why}");
        *last = bytes.to_vec();
    }
}

/// Follows `dir` for `cluster` every `interval`, forever (abort the task
/// to stop). `server` is the store the service's TLS acceptor reads.
///
/// Nothing is installed that would cut workloads off: a bundle under which
/// the service's own certificate does not verify, or an intermediate that
/// chains to no root of the bundle, is refused (warned once) and the
/// current one stays. The own certificate is re-issued by the current
/// issuer before a third of its life is left.
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
    // Compared with what the service holds, not with the files at start:
    // a rotation that wrote them after the caller read them is picked up.
    let mut seen = Seen::default();
    let mut own_until = server_not_after;
    loop {
        tokio::time::sleep(interval).await;
        let bundle = read(dir.bundle_path());
        if bundle != seen.bundle && bundle != seen.refused_bundle {
            match dir.bundle() {
                // Same roots, other bytes (or the start): nothing to do.
                Ok(b) if b.roots() == service.bundle().get().roots() => seen.bundle = bundle,
                Ok(b) if crate::trust::chains_to(&b, &chain_of(&server)).is_some() => {
                    tracing::info!(
                        roots = b.roots().len(),
                        "CA trust bundle changed; serving the new one"
                    );
                    service.bundle().set(b);
                    seen.bundle = bundle;
                }
                Ok(_) => refuse_once(
                    &mut seen.refused_bundle,
                    &bundle,
                    "the new bundle.pem does not hold the root of the CA's own certificate (every workload would lose the CA); keeping the current bundle",
                ),
                Err(e) => refuse_once(
                    &mut seen.refused_bundle,
                    &bundle,
                    &format!("the new bundle.pem is unusable ({e}); keeping the current bundle"),
                ),
            }
        }
        let intermediate = read(intermediate_path.clone());
        let same = crate::pem::one_cert(&String::from_utf8_lossy(&intermediate))
            .is_some_and(|c| c == service.issuer_cert());
        if !same && intermediate != seen.refused_intermediate {
            match dir.intermediate(&cluster) {
                Ok(authority) => match server_cert(&authority) {
                    Ok((fresh, until))
                        if crate::trust::chains_to(&service.bundle().get(), &chain_of(&fresh))
                            .is_some() =>
                    {
                        tracing::info!(%cluster, "new intermediate installed; signing with it");
                        if let Some(ck) = fresh.current() {
                            server.set_certified(ck);
                        }
                        service.replace_issuer(authority);
                        own_until = until;
                    }
                    Ok(_) => refuse_once(
                        &mut seen.refused_intermediate,
                        &intermediate,
                        "the new intermediate chains to no root of the bundle; signing with the current one",
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot issue the CA's own certificate under the new intermediate")
                    }
                },
                // Certificate and key are written one after the other:
                // a mismatch is a half-written pair, retried quietly.
                Err(CaError::KeyMismatch) => {
                    tracing::debug!("intermediate and key do not match yet; retrying");
                }
                Err(e) => refuse_once(
                    &mut seen.refused_intermediate,
                    &intermediate,
                    &format!("new intermediate refused ({e}); signing with the current one"),
                ),
            }
        }
        if SystemTime::now() + SERVER_CERT_TTL / 3 > own_until {
            match service.issue_own_cert() {
                Ok((fresh, until)) => {
                    if let Some(ck) = fresh.current() {
                        server.set_certified(ck);
                    }
                    own_until = until;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the CA's own certificate"),
            }
        }
    }
}
