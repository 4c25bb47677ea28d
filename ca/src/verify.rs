//! Verifying a peer: its chain against the mesh's trust bundle (webpki path
//! building) and its identity (exactly one URI SAN, a SPIFFE ID in the
//! bundle's trust domain).

use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use strait_api::{SpiffeId, TrustDomain};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;

/// Why a peer certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("peer sent no certificate")]
    NoCertificate,
    #[error("certificate cannot be parsed: {0}")]
    Malformed(String),
    #[error("certificate has no URI SAN (a SPIFFE ID is required)")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; exactly one SPIFFE ID is allowed")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(String),
    #[error("identity {id} is outside trust domain {expected}")]
    WrongTrustDomain { id: String, expected: String },
    #[error("certificate expired")]
    Expired,
    #[error("certificate is not valid yet")]
    NotYetValid,
    #[error("certificate does not chain to any root in the trust bundle")]
    UnknownIssuer,
    #[error(
        "a signature in the chain does not verify: it was signed by a key the bundle does not trust, or altered"
    )]
    BadSignature,
    #[error("certificate is not allowed for this use: {0}")]
    BadUsage(String),
    #[error("certificate chain is invalid: {0}")]
    Invalid(String),
    #[error("trust bundle root is unusable: {0}")]
    BadRoot(String),
    #[error("peer is {got}, expected {expected}")]
    UnexpectedIdentity { got: String, expected: String },
}

impl VerifyError {
    /// A short label for metrics (`reason="expired"`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::Malformed(_) => "malformed",
            Self::NoUriSan | Self::MultipleUriSans(_) | Self::BadSpiffeId(_) => "bad_identity",
            Self::WrongTrustDomain { .. } => "wrong_trust_domain",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownIssuer | Self::BadSignature => "unknown_issuer",
            Self::BadUsage(_) => "bad_usage",
            Self::Invalid(_) | Self::BadRoot(_) => "invalid",
            Self::UnexpectedIdentity { .. } => "unexpected_identity",
        }
    }
}

/// Which end of a connection the verified certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a TLS client (EKU clientAuth).
    Client,
    /// The peer is a TLS server (EKU serverAuth).
    Server,
}

/// The roots a mesh trusts, for one trust domain. During a root rotation
/// it holds the old and the new root.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, VerifyError> {
        if roots.is_empty() {
            return Err(VerifyError::BadRoot("trust bundle holds no root".into()));
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for root in &roots {
            let mut anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| VerifyError::BadRoot(format!("{e:?}")))?
                .to_owned();
            // webpki fails closed on URI name constraints, which Strait roots
            // carry for other verifiers (OpenSSL). The trust domain they
            // express is enforced by `verify` itself, below.
            anchor.name_constraints = None;
            anchors.push(anchor);
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// Reads every CERTIFICATE block of a PEM bundle.
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, VerifyError> {
        Self::new(trust_domain, crate::pem::certs(pem))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Verifies `chain` (leaf first, then intermediates) at time `now` and
    /// returns the peer's SPIFFE ID.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, VerifyError> {
        let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
        let id = spiffe_id_of(leaf)?;
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return Err(VerifyError::WrongTrustDomain {
                id: id.to_string(),
                expected: self.trust_domain.to_string(),
            });
        }
        let ee = EndEntityCert::try_from(leaf).map_err(map_webpki)?;
        let usage = match usage {
            Usage::Client => KeyUsage::client_auth(),
            Usage::Server => KeyUsage::server_auth(),
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(map_webpki)?;
        Ok(id)
    }
}

/// The SPIFFE ID of a certificate: its one URI SAN. Does not verify the chain.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?
        .ok_or(VerifyError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(VerifyError::NoUriSan),
        [one] => SpiffeId::parse(one).map_err(|e| VerifyError::BadSpiffeId(e.to_string())),
        many => Err(VerifyError::MultipleUriSans(many.len())),
    }
}

fn map_webpki(e: webpki::Error) -> VerifyError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => VerifyError::Expired,
        E::CertNotValidYet { .. } => VerifyError::NotYetValid,
        E::UnknownIssuer => VerifyError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => VerifyError::BadSignature,
        E::RequiredEkuNotFoundContext(_) | E::CaUsedAsEndEntity => {
            VerifyError::BadUsage(format!("{e:?}"))
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) => VerifyError::Malformed(format!("{e:?}")),
        other => VerifyError::Invalid(format!("{other:?}")),
    }
}

/// A trust bundle that can be swapped while connections use it (root
/// rotation). Readers take a cheap `Arc` snapshot.
#[derive(Debug, Clone)]
pub struct SharedBundle(Arc<RwLock<Arc<TrustBundle>>>);

impl SharedBundle {
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundle))))
    }

    pub fn get(&self) -> Arc<TrustBundle> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, bundle: TrustBundle) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Arc::new(bundle);
    }
}
