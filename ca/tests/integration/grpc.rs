//! The signing service over real TLS sockets on loopback, checked with the
//! `openssl` command line.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use strait_ca::client::{CaClient, ClientError};
use strait_ca::server::{self, CaService};
use strait_ca::token::TokenStore;
use strait_ca::{CertStore, SharedBundle, pem};

use crate::fixture::{Fixture, csr, fixture, id, openssl_available, td, uri};

const WEB: &str = "spiffe://strait.local/ns/default/sa/web";

pub struct Running {
    pub fx: Fixture,
    pub bound: server::Bound,
    pub bundle: SharedBundle,
    pub tokens: Arc<TokenStore>,
}

pub async fn start_ca() -> Running {
    start_ca_with(None).await
}

/// A CA service on loopback (its own certificate as `strait ca serve`
/// makes it), counting in `metrics` when given.
pub async fn start_ca_with(metrics: Option<strait_ca::metrics::CaMetrics>) -> Running {
    let fx = fixture();
    let authority = fx.ca.intermediate(&fx.cluster).unwrap();
    let bundle = SharedBundle::new(fx.ca.bundle().unwrap());
    let tokens =
        Arc::new(TokenStore::open(&fx.ca.cluster_dir(&fx.cluster).join("tokens.json")).unwrap());
    let (store, _) = strait_ca::follow::server_cert(&authority).unwrap();
    let mut service = CaService::new(
        authority,
        bundle.clone(),
        tokens.clone(),
        Duration::from_secs(3600),
    );
    if let Some(m) = metrics {
        service = service.with_metrics(m);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = server::serve(service, listener, store).unwrap();
    Running {
        fx,
        bound,
        bundle,
        tokens,
    }
}

fn refused(r: Result<strait_ca::client::SignedChain, ClientError>) -> (tonic::Code, String) {
    match r {
        Err(ClientError::Refused { code, reason, .. }) => (code, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn issues_over_grpc_and_openssl_verifies_the_chain() {
    assert!(
        openssl_available(),
        "the openssl command line is required (.ci/run installs it)"
    );
    let ca = start_ca().await;
    let token = ca
        .tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    let mut client = CaClient::connect(ca.bound.addr, &ca.bundle, &CertStore::empty())
        .await
        .unwrap();
    let signed = client
        .sign(
            csr(vec![uri(WEB)], vec![]),
            &token,
            Some(Duration::from_secs(7200)),
        )
        .await
        .unwrap();
    assert_eq!(signed.chain.len(), 2);
    assert_eq!(signed.roots.len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("leaf.pem"), pem::encode_certs([&signed.chain[0]])).unwrap();
    std::fs::write(d.join("int.pem"), pem::encode_certs([&signed.chain[1]])).unwrap();
    std::fs::copy(ca.fx.ca.bundle_path(), d.join("root.pem")).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let (ok, text) = openssl(
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "int.pem",
                "-purpose",
                purpose,
                "leaf.pem",
            ],
            d,
        );
        assert!(
            ok && text.contains("leaf.pem: OK"),
            "openssl verify -purpose {purpose}: {text}"
        );
    }
    let (ok, text) = openssl(
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        d,
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    let (_, text) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], d);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    // The requested 2 h lifetime was honoured (give or take the 5 min backdate).
    let life = signed
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        life > Duration::from_secs(7000) && life <= Duration::from_secs(7200),
        "{life:?}"
    );

    // The root's name constraint is real: OpenSSL refuses a leaf outside the
    // trust domain even when the intermediate signed it.
    let foreign = ca.fx.custom_leaf(
        vec![uri("spiffe://evil.mesh/ns/default/sa/web")],
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    );
    std::fs::write(d.join("foreign.pem"), pem::encode_certs([&foreign[0]])).unwrap();
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "foreign.pem",
        ],
        d,
    );
    assert!(
        !ok,
        "openssl must refuse a name-constraint violation: {text}"
    );
    assert!(text.to_lowercase().contains("subtree"), "{text}");
}

