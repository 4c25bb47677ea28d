//! CertManager: renewal at 2/3 of life and keeping the current certificate
//! when the CA is unreachable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use strait_ca::client::{ClientError, SignedChain};
use strait_ca::manager::{CertManager, GrpcSigner, RenewPolicy, Signer};
use strait_ca::{Authority, CertStore};

use crate::fixture::{fixture, id};

const WEB: &str = "spiffe://strait.local/ns/default/sa/web";

/// Signs in process with the cluster intermediate; can be switched off.
struct LocalSigner {
    ca: Authority,
    ttl: Duration,
    down: AtomicBool,
}

impl Signer for LocalSigner {
    fn sign<'a>(
        &'a self,
        csr_der: Vec<u8>,
        _current: &'a CertStore,
    ) -> Pin<Box<dyn Future<Output = Result<SignedChain, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(ClientError::BadAnswer("ca unreachable (test)".into()));
            }
            let checked = strait_ca::csr::check(&csr_der, self.ca.trust_domain()).unwrap();
            let issued = self.ca.issue_for_csr(checked, self.ttl).unwrap();
            Ok(SignedChain {
                chain: vec![issued.cert, self.ca.cert().clone()],
                roots: vec![],
                not_after: std::time::UNIX_EPOCH
                    + Duration::from_secs(issued.not_after.unix_timestamp() as u64),
            })
        })
    }
}

fn serial(store: &CertStore) -> Vec<u8> {
    store.current().unwrap().end_entity_cert().unwrap().to_vec()
}

#[tokio::test]
async fn renews_at_two_thirds_and_survives_ca_outage() {
    let fx = fixture();
    let signer = Arc::new(LocalSigner {
        ca: fx.ca.intermediate(&fx.cluster).unwrap(),
        ttl: Duration::from_secs(3),
        down: AtomicBool::new(false),
    });
    let policy = RenewPolicy {
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..RenewPolicy::default()
    };
    let mgr = Arc::new(CertManager::new(id(WEB), signer.clone(), policy));
    let store = mgr.store();
    let mut status = mgr.status();
    mgr.renew_once().await.unwrap();
    assert_eq!(store.identity().unwrap(), id(WEB));
    let first = serial(&store);
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(mgr.clone().run());

    // Renewal happens at ~2/3 of the 3 s life (not_after has 1 s granularity).
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.renewals >= 2))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took <= Duration::from_millis(3000),
        "renewed after {took:?}"
    );
    let second = serial(&store);
    assert_ne!(first, second);

    // CA down: renewals fail, are retried, and the current cert stays.
    signer.down.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.failures >= 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serial(&store),
        second,
        "a failed renewal must keep the current certificate"
    );
    assert!(
        status
            .borrow()
            .last_error
            .as_deref()
            .unwrap()
            .contains("unreachable")
    );

    // CA back: the next retry succeeds.
    signer.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(3), status.wait_for(|s| s.renewals >= 3))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(serial(&store), second);
    task.abort();
}

/// A CA service and a bootstrap token for `default/web` (10 minutes).
async fn ca_with_web_token() -> (crate::grpc::Running, String) {
    let ca = crate::grpc::start_ca().await;
    let token = ca
        .tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    (ca, token)
}

#[tokio::test]
async fn grpc_signer_bootstraps_with_a_token_then_renews_with_its_cert() {
    let (ca, token) = ca_with_web_token().await;
    let signer = Arc::new(GrpcSigner::new(
        ca.bound.addr,
        ca.bundle.clone(),
        token,
        None,
    ));
    let mgr =
        CertManager::new(id(WEB), signer, RenewPolicy::default()).with_bundle(ca.bundle.clone());
    mgr.renew_once().await.unwrap();
    let first = serial(&mgr.store());
    // Revoke the token: the renewal must now go through mTLS with the cert.
    ca.tokens.revoke("default", "web").unwrap();
    mgr.renew_once().await.unwrap();
    assert_ne!(serial(&mgr.store()), first);
    assert_eq!(mgr.status().borrow().renewals, 2);
}

/// A TCP forwarder to `to` that counts the connections it accepted.
async fn counting_forwarder(to: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn trust_checks_share_one_connection_to_the_ca() {
    let (ca, token) = ca_with_web_token().await;
    let (via, dialed) = counting_forwarder(ca.bound.addr).await;
    let signer = Arc::new(GrpcSigner::new(via, ca.bundle.clone(), token, None));
    let mgr = CertManager::new(id(WEB), signer.clone(), RenewPolicy::default())
        .with_bundle(ca.bundle.clone());
    mgr.renew_once().await.unwrap();
    assert_eq!(dialed.load(Ordering::SeqCst), 1, "the signing");
    for _ in 0..3 {
        let trust = signer.trust(&mgr.store()).await.unwrap().unwrap();
        assert!(!trust.roots.is_empty());
    }
    assert_eq!(
        dialed.load(Ordering::SeqCst),
        2,
        "one connection for three checks"
    );
}

#[tokio::test]
async fn bootstrap_gets_a_first_certificate_with_the_token() {
    let (ca, token) = ca_with_web_token().await;
    let (store, renew) =
        strait_ca::manager::bootstrap(ca.bound.addr, id(WEB), token, ca.bundle.clone(), None)
            .await
            .unwrap();
    assert_eq!(store.identity().unwrap(), id(WEB));
    renew.abort();
}

#[tokio::test]
async fn a_restart_starts_from_the_kept_certificate_without_a_new_token() {
    let (ca, token) = ca_with_web_token().await;
    let keep = tempfile::tempdir().unwrap();
    let kept = keep.path().join("web");
    let start = |token: String| {
        strait_ca::manager::bootstrap(
            ca.bound.addr,
            id(WEB),
            token,
            ca.bundle.clone(),
            Some(kept.clone()),
        )
    };
    let (first, renew) = start(token.clone()).await.unwrap();
    renew.abort();
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(kept.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    // The token is spent; the second run starts from what the first kept.
    let (second, renew) = start(token.clone()).await.unwrap();
    renew.abort();
    assert_eq!(serial(&second), serial(&first));
    assert_eq!(second.identity().unwrap(), id(WEB));
    // A kept certificate of another identity is not used: the spent token
    // is tried, and the CA's refusal says why.
    let db = ca.fx.ca.path().join("db");
    ca.fx
        .ca
        .issue(
            &ca.fx.cluster,
            &id("spiffe://strait.local/ns/default/sa/db"),
            Duration::from_secs(3600),
            &db,
        )
        .unwrap();
    for f in ["chain.pem", "key.pem"] {
        std::fs::copy(db.join(f), kept.join(f)).unwrap();
    }
    let err = start(token).await.unwrap_err().to_string();
    assert!(err.contains("token_used"), "{err}");
}
