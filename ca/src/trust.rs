//! What a component trusts and presents now, for rotation confirmations:
//! the SHA-256 fingerprints of its trusted roots, and of the trusted root
//! its own certificate chains to. Sidecars, gateways and controllers serve
//! a [`TrustReport`] as JSON on their admin port (`/trust`).

use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::tls::CertStore;
use crate::verify::{SharedBundle, TrustBundle, Usage};

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A component's trust, as `/trust` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustReport {
    /// The SPIFFE ID of the certificate it presents (none before it has one).
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// How many roots it trusts (2 during a root rotation).
    pub trusted_roots: usize,
    /// SHA-256 fingerprints of the trusted roots, in bundle order.
    pub roots: Vec<String>,
    /// Fingerprint of the trusted root its own chain verifies against
    /// (none: no certificate, or it chains to no trusted root).
    #[serde(default)]
    pub presented_root: Option<String>,
    /// The chain it presents (PEM, leaf first): public, like every TLS
    /// handshake shows it; `strait check` reads its expiry from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl TrustReport {
    /// The report of a component holding `certs` and `bundle` now.
    pub fn of(certs: &CertStore, bundle: &SharedBundle) -> Self {
        let bundle = bundle.get();
        let ck = certs.current();
        let chain: &[CertificateDer<'static>] = ck.as_ref().map_or(&[], |ck| &ck.cert);
        Self {
            spiffe_id: certs.identity().map(|id| id.to_string()),
            trusted_roots: bundle.roots().len(),
            roots: bundle.roots().iter().map(|r| fingerprint(r)).collect(),
            presented_root: chains_to(&bundle, chain).map(|r| fingerprint(&r)),
            chain: (!chain.is_empty()).then(|| crate::pem::encode_certs(chain)),
        }
    }

    /// A report of roots and the presented root by fingerprint only (no
    /// identity, no chain): what other components are compared against.
    pub fn of_fingerprints(roots: Vec<String>, presented_root: Option<String>) -> Self {
        Self {
            spiffe_id: None,
            trusted_roots: roots.len(),
            roots,
            presented_root,
            chain: None,
        }
    }

    /// Whether the root with fingerprint `fp` is trusted.
    pub fn trusts(&self, fp: &str) -> bool {
        self.roots.iter().any(|r| r == fp)
    }

    /// Pretty JSON with a trailing newline, for admin endpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// The root of `bundle` that `chain` (leaf first) verifies against now.
pub fn chains_to(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
) -> Option<CertificateDer<'static>> {
    if chain.is_empty() {
        return None;
    }
    let now = UnixTime::now();
    bundle.roots().iter().find_map(|root| {
        let one = TrustBundle::new(bundle.trust_domain().clone(), vec![root.clone()]).ok()?;
        let ok = [Usage::Server, Usage::Client]
            .into_iter()
            .any(|u| one.verify(chain, now, u).is_ok());
        ok.then(|| root.clone())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use strait_api::{ClusterName, TrustDomain};

    use super::*;
    use crate::Authority;

    #[test]
    fn report_names_the_root_the_presented_chain_verifies_against() {
        let td = TrustDomain::new("strait.local").unwrap();
        let day = Duration::from_secs(86400);
        let (old, _) = Authority::new_root(&td, day).unwrap();
        let (new, _) = Authority::new_root(&td, day).unwrap();
        let (int, _) = new
            .new_intermediate(&ClusterName::new("east").unwrap(), day)
            .unwrap();
        let id = td.workload_id("demo", "web").unwrap();
        let (issued, key) = int.issue_with_new_key(&id, day).unwrap();
        let chain = crate::pem::encode_certs([&issued.cert, int.cert()]);
        let certs = CertStore::from_pem(&chain, &key).unwrap();
        let both = TrustBundle::new(td.clone(), vec![old.cert().clone(), new.cert().clone()]);
        let bundle = SharedBundle::new(both.unwrap());

        let r = TrustReport::of(&certs, &bundle);
        assert_eq!(r.trusted_roots, 2);
        assert_eq!(r.roots, [fingerprint(old.cert()), fingerprint(new.cert())]);
        assert_eq!(r.presented_root, Some(fingerprint(new.cert())));
        assert_eq!(r.spiffe_id.as_deref(), Some(id.as_str()));
        assert!(r.trusts(&fingerprint(old.cert())));

        // Trusting only the old root: the chain verifies against nothing.
        bundle.set(TrustBundle::new(td, vec![old.cert().clone()]).unwrap());
        let r = TrustReport::of(&certs, &bundle);
        assert_eq!(r.trusted_roots, 1);
        assert_eq!(r.presented_root, None);
        let back: TrustReport = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert_eq!(fingerprint(b"").len(), 64);
    }
}
