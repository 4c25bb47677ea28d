//! Every CSR refusal, checked directly.

use strait_ca::csr::{CsrError, check};

use crate::fixture::{csr, td, uri};

const GOOD: &str = "spiffe://strait.local/ns/default/sa/web";

#[test]
fn accepts_a_csr_with_exactly_one_spiffe_id() {
    let der = csr(vec![uri(GOOD)], vec![]);
    let ok = check(&der, &td()).unwrap();
    assert_eq!(ok.id.as_str(), GOOD);
}

#[test]
fn refuses_extra_sans() {
    let der = csr(
        vec![
            uri(GOOD),
            rcgen::SanType::DnsName("evil.example".try_into().unwrap()),
        ],
        vec![],
    );
    match check(&der, &td()) {
        Err(CsrError::ExtraSans(s)) => assert!(s.contains("DNS:evil.example"), "{s}"),
        other => panic!("{other:?}"),
    }
    let two = csr(
        vec![uri(GOOD), uri("spiffe://strait.local/ns/default/sa/db")],
        vec![],
    );
    assert!(matches!(check(&two, &td()), Err(CsrError::ExtraSans(_))));
}

#[test]
fn refuses_wrong_trust_domain() {
    let der = csr(vec![uri("spiffe://other.mesh/ns/default/sa/web")], vec![]);
    assert!(matches!(
        check(&der, &td()),
        Err(CsrError::WrongTrustDomain { .. })
    ));
}

#[test]
fn refuses_a_requested_ca_bit() {
    // basicConstraints { cA TRUE }
    let mut bc = rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        vec![0x30, 0x03, 0x01, 0x01, 0xff],
    );
    bc.set_criticality(true);
    let der = csr(vec![uri(GOOD)], vec![bc]);
    assert_eq!(check(&der, &td()).unwrap_err(), CsrError::CaRequested);
}

#[test]
fn refuses_a_bad_signature() {
    let mut der = csr(vec![uri(GOOD)], vec![]);
    // The signature BIT STRING is at the end; flip a bit inside it.
    let n = der.len();
    der[n - 5] ^= 0x01;
    assert_eq!(check(&der, &td()).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn refuses_missing_or_invalid_spiffe_id() {
    let none = csr(
        vec![rcgen::SanType::DnsName("web".try_into().unwrap())],
        vec![],
    );
    assert!(matches!(check(&none, &td()), Err(CsrError::ExtraSans(_))));
    let empty = csr(vec![], vec![]);
    assert_eq!(check(&empty, &td()).unwrap_err(), CsrError::NoSpiffeId);
    let bad = csr(vec![uri("spiffe://strait.local/ns//sa/web")], vec![]);
    assert!(matches!(check(&bad, &td()), Err(CsrError::BadSpiffeId(_))));
}

#[test]
fn refuses_garbage_empty_and_oversized_input() {
    assert_eq!(check(&[], &td()).unwrap_err(), CsrError::Empty);
    assert!(matches!(
        check(b"not a csr", &td()),
        Err(CsrError::Malformed(_))
    ));
    let big = vec![0x30; strait_ca::csr::MAX_CSR_BYTES + 1];
    assert!(matches!(check(&big, &td()), Err(CsrError::TooLarge(_))));
    let mut trailing = csr(vec![uri(GOOD)], vec![]);
    trailing.push(0);
    assert!(matches!(
        check(&trailing, &td()),
        Err(CsrError::Malformed(_))
    ));
}

#[test]
fn every_refusal_has_a_distinct_reason() {
    use std::collections::HashSet;
    let reasons: HashSet<&str> = [
        CsrError::BadSignature.reason(),
        CsrError::ExtraSans(String::new()).reason(),
        CsrError::CaRequested.reason(),
        CsrError::WrongTrustDomain {
            got: String::new(),
            expected: String::new(),
        }
        .reason(),
        CsrError::Malformed(String::new()).reason(),
        CsrError::NoSpiffeId.reason(),
    ]
    .into_iter()
    .collect();
    assert_eq!(reasons.len(), 6);
}
