//! The certificate directories a CA issued (`strait ca issue`, `strait
//! cluster up`, the scenario mesh): where they are, and what each holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use strait_api::{ClusterName, SpiffeId};
use x509_parser::prelude::FromDer;

use super::RotationError;
use crate::authority::MAX_WORKLOAD_TTL;

/// Every directory under `root` (itself included) that holds `chain.pem`
/// and `key.pem`, sorted. Hidden directories are skipped.
pub fn find(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        if d.join("chain.pem").is_file() && d.join("key.pem").is_file() {
            out.push(d.clone());
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if p.is_dir() && !hidden {
                stack.push(p);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What one certificate directory holds.
#[derive(Debug, Clone)]
pub struct CertDir {
    pub dir: PathBuf,
    pub id: SpiffeId,
    /// The cluster of the intermediate that signed it (its OU).
    pub cluster: ClusterName,
    /// The lifetime it was issued with (re-issued with the same).
    pub lifetime: Duration,
    /// The chain in `chain.pem`, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

impl CertDir {
    /// Reads `dir/chain.pem`.
    pub fn read(dir: &Path) -> Result<Self, RotationError> {
        let bad = |reason: String| RotationError::CertDir {
            path: dir.join("chain.pem"),
            reason,
        };
        let pem = std::fs::read_to_string(dir.join("chain.pem")).map_err(|e| bad(e.to_string()))?;
        let chain = crate::pem::certs(&pem);
        let leaf = chain
            .first()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?;
        let id = crate::verify::spiffe_id_of(leaf).map_err(|e| bad(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| bad(e.to_string()))?;
        let cluster = cert
            .issuer()
            .iter_organizational_unit()
            .next()
            .and_then(|ou| ou.as_str().ok())
            .and_then(|s| ClusterName::new(s).ok())
            .ok_or_else(|| {
                bad("its issuer names no cluster (not issued by a Strait intermediate)".into())
            })?;
        let v = cert.validity();
        let secs = (v.not_after.timestamp() - v.not_before.timestamp()).max(0);
        // Issued certificates start 5 minutes in the past (clock skew).
        let lifetime = Duration::from_secs(u64::try_from(secs).unwrap_or(0).saturating_sub(300))
            .clamp(Duration::from_secs(3600), MAX_WORKLOAD_TTL);
        Ok(Self {
            dir: dir.to_owned(),
            id,
            cluster,
            lifetime,
            chain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaDir;
    use strait_api::TrustDomain;

    #[test]
    fn finds_issued_directories_and_reads_identity_cluster_and_lifetime() {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("strait.local").unwrap();
        let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
        let west = ClusterName::new("west").unwrap();
        ca.new_intermediate(&west, Duration::from_secs(86400))
            .unwrap();
        let id = td.workload_id("demo", "echo").unwrap();
        let certs = tmp.path().join("certs");
        for tag in ["west/echo-0", "west/gateway-0", ".hidden/x"] {
            ca.issue(&west, &id, Duration::from_secs(7200), &certs.join(tag))
                .unwrap();
        }
        let found = find(&certs);
        assert_eq!(
            found,
            [certs.join("west/echo-0"), certs.join("west/gateway-0")]
        );
        assert!(
            find(&tmp.path().join("ca")).is_empty(),
            "a CA dir is not one"
        );
        let d = CertDir::read(&found[0]).unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.cluster, west);
        assert_eq!(d.lifetime, Duration::from_secs(7200));
        assert_eq!(d.chain.len(), 2);
        std::fs::write(found[1].join("chain.pem"), "nope").unwrap();
        let err = CertDir::read(&found[1]).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
    }
}