#[tokio::test]
async fn renews_over_mtls_with_the_current_certificate() {
    let ca = start_ca().await;
    let token = ca
        .tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    let mut first = CaClient::connect(ca.bound.addr, &ca.bundle, &CertStore::empty())
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![uri(WEB)];
    let csr_der = p.serialize_request(&key).unwrap().der().to_vec();
    let signed = first.sign(csr_der, &token, None).await.unwrap();
    let store = CertStore::from_parts(
        signed.chain.clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    // Renewal: no token, the current certificate over mTLS.
    let mut renewing = CaClient::connect(ca.bound.addr, &ca.bundle, &store)
        .await
        .unwrap();
    let again = renewing
        .sign(csr(vec![uri(WEB)], vec![]), "", None)
        .await
        .unwrap();
    assert_eq!(
        strait_ca::verify::spiffe_id_of(&again.chain[0]).unwrap(),
        id(WEB)
    );
    // ... but only for the same identity.
    let other = renewing
        .sign(
            csr(vec![uri("spiffe://strait.local/ns/default/sa/db")], vec![]),
            "",
            None,
        )
        .await;
    assert_eq!(
        refused(other),
        (
            tonic::Code::PermissionDenied,
            "renewal_identity_mismatch".into()
        )
    );
    // ... and only for a certificate of this CA's own cluster: one of
    // west (same root, same identity) must not be laundered into east.
    let west = strait_api::ClusterName::new("west").unwrap();
    ca.fx
        .ca
        .new_intermediate(&west, Duration::from_secs(86400))
        .unwrap();
    let out = ca.fx.ca.path().join("west-web");
    ca.fx
        .ca
        .issue(&west, &id(WEB), Duration::from_secs(3600), &out)
        .unwrap();
    let west_store = CertStore::from_pem(
        &std::fs::read_to_string(out.join("chain.pem")).unwrap(),
        &std::fs::read_to_string(out.join("key.pem")).unwrap(),
    )
    .unwrap();
    // An honest client of west does not even talk to east's CA...
    let err = CaClient::connect(ca.bound.addr, &ca.bundle, &west_store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of cluster east") && err.contains("of cluster west"),
        "{err}"
    );
    // ... and one that skips that check is refused by the CA.
    let any_cluster = strait_ca::tls::ExpectedServer::Id(server::server_identity(&td()));
    let mut launder =
        CaClient::connect_expecting(ca.bound.addr, &ca.bundle, &west_store, any_cluster)
            .await
            .unwrap();
    let res = launder.sign(csr(vec![uri(WEB)], vec![]), "", None).await;
    assert_eq!(
        refused(res),
        (tonic::Code::PermissionDenied, "other_cluster".into())
    );
}

#[tokio::test]
async fn each_refusal_has_its_own_status_and_reason() {
    let ca = start_ca().await;
    let mut client = CaClient::connect(ca.bound.addr, &ca.bundle, &CertStore::empty())
        .await
        .unwrap();
    let good = ca
        .tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    let expired = ca.tokens.create("default", "web", Duration::ZERO).unwrap();
    let revoked = ca
        .tokens
        .create("prod", "api", Duration::from_secs(600))
        .unwrap();
    ca.tokens.revoke("prod", "api").unwrap();
    // Even an operator's token for it does not get the CA's own identity.
    let ca_token = ca
        .tokens
        .create("strait-system", "ca", Duration::from_secs(600))
        .unwrap();

    let mut bc = rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        vec![0x30, 0x03, 0x01, 0x01, 0xff],
    );
    bc.set_criticality(true);
    let mut bad_sig = csr(vec![uri(WEB)], vec![]);
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 1;
    let dns = rcgen::SanType::DnsName("x.example".try_into().unwrap());
    let cases: Vec<(&str, Vec<u8>, &str, tonic::Code, &str)> = vec![
        (
            "extra SANs",
            csr(vec![uri(WEB), dns], vec![]),
            &good,
            tonic::Code::InvalidArgument,
            "csr_extra_sans",
        ),
        (
            "wrong trust domain",
            csr(vec![uri("spiffe://other/ns/default/sa/web")], vec![]),
            &good,
            tonic::Code::PermissionDenied,
            "csr_wrong_trust_domain",
        ),
        (
            "CA bit",
            csr(vec![uri(WEB)], vec![bc]),
            &good,
            tonic::Code::PermissionDenied,
            "csr_ca_requested",
        ),
        (
            "bad signature",
            bad_sig,
            &good,
            tonic::Code::InvalidArgument,
            "csr_bad_signature",
        ),
        (
            "garbage",
            b"garbage".to_vec(),
            &good,
            tonic::Code::InvalidArgument,
            "csr_malformed",
        ),
        (
            "expired token",
            csr(vec![uri(WEB)], vec![]),
            &expired,
            tonic::Code::Unauthenticated,
            "token_expired",
        ),
        (
            "revoked token",
            csr(vec![uri("spiffe://strait.local/ns/prod/sa/api")], vec![]),
            &revoked,
            tonic::Code::Unauthenticated,
            "token_revoked",
        ),
        (
            "unknown token",
            csr(vec![uri(WEB)], vec![]),
            "strait-bt-00",
            tonic::Code::Unauthenticated,
            "token_unknown",
        ),
        (
            "token for another identity",
            csr(vec![uri("spiffe://strait.local/ns/default/sa/db")], vec![]),
            &good,
            tonic::Code::PermissionDenied,
            "token_wrong_identity",
        ),
        (
            "the CA's own identity",
            csr(
                vec![uri("spiffe://strait.local/ns/strait-system/sa/ca")],
                vec![],
            ),
            &ca_token,
            tonic::Code::PermissionDenied,
            "reserved_identity",
        ),
        (
            "no credentials",
            csr(vec![uri(WEB)], vec![]),
            "",
            tonic::Code::Unauthenticated,
            "no_credentials",
        ),
    ];
    for (name, csr_der, token, code, reason) in cases {
        let got = refused(client.sign(csr_der, token, None).await);
        assert_eq!(got, (code, reason.to_owned()), "case {name}");
    }
    // The server is still healthy for good requests, and none of the
    // refusals used the token up; the one signing does.
    client
        .sign(csr(vec![uri(WEB)], vec![]), &good, None)
        .await
        .unwrap();
    let again = refused(client.sign(csr(vec![uri(WEB)], vec![]), &good, None).await);
    assert_eq!(
        again,
        (tonic::Code::Unauthenticated, "token_used".to_owned())
    );
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_ca() {
    let ca = start_ca().await;
    // A bundle of a different mesh: the CA's certificate does not chain to it.
    let other = strait_ca::Authority::new_root(&td(), Duration::from_secs(86400))
        .unwrap()
        .0;
    let foreign =
        SharedBundle::new(strait_ca::TrustBundle::new(td(), vec![other.cert().clone()]).unwrap());
    let mut client = CaClient::connect(ca.bound.addr, &foreign, &CertStore::empty()).await;
    if let Ok(c) = client.as_mut() {
        // tonic may connect lazily; the first call must fail then.
        let r = c.sign(csr(vec![uri(WEB)], vec![]), "x", None).await;
        assert!(r.is_err(), "a call through an unverified server must fail");
    }
}
