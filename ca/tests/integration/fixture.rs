//! A CA directory with one cluster intermediate, and hostile-cert helpers.

use std::time::Duration;

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::CaDir;
use time::OffsetDateTime;

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub ca: CaDir,
    pub cluster: ClusterName,
}

pub fn td() -> TrustDomain {
    TrustDomain::new("strait.local").unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CaDir::init(
        &dir.path().join("ca"),
        &td(),
        Duration::from_secs(86400 * 30),
    )
    .unwrap();
    let cluster = ClusterName::new("east").unwrap();
    ca.new_intermediate(&cluster, Duration::from_secs(86400 * 7))
        .unwrap();
    Fixture {
        _dir: dir,
        ca,
        cluster,
    }
}

impl Fixture {
    pub fn intermediate_pem(&self) -> (String, String) {
        let d = self.ca.cluster_dir(&self.cluster);
        (
            std::fs::read_to_string(d.join("intermediate.pem")).unwrap(),
            std::fs::read_to_string(d.join("intermediate.key")).unwrap(),
        )
    }

    pub fn intermediate_der(&self) -> CertificateDer<'static> {
        strait_ca::pem::one_cert(&self.intermediate_pem().0).unwrap()
    }

    /// A leaf signed by the cluster intermediate with arbitrary fields, for
    /// certificates the CA itself would never issue.
    pub fn custom_leaf(
        &self,
        sans: Vec<SanType>,
        nb: OffsetDateTime,
        na: OffsetDateTime,
    ) -> Vec<CertificateDer<'static>> {
        let (cert_pem, key_pem) = self.intermediate_pem();
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, KeyPair::from_pem(&key_pem).unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::OrganizationName, "test");
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = nb;
        p.not_after = na;
        let cert = p.signed_by(&key, &issuer).unwrap();
        vec![cert.der().clone(), self.intermediate_der()]
    }
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().unwrap())
}

/// A CSR for `sans` with a fresh key, plus extra custom extensions.
pub fn csr(sans: Vec<SanType>, exts: Vec<rcgen::CustomExtension>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    p.custom_extensions = exts;
    p.serialize_request(&key).unwrap().der().to_vec()
}

pub fn openssl_available() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
