//! CSRs: well-formed and hostile requests (wrong trust domain, extra SANs,
//! CA requests), mutated DER, random bytes and length bombs.

use std::time::Duration;

use proptest::prelude::*;
use rcgen::{CertificateParams, CustomExtension, KeyPair, SanType};
use strait_api::TrustDomain;
use strait_ca::csr::{CsrError, MAX_CSR_BYTES, check as check_csr};
use strait_hardening::csr::check;

use crate::support::{config, mutated, within};

fn csr(sans: Vec<SanType>, ca: bool) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    if ca {
        // rcgen will not write basicConstraints into a CSR itself:
        // basicConstraints { cA TRUE } as a raw extension.
        let bc =
            CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        params.custom_extensions.push(bc);
    }
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().unwrap())
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        csr(vec![uri("spiffe://strait.local/ns/shop/sa/web")], false),
        csr(vec![uri("spiffe://evil.local/ns/shop/sa/web")], false),
        csr(
            vec![
                uri("spiffe://strait.local/ns/a/sa/b"),
                SanType::DnsName("x".try_into().unwrap()),
            ],
            false,
        ),
        csr(vec![uri("spiffe://strait.local/ns/a/sa/b")], true),
        csr(vec![], false),
    ]
}

const DICT: &[&[u8]] = &[
    b"\x30\x84\xff\xff\xff\xff",
    b"\x30\x80",
    b"\x04\x82\x7f\xff",
    b"\x06\x03\x55\x1d\x11",
    b"spiffe://strait.local/ns/x/sa/y",
    b"\xa0\x00",
];

#[test]
fn a_well_formed_csr_passes_and_hostile_ones_are_refused_with_their_reason() {
    let td = TrustDomain::new("strait.local").unwrap();
    let s = seeds();
    let ok = check_csr(&s[0], &td).unwrap();
    assert_eq!(ok.id.as_str(), "spiffe://strait.local/ns/shop/sa/web");
    assert_eq!(
        check_csr(&s[1], &td).unwrap_err().reason(),
        "csr_wrong_trust_domain"
    );
    assert_eq!(
        check_csr(&s[2], &td).unwrap_err().reason(),
        "csr_extra_sans"
    );
    assert_eq!(
        check_csr(&s[3], &td).unwrap_err().reason(),
        "csr_ca_requested"
    );
    assert_eq!(check_csr(&s[4], &td).unwrap_err(), CsrError::NoSpiffeId);
    for seed in &s {
        check(seed);
    }
}

#[test]
fn length_bombs_are_refused_quickly() {
    let td = TrustDomain::new("strait.local").unwrap();
    let mut bombs: Vec<Vec<u8>> = vec![
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30, 0x00],
        vec![0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        [0x30, 0x80].repeat(MAX_CSR_BYTES / 2),
        [0x30, 0x82, 0x1f, 0xf8].repeat(MAX_CSR_BYTES / 4),
        vec![0x30; MAX_CSR_BYTES],
        vec![0; MAX_CSR_BYTES + 1],
        vec![0x30; 64 << 20],
    ];
    // A valid CSR whose outer length claims 4 GiB.
    let mut lying = seeds().remove(0);
    lying.splice(1..4, [0x84, 0xff, 0xff, 0xff, 0xff]);
    bombs.push(lying);
    for b in &bombs {
        let e = within(Duration::from_secs(2), "a length bomb", || {
            check_csr(b, &td)
        })
        .unwrap_err();
        assert_eq!(e.reason(), "csr_malformed", "{e}");
        within(Duration::from_secs(2), "a length bomb", || check(b));
    }
}

/// Signed CSRs with hostile contents: random SAN mixes and near-valid
/// URIs, so the checks behind the signature are reached.
fn signed_csr() -> impl Strategy<Value = Vec<u8>> {
    let td = prop_oneof![
        3 => Just("strait.local".to_owned()),
        1 => Just("Strait.local".to_owned()),
        1 => "[a-z.:@]{0,12}",
    ];
    let uri = (
        prop::sample::select(vec!["spiffe://", "spiffe:/", "SPIFFE://", "https://"]),
        td,
        "(/[a-zA-Z0-9.%?#_-]{0,8}){0,4}",
    )
        .prop_map(|(scheme, td, path)| format!("{scheme}{td}{path}"));
    let san = prop_oneof![
        6 => uri.prop_map(|u| uri_san(&u)),
        1 => "[a-z.]{1,12}".prop_map(|d| SanType::DnsName(d.try_into().unwrap())),
        1 => any::<[u8; 4]>().prop_map(|ip| SanType::IpAddress(ip.into())),
        1 => "[a-z]{1,8}@[a-z]{1,8}".prop_map(|e| SanType::Rfc822Name(e.try_into().unwrap())),
    ];
    let ext = prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..16));
    (prop::collection::vec(san, 0..3), ext).prop_map(|(sans, ext)| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if let Some(content) = ext {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    content,
                ));
        }
        params.serialize_request(&key).unwrap().der().to_vec()
    })
}

fn uri_san(u: &str) -> SanType {
    SanType::URI(u.to_owned().try_into().unwrap())
}

proptest! {
    #![proptest_config(config(512, 0x5a9))]
    #[test]
    fn signed_hostile_csrs_are_issued_only_for_one_spiffe_id_in_our_domain(der in signed_csr()) {
        check(&der);
    }
}

proptest! {
    #![proptest_config(config(2048, 0xc5a))]
    #[test]
    fn mutated_csrs_never_panic_and_refuse_with_a_typed_error(der in mutated(seeds(), DICT)) {
        check(&der);
    }

    #[test]
    fn random_der_never_panics(mut der in prop::collection::vec(any::<u8>(), 0..512), tag in any::<bool>()) {
        if tag && !der.is_empty() {
            der[0] = 0x30;
        }
        check(&der);
    }
}
