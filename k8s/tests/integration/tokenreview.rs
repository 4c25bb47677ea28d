//! Workload identity by projected ServiceAccount token: the CA's gRPC
//! signing service (real TLS on loopback) with the Kubernetes reviewer,
//! against the fake API server (TLS, bearer token) answering TokenReviews
//! as kube-apiserver does. A CSR for exactly the token's namespace and
//! service account is signed; everything else is refused with its reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::UnixTime;
use strait_api::TrustDomain;
use strait_ca::client::{CaClient, ClientError};
use strait_ca::server::{self, CaService};
use strait_ca::token::TokenStore;
use strait_ca::verify::Usage;
use strait_ca::{CaDir, CertStore, SharedBundle};
use strait_k8s::tokenreview::KubeTokenReviewer;
use strait_k8s_fake::{FakeApi, Options, TokenFacts};

const CA_TOKEN: &str = "strait-ca-service-account-token";
/// Shaped as JWTs (the CA tells them from bootstrap tokens by shape); the
/// fake knows them by value.
const WEB: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.c2lnLXdlYg";
const EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvbGQifQ.c2lnLW9sZA";
const VAULT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ2YXVsdCJ9.c2lnLXZhdWx0";
const UNKNOWN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnLW5vbmU";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn csr(id: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.serialize_request(&key).unwrap().der().to_vec()
}

struct Ca {
    _dir: tempfile::TempDir,
    bound: server::Bound,
    bundle: SharedBundle,
}

async fn ca(api: &FakeApi) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("strait.local").unwrap();
    let ca = CaDir::init(&dir.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
    let cluster = strait_api::ClusterName::new("east").unwrap();
    ca.new_intermediate(&cluster, Duration::from_secs(86400))
        .unwrap();
    let bundle = SharedBundle::new(ca.bundle().unwrap());
    let tokens = Arc::new(TokenStore::open(&dir.path().join("tokens.json")).unwrap());
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, CA_TOKEN, "strait-system")
        .unwrap();
    let client = strait_federation::kube::client(Some(&kubeconfig))
        .await
        .unwrap();
    let service = CaService::new(
        ca.intermediate(&cluster).unwrap(),
        bundle.clone(),
        tokens,
        Duration::from_secs(3600),
    )
    .with_token_review(Arc::new(KubeTokenReviewer::new(client)));
    let out = dir.path().join("server");
    ca.issue(
        &cluster,
        &server::server_identity(&td),
        Duration::from_secs(3600),
        &out,
    )
    .unwrap();
    let store = CertStore::from_pem(
        &std::fs::read_to_string(out.join("chain.pem")).unwrap(),
        &std::fs::read_to_string(out.join("key.pem")).unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.178.20.1:0")
        .await
        .unwrap();
    let bound = server::serve(service, listener, store).unwrap();
    Ca {
        _dir: dir,
        bound,
        bundle,
    }
}

fn facts(ns: &str, sa: &str, aud: &str, expires: u64) -> TokenFacts {
    TokenFacts {
        namespace: ns.into(),
        service_account: sa.into(),
        audiences: vec![aud.into()],
        expires,
    }
}

#[tokio::test]
async fn a_reviewed_service_account_token_gets_exactly_its_identity_and_nothing_else() {
    let api =
        FakeApi::start_with(Options::secure("127.178.20.2:0".parse().unwrap(), CA_TOKEN)).await;
    api.add_token(WEB, facts("shop", "web", "strait", now() + 3600));
    api.add_token(EXPIRED, facts("shop", "web", "strait", now() - 10));
    api.add_token(VAULT, facts("shop", "web", "vault", now() + 3600));
    let ca = ca(&api).await;
    let mut client = CaClient::connect(ca.bound.addr, &ca.bundle, &CertStore::empty())
        .await
        .unwrap();

    let signed = client
        .sign(csr("spiffe://strait.local/ns/shop/sa/web"), WEB, None)
        .await
        .expect("the token's own identity is signed");
    let id = ca
        .bundle
        .get()
        .verify(&signed.chain, UnixTime::now(), Usage::Client)
        .unwrap();
    assert_eq!(id.to_string(), "spiffe://strait.local/ns/shop/sa/web");
    // The CA asked the API server, with its own credentials and audience.
    assert!(
        api.requests()
            .iter()
            .any(|r| r == "POST /apis/authentication.k8s.io/v1/tokenreviews"),
        "{:?}",
        api.requests()
    );

    let table = [
        (
            "spiffe://strait.local/ns/shop/sa/db",
            WEB,
            tonic::Code::PermissionDenied,
            "token_wrong_identity",
            "ns/shop/sa/web, not for",
        ),
        (
            "spiffe://strait.local/ns/other/sa/web",
            WEB,
            tonic::Code::PermissionDenied,
            "token_wrong_identity",
            "not for",
        ),
        (
            "spiffe://strait.local/ns/shop/sa/web",
            EXPIRED,
            tonic::Code::Unauthenticated,
            "token_expired",
            "expired",
        ),
        (
            "spiffe://strait.local/ns/shop/sa/web",
            VAULT,
            tonic::Code::Unauthenticated,
            "token_wrong_audience",
            "audience",
        ),
        (
            "spiffe://strait.local/ns/shop/sa/web",
            UNKNOWN,
            tonic::Code::Unauthenticated,
            "token_not_authenticated",
            "invalid bearer token",
        ),
    ];
    for (id, token, code, reason, text) in table {
        match client.sign(csr(id), token, None).await {
            Err(ClientError::Refused {
                code: c,
                reason: r,
                message,
                ..
            }) => {
                assert_eq!((c, r.as_str()), (code, reason), "{id} {message}");
                assert!(message.contains(text), "{message}");
            }
            other => panic!("{id}: expected a refusal, got {other:?}"),
        }
    }

    // The API server failing its reviews: refused, never signed.
    api.fail_token_reviews(true);
    match client
        .sign(csr("spiffe://strait.local/ns/shop/sa/web"), WEB, None)
        .await
    {
        Err(ClientError::Refused {
            code,
            reason,
            message,
            ..
        }) => {
            assert_eq!(
                (code, reason.as_str()),
                (tonic::Code::Unavailable, "token_review_failed"),
                "{message}"
            );
            assert!(message.contains("token review failed"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    api.fail_token_reviews(false);
    // And unreachable.
    api.set_down(true);
    match client
        .sign(csr("spiffe://strait.local/ns/shop/sa/web"), WEB, None)
        .await
    {
        Err(ClientError::Refused { reason, .. }) => assert_eq!(reason, "token_review_failed"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
