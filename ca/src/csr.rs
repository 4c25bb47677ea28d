//! Checking a certificate signing request before the CA signs its key.
//!
//! The CA takes only the public key from a CSR; every field of the issued
//! certificate is set by the CA. A CSR is still refused (each with its own
//! error) when it asks for more than a workload may have, so a confused or
//! hostile client learns exactly why.

use rcgen::CertificateSigningRequestParams;
use rustls_pki_types::CertificateSigningRequestDer;
use strait_api::{SpiffeId, TrustDomain};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Largest CSR the CA reads (a P-256 CSR is about 300 bytes; RSA-4096 ~1.7 KiB).
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("csr is empty")]
    Empty,
    #[error("csr is {0} bytes; the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    #[error("csr is not valid DER PKCS#10: {0}")]
    Malformed(String),
    #[error("csr signature does not verify with its own public key")]
    BadSignature,
    #[error("csr uses an unsupported key or signature algorithm")]
    UnsupportedAlgorithm,
    #[error("csr has no URI SAN; it must carry exactly one SPIFFE ID")]
    NoSpiffeId,
    #[error("csr carries extra SANs ({0}); only one URI SAN (the SPIFFE ID) is allowed")]
    ExtraSans(String),
    #[error("csr SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(String),
    #[error("csr asks for {got}, which is outside trust domain {expected}")]
    WrongTrustDomain { got: String, expected: String },
    #[error("csr requests a CA certificate (basicConstraints cA=true); workloads cannot be CAs")]
    CaRequested,
    #[error("csr requests an unsupported extension {0}")]
    UnsupportedExtension(String),
}

impl CsrError {
    /// A stable machine-readable reason (sent as gRPC metadata).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty | Self::TooLarge(_) | Self::Malformed(_) => "csr_malformed",
            Self::BadSignature => "csr_bad_signature",
            Self::UnsupportedAlgorithm => "csr_unsupported_algorithm",
            Self::NoSpiffeId | Self::BadSpiffeId(_) => "csr_bad_spiffe_id",
            Self::ExtraSans(_) => "csr_extra_sans",
            Self::WrongTrustDomain { .. } => "csr_wrong_trust_domain",
            Self::CaRequested => "csr_ca_requested",
            Self::UnsupportedExtension(_) => "csr_unsupported_extension",
        }
    }
}

/// A CSR that passed every check: its SPIFFE ID and key, ready to sign.
#[derive(Debug)]
pub struct CheckedCsr {
    pub id: SpiffeId,
    pub(crate) params: CertificateSigningRequestParams,
}

impl CheckedCsr {
    pub(crate) fn into_params(self) -> (SpiffeId, CertificateSigningRequestParams) {
        (self.id, self.params)
    }
}

/// Parses and checks a DER CSR for `trust_domain`.
pub fn check(der: &[u8], trust_domain: &TrustDomain) -> Result<CheckedCsr, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut uris = Vec::new();
    let mut others = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        other => others.push(describe(other)),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::CaRequested),
            // rcgen (which extracts the key below) refuses any basicConstraints.
            ParsedExtension::BasicConstraints(_) => {
                return Err(CsrError::UnsupportedExtension(
                    "basicConstraints (omit it: the CA sets cA=false itself)".into(),
                ));
            }
            ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {} // the CA sets its own
            other => return Err(CsrError::UnsupportedExtension(format!("{other:?}"))),
        }
    }
    if uris.len() > 1 {
        others.extend(uris.iter().skip(1).map(|u| format!("URI:{u}")));
    }
    if !others.is_empty() {
        return Err(CsrError::ExtraSans(others.join(", ")));
    }
    let uri = uris.into_iter().next().ok_or(CsrError::NoSpiffeId)?;
    let id = SpiffeId::parse(&uri).map_err(|e| CsrError::BadSpiffeId(e.to_string()))?;
    if id.trust_domain_str() != trust_domain.as_str() {
        return Err(CsrError::WrongTrustDomain {
            got: id.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    // Only the key and algorithm are used from here on (rcgen re-checks the
    // signature; the extensions it does not know were refused above).
    let params =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
                rcgen::Error::UnsupportedSignatureAlgorithm => CsrError::UnsupportedAlgorithm,
                other => CsrError::Malformed(other.to_string()),
            })?;
    Ok(CheckedCsr { id, params })
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => format!("IP:{}", hex(ip)),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
