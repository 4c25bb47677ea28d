//! Chain and identity verification, including root rotation bundles.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use strait_ca::verify::Usage;
use strait_ca::{TrustBundle, VerifyError};
use time::OffsetDateTime;

use crate::fixture::{Fixture, fixture, id, td, uri};

const WEB: &str = "spiffe://strait.local/ns/default/sa/web";

fn issue(fx: &Fixture, who: &str) -> Vec<CertificateDer<'static>> {
    let dir = tempfile::tempdir().unwrap();
    let files = fx
        .ca
        .issue(&fx.cluster, &id(who), Duration::from_secs(3600), dir.path())
        .unwrap();
    strait_ca::pem::certs(&std::fs::read_to_string(files.chain).unwrap())
}

fn root_of(fx: &Fixture) -> CertificateDer<'static> {
    fx.ca.bundle().unwrap().roots()[0].clone()
}

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn bundle_with_two_roots_accepts_both_and_rejects_a_third() {
    let (a, b, c) = (fixture(), fixture(), fixture());
    let bundle = TrustBundle::new(td(), vec![root_of(&a), root_of(&b)]).unwrap();
    for fx in [&a, &b] {
        for usage in [Usage::Client, Usage::Server] {
            assert_eq!(
                bundle.verify(&issue(fx, WEB), now(), usage).unwrap(),
                id(WEB)
            );
        }
    }
    // The third root has the same name as the others, so webpki finds a
    // candidate issuer by name and the signature check fails.
    assert_eq!(
        bundle
            .verify(&issue(&c, WEB), now(), Usage::Client)
            .unwrap_err(),
        VerifyError::BadSignature
    );
    // Without its intermediate a leaf does not chain either.
    let leaf_only = &issue(&a, WEB)[..1];
    assert_eq!(
        bundle.verify(leaf_only, now(), Usage::Client).unwrap_err(),
        VerifyError::UnknownIssuer
    );
}

#[test]
fn rejects_expired_and_not_yet_valid() {
    let fx = fixture();
    let bundle = fx.ca.bundle().unwrap();
    let t = OffsetDateTime::now_utc();
    let expired = fx.custom_leaf(
        vec![uri(WEB)],
        t - time::Duration::hours(2),
        t - time::Duration::hours(1),
    );
    assert_eq!(
        bundle.verify(&expired, now(), Usage::Client).unwrap_err(),
        VerifyError::Expired
    );
    let future = fx.custom_leaf(
        vec![uri(WEB)],
        t + time::Duration::hours(1),
        t + time::Duration::hours(2),
    );
    assert_eq!(
        bundle.verify(&future, now(), Usage::Client).unwrap_err(),
        VerifyError::NotYetValid
    );
}

#[test]
fn rejects_wrong_trust_domain_and_bad_uri_sans() {
    let fx = fixture();
    let bundle = fx.ca.bundle().unwrap();
    let t = OffsetDateTime::now_utc();
    let (nb, na) = (t - time::Duration::minutes(1), t + time::Duration::hours(1));
    let other_td = fx.custom_leaf(vec![uri("spiffe://evil.mesh/ns/default/sa/web")], nb, na);
    assert!(matches!(
        bundle.verify(&other_td, now(), Usage::Client),
        Err(VerifyError::WrongTrustDomain { .. })
    ));
    let no_uri = fx.custom_leaf(
        vec![rcgen::SanType::DnsName("web".try_into().unwrap())],
        nb,
        na,
    );
    assert_eq!(
        bundle.verify(&no_uri, now(), Usage::Client).unwrap_err(),
        VerifyError::NoUriSan
    );
    let two = fx.custom_leaf(
        vec![uri(WEB), uri("spiffe://strait.local/ns/default/sa/db")],
        nb,
        na,
    );
    assert_eq!(
        bundle.verify(&two, now(), Usage::Client).unwrap_err(),
        VerifyError::MultipleUriSans(2)
    );
    let not_spiffe = fx.custom_leaf(vec![uri("https://strait.local/x")], nb, na);
    assert!(matches!(
        bundle.verify(&not_spiffe, now(), Usage::Client),
        Err(VerifyError::BadSpiffeId(_))
    ));
    assert_eq!(
        bundle.verify(&[], now(), Usage::Client).unwrap_err(),
        VerifyError::NoCertificate
    );
    let garbage = vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
    assert!(matches!(
        bundle.verify(&garbage, now(), Usage::Client),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn a_self_signed_leaf_is_not_trusted() {
    let fx = fixture();
    let bundle = fx.ca.bundle().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![uri(WEB)];
    let cert = p.self_signed(&key).unwrap();
    assert_eq!(
        bundle
            .verify(&[cert.der().clone()], now(), Usage::Client)
            .unwrap_err(),
        VerifyError::UnknownIssuer
    );
}

#[test]
fn ca_files_have_safe_modes_and_refuse_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture();
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(fx.ca.path().join("root.key")), 0o600);
    assert_eq!(
        mode(fx.ca.cluster_dir(&fx.cluster).join("intermediate.key")),
        0o600
    );
    let err = strait_ca::CaDir::init(fx.ca.path(), &td(), Duration::from_secs(86400)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = fx
        .ca
        .new_intermediate(&fx.cluster, Duration::from_secs(86400))
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // A key others can read is refused with a hint.
    let key = fx.ca.path().join("root.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fx.ca.root().unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn import_takes_an_existing_root_and_checks_the_key() {
    let (root, pem) = strait_ca::Authority::new_root(&td(), Duration::from_secs(86400)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = strait_ca::CaDir::import(&dir.path().join("ca"), &td(), &pem.cert, &pem.key).unwrap();
    assert_eq!(ca.bundle().unwrap().roots()[0], *root.cert());
    let (_, other) = strait_ca::Authority::new_root(&td(), Duration::from_secs(86400)).unwrap();
    let err = strait_ca::CaDir::import(&dir.path().join("ca2"), &td(), &pem.cert, &other.key)
        .unwrap_err();
    assert!(matches!(err, strait_ca::CaError::KeyMismatch), "{err}");
    assert!(
        !dir.path().join("ca2").exists(),
        "nothing is written for a refused import"
    );
}
