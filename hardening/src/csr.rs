//! Certificate requests and peer certificates: [`strait_ca::csr::check`]
//! on any DER (random, mutated, length bombs), a CSR that passes issued by a
//! real intermediate, and [`strait_ca::verify::spiffe_id_of`] on any
//! certificate bytes.
//!
//! Invariants: nothing panics; a refusal is a typed [`CsrError`] with a
//! stable reason and a message that does not amplify the input; what is
//! accepted is at most [`MAX_CSR_BYTES`], in our trust domain, and the
//! certificate the CA issues for it carries exactly the checked SPIFFE ID.

use std::sync::OnceLock;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use strait_api::TrustDomain;
use strait_ca::Authority;
use strait_ca::csr::{CsrError, MAX_CSR_BYTES, check as check_csr};
use strait_ca::verify::spiffe_id_of;

pub const TRUST_DOMAIN: &str = "strait.local";

/// Every reason label a refusal may carry.
const REASONS: &[&str] = &[
    "csr_malformed",
    "csr_bad_signature",
    "csr_unsupported_algorithm",
    "csr_bad_spiffe_id",
    "csr_extra_sans",
    "csr_wrong_trust_domain",
    "csr_ca_requested",
    "csr_unsupported_extension",
];

struct Fixture {
    td: TrustDomain,
    ca: Authority,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::new(TRUST_DOMAIN).unwrap_or_else(|e| panic!("{e}"));
        let (root, _) = Authority::new_root(&td, Duration::from_secs(86_400))
            .unwrap_or_else(|e| panic!("root: {e}"));
        let cluster = strait_api::ClusterName::new("east").unwrap_or_else(|e| panic!("{e}"));
        let (ca, _) = root
            .new_intermediate(&cluster, Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("intermediate: {e}"));
        Fixture { td, ca }
    })
}

/// Checks `bytes` as a DER CSR, and as a certificate.
pub fn check(bytes: &[u8]) {
    let f = fixture();
    match check_csr(bytes, &f.td) {
        Ok(checked) => {
            assert!(!bytes.is_empty() && bytes.len() <= MAX_CSR_BYTES);
            assert_eq!(checked.id.trust_domain_str(), TRUST_DOMAIN);
            let id = checked.id.clone();
            let issued =
                f.ca.issue_for_csr(checked, Duration::from_secs(600))
                    .unwrap_or_else(|e| panic!("checked csr for {id} not issued: {e}"));
            let got = spiffe_id_of(&issued.cert).unwrap_or_else(|e| panic!("issued cert: {e}"));
            assert_eq!(got, id, "issued a different identity than checked");
        }
        Err(e) => refused(bytes, &e),
    }
    let _ = spiffe_id_of(&CertificateDer::from(bytes));
}

fn refused(bytes: &[u8], e: &CsrError) {
    assert!(
        REASONS.contains(&e.reason()),
        "untyped reason {:?}",
        e.reason()
    );
    let msg = e.to_string();
    assert!(
        msg.len() <= 4 * bytes.len().min(MAX_CSR_BYTES) + 512,
        "a {} byte error for {} bytes",
        msg.len(),
        bytes.len()
    );
    if bytes.len() > MAX_CSR_BYTES {
        assert_eq!(
            *e,
            CsrError::TooLarge(bytes.len()),
            "read a CSR over the limit"
        );
    }
}
