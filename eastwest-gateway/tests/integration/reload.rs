//! The gateway's identity files are watched: a new bundle or certificate
//! is used by new handshakes without a restart, a bad file is refused and
//! the current identity stays; `/trust` reports what it trusts and presents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_ca::tls::{self, ExpectedServer};
use strait_ca::trust::fingerprint;
use strait_ca::{CaDir, CertStore, SharedBundle};
use strait_gateway::config::IdentitySource;
use strait_gateway::{Gateway, Handle, Limits};

use crate::support::*;

/// Waits until `ok` holds for the gateway's trust report (at most 5 s).
async fn until(gw: &Handle, what: &str, ok: impl Fn(&strait_ca::trust::TrustReport) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok(&gw.trust()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", gw.trust());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client(certs: CertStore, ca: &CaDir) -> Arc<rustls::ClientConfig> {
    let bundle = SharedBundle::new(ca.bundle().unwrap());
    Arc::new(
        tls::client_config(&certs, &bundle, ExpectedServer::AnyInTrustDomain, &[b"h2"]).unwrap(),
    )
}

/// Whether the gateway answers a CONNECT over a connection from `cfg` (in
/// TLS 1.3 the server checks the client certificate after the client's
/// handshake is done, so only an answer proves it was accepted).
async fn accepted(gw: &Handle, cfg: Arc<rustls::ClientConfig>) -> bool {
    match h2(gw.listener, cfg).await {
        Ok(mut send) => connect(&mut send, "127.0.32.99:9").await.is_ok(),
        Err(_) => false,
    }
}

fn store(dir: &Path) -> CertStore {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    CertStore::from_pem(&read("chain.pem"), &read("key.pem")).unwrap()
}

#[tokio::test]
async fn new_identity_files_are_used_without_a_restart_and_bad_ones_are_refused() {
    let pki = Pki::new(TD);
    let cfg = pki.gateway("west", "127.0.32.10", Limits::default());
    let IdentitySource::Files { chain, .. } = &cfg.identity else {
        unreachable!()
    };
    let dir: PathBuf = chain.parent().unwrap().to_owned();
    let gw_id = pki.id("eastwest-gateway");
    let gw = Gateway::start(cfg, Default::default()).await.unwrap();
    let old_fp = fingerprint(&pki.ca.bundle().unwrap().roots()[0]);
    let t = gw.trust();
    assert_eq!(
        (t.trusted_roots, t.presented_root.as_deref()),
        (1, Some(old_fp.as_str()))
    );
    assert_eq!(t.spiffe_id.as_deref(), Some(gw_id.as_str()));

    // A client under a root the gateway does not trust yet is refused.
    let next = CaDir::init(
        &pki.tmp.path().join("next"),
        pki.ca.trust_domain(),
        Duration::from_secs(86400),
    )
    .unwrap();
    next.new_intermediate(&cluster("east"), Duration::from_secs(86400))
        .unwrap();
    next.new_intermediate(&cluster("west"), Duration::from_secs(86400))
        .unwrap();
    let new_fp = fingerprint(&next.bundle().unwrap().roots()[0]);
    let web = pki.tmp.path().join("web-next");
    next.issue(
        &cluster("east"),
        &pki.id("web"),
        Duration::from_secs(3600),
        &web,
    )
    .unwrap();
    assert!(!accepted(&gw, client(store(&web), &pki.ca)).await);

    // Both roots in its bundle file: it trusts both, and the client gets in.
    let both = std::fs::read_to_string(pki.ca.bundle_path()).unwrap()
        + &std::fs::read_to_string(next.bundle_path()).unwrap();
    strait_ca::store::write_atomic(&dir.join("bundle.pem"), both.as_bytes(), 0o644).unwrap();
    until(&gw, "trusts both roots", |t| t.trusted_roots == 2).await;
    assert!(accepted(&gw, client(store(&web), &pki.ca)).await);
    let json = reqwest_like(gw.admin, "/trust").await;
    assert!(json.contains(&old_fp) && json.contains(&new_fp), "{json}");

    // Re-issued under the new root, old root dropped (same paths): it
    // presents the new certificate to new handshakes.
    next.issue(&cluster("west"), &gw_id, Duration::from_secs(3600), &dir)
        .unwrap();
    until(&gw, "presents the new certificate", |t| {
        t.roots == [new_fp.clone()] && t.presented_root.as_deref() == Some(new_fp.as_str())
    })
    .await;
    assert!(accepted(&gw, client(store(&web), &next)).await);
    let old_client = pki.client("east", Some("web"));
    assert!(!accepted(&gw, old_client).await, "old root dropped");
    let json = reqwest_like(gw.admin, "/trust").await;
    assert!(
        json.contains(&format!("\"presented_root\": \"{new_fp}\"")),
        "{json}"
    );

    // A broken chain file, then a certificate of another identity: both
    // refused; the gateway keeps its identity and keeps accepting clients.
    let before = gw.trust();
    std::fs::write(dir.join("chain.pem"), "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(gw.trust(), before);
    next.issue(
        &cluster("west"),
        &pki.id("intruder"),
        Duration::from_secs(3600),
        &dir,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(gw.trust(), before);
    assert_eq!(gw.trust().spiffe_id.as_deref(), Some(gw_id.as_str()));
    assert!(accepted(&gw, client(store(&web), &next)).await);
    gw.shutdown().await;
}
