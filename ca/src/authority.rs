//! Making certificates: the mesh root, per-cluster intermediates and
//! workload certificates (X.509-SVIDs).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use time::OffsetDateTime;

use crate::csr::CheckedCsr;
use crate::{CaError, der};

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime the CA grants a workload certificate.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default lifetime of the root.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a cluster intermediate.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long in the past, to absorb clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Pem").field("key", &"<redacted>").finish()
    }
}

/// A signing CA (the root or a cluster's intermediate) held in memory.
pub struct Authority {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A newly issued leaf certificate.
#[derive(Debug)]
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Authority {
    /// Makes a new self-signed root for `trust_domain` (ECDSA P-256), with a
    /// critical name constraint that permits only URIs in the trust domain.
    pub fn new_root(trust_domain: &TrustDomain, ttl: Duration) -> Result<(Self, Pem), CaError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            format!("Strait root CA {trust_domain}"),
            ttl,
            BasicConstraints::Unconstrained,
        )?;
        let mut nc = CustomExtension::from_oid_content(
            der::NAME_CONSTRAINTS_OID,
            der::uri_name_constraints(trust_domain.as_str()),
        );
        nc.set_criticality(true);
        params.custom_extensions.push(nc);
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        let not_after = params.not_after;
        Ok((
            Self {
                cert: cert.der().clone(),
                issuer: Issuer::new(params, key),
                not_after,
                trust_domain: trust_domain.clone(),
            },
            pem,
        ))
    }

    /// Loads a CA from its certificate and PKCS#8 key (PEM). Checks that the
    /// certificate is a CA and that the key belongs to it.
    pub fn from_pem(
        trust_domain: &TrustDomain,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        let cert = crate::pem::one_cert(cert_pem)
            .ok_or_else(|| CaError::Certificate("no CERTIFICATE block in PEM".into()))?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| CaError::Certificate(format!("cannot parse: {e}")))?;
        if !x509.is_ca() {
            return Err(CaError::Certificate(
                "not a CA certificate (basicConstraints cA is not set)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Certificate(format!("CA expired at {not_after}")));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self {
            cert,
            issuer,
            not_after,
            trust_domain: trust_domain.clone(),
        })
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs an intermediate CA for one cluster (path length 0: it may sign
    /// only leaves). Its life is capped at this CA's.
    pub fn new_intermediate(
        &self,
        cluster: &ClusterName,
        ttl: Duration,
    ) -> Result<(Self, Pem), CaError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            format!("Strait intermediate CA {cluster}"),
            ttl,
            BasicConstraints::Constrained(0),
        )?;
        params.not_after = params.not_after.min(self.not_after);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, cluster.as_str());
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        let not_after = params.not_after;
        Ok((
            Self {
                cert: cert.der().clone(),
                issuer: Issuer::new(params, key),
                not_after,
                trust_domain: self.trust_domain.clone(),
            },
            pem,
        ))
    }

    /// Issues a workload certificate with a fresh key (offline issuance).
    pub fn issue_with_new_key(
        &self,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate()?;
        let params = self.workload_params(id, ttl)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: cert.der().clone(),
            not_before: params.not_before,
            not_after: params.not_after,
        };
        Ok((issued, key.serialize_pem()))
    }

    /// Issues a workload certificate for a CSR that [`crate::csr::check`]
    /// validated. Only the key is taken from the CSR: every other field is
    /// set by the CA.
    pub fn issue_for_csr(&self, csr: CheckedCsr, ttl: Duration) -> Result<Issued, CaError> {
        let (id, mut csr) = csr.into_params();
        csr.params = self.workload_params(&id, ttl)?;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(Issued {
            cert: cert.der().clone(),
            not_before: csr.params.not_before,
            not_after: csr.params.not_after,
        })
    }

    fn workload_params(&self, id: &SpiffeId, ttl: Duration) -> Result<CertificateParams, CaError> {
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return Err(CaError::Certificate(format!(
                "{id} is outside trust domain {}",
                self.trust_domain
            )));
        }
        if ttl.is_zero() || ttl > MAX_WORKLOAD_TTL {
            return Err(CaError::Lifetime(format!(
                "workload lifetime must be between 1s and {}h, got {}s",
                MAX_WORKLOAD_TTL.as_secs() / 3600,
                ttl.as_secs()
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Strait");
        params.distinguished_name = dn;
        let uri = id
            .as_str()
            .to_owned()
            .try_into()
            .map_err(|_| CaError::Certificate(format!("{id} is not an IA5 string")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        // A leaf never outlives its issuer.
        params.not_after = (now + ttl).min(self.not_after);
        Ok(params)
    }
}

/// Whether `cert` is fit to be `cluster`'s intermediate: a CA with path
/// length 0 (it may sign only leaves) and exactly one organizational unit,
/// the cluster's name. Peers read a caller's cluster from that OU, so an
/// intermediate naming another cluster (or two) would make this cluster's
/// workloads pass for another's.
pub fn check_intermediate(cert: &CertificateDer<'_>, cluster: &ClusterName) -> Result<(), String> {
    let (_, x) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("cannot parse: {e}"))?;
    match x.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca && bc.value.path_len_constraint == Some(0) => {}
        Ok(Some(bc)) if bc.value.ca => {
            return Err(format!(
                "path length {} (an intermediate must have path length 0: it may sign only workload certificates)",
                bc.value
                    .path_len_constraint
                    .map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
            ));
        }
        _ => return Err("not a CA certificate (basicConstraints cA is not set)".into()),
    }
    let ous: Vec<&str> = x
        .subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .collect();
    match ous.as_slice() {
        [one] if *one == cluster.as_str() => Ok(()),
        [one] => Err(format!(
            "it names cluster {one:?} (its OU), not {cluster}: peers would take its certificates for {one:?}'s"
        )),
        [] => Err(format!(
            "its subject has no OU naming the cluster (want OU={cluster})"
        )),
        many => Err(format!(
            "its subject has {} OUs ({}); a Strait intermediate has exactly one, the cluster's name",
            many.len(),
            many.join(", ")
        )),
    }
}

fn ca_params(
    common_name: String,
    ttl: Duration,
    constraints: BasicConstraints,
) -> Result<CertificateParams, CaError> {
    if ttl < Duration::from_secs(3600) {
        return Err(CaError::Lifetime(format!(
            "a CA must live at least one hour, got {}s",
            ttl.as_secs()
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strait");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intermediate_must_name_its_cluster_once_and_sign_only_leaves() {
        let td = TrustDomain::new("strait.local").unwrap();
        let day = Duration::from_secs(86400);
        let (root, _) = Authority::new_root(&td, day).unwrap();
        let (east, west) = (
            ClusterName::new("east").unwrap(),
            ClusterName::new("west").unwrap(),
        );
        let made = |constraints, ous: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let mut p = ca_params("test".into(), day, constraints).unwrap();
            for ou in ous {
                p.distinguished_name
                    .push(DnType::OrganizationalUnitName, *ou);
            }
            p.signed_by(&key, &root.issuer).unwrap().der().clone()
        };
        let (good, _) = root.new_intermediate(&east, day).unwrap();
        for (what, cert, cluster, want) in [
            ("strait's own", good.cert().clone(), &east, None),
            (
                "another cluster's",
                good.cert().clone(),
                &west,
                Some("names cluster \"east\""),
            ),
            (
                "unlimited path length",
                made(BasicConstraints::Unconstrained, &["east"]),
                &east,
                Some("path length unlimited"),
            ),
            (
                "path length 1",
                made(BasicConstraints::Constrained(1), &["east"]),
                &east,
                Some("path length 1"),
            ),
            (
                "no OU",
                made(BasicConstraints::Constrained(0), &[]),
                &east,
                Some("no OU"),
            ),
            (
                "a root",
                root.cert().clone(),
                &east,
                Some("path length unlimited"),
            ),
        ] {
            let got = check_intermediate(&cert, cluster);
            match want {
                None => assert_eq!(got, Ok(()), "{what}"),
                Some(w) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(w)),
                    "{what}: {got:?}"
                ),
            }
        }
    }
}
