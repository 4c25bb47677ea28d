use std::fs;
use std::time::Duration;

use strait_api::{ClusterName, TrustDomain};
use strait_ca::CaDir;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").unwrap()
}

fn c(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

fn ca(dir: &Path) -> CaDir {
    CaDir::init(dir, &td(), Duration::from_secs(3600)).unwrap()
}

fn token(ca: &CaDir, cluster: &str, expires_unix: u64) -> PeeringToken {
    PeeringToken {
        cluster: c(cluster),
        trust_domain: td(),
        bundle_pem: fs::read_to_string(ca.bundle_path()).unwrap(),
        controller: "127.0.0.1:9000".parse().unwrap(),
        gateways: vec!["127.0.0.1:15443".parse().unwrap()],
        server_identity: td()
            .workload_id("strait-system", "controller-west")
            .unwrap(),
        secret: new_secret(),
        expires_unix,
    }
}

#[test]
fn tokens_round_trip_and_check_against_our_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("ca"));
    let t = token(&ca, "west", now_unix() + 60);
    let text = t.encode();
    assert!(
        text.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    );
    let back = PeeringToken::decode(&text).unwrap();
    assert_eq!(back, t);
    back.check(&c("east"), &ca.bundle().unwrap()).unwrap();

    let err = back.check(&c("west"), &ca.bundle().unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "cannot link cluster west with itself");
    let err = PeeringToken::decode("not a token!")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("peering token is malformed"), "{err}");
}

#[test]
fn a_token_of_another_root_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(&dir.path().join("ours"));
    let theirs = ca(&dir.path().join("theirs"));
    let t = token(&theirs, "rogue", now_unix() + 60);
    let err = t.check(&c("east"), &ours.bundle().unwrap()).unwrap_err();
    assert!(matches!(err, PeeringError::DifferentRoot { .. }));
    assert!(
        err.to_string()
            .contains("cluster rogue trusts a different root CA"),
        "{err}"
    );
}

#[test]
fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&dir.path().join("ca"));
    let t = token(&ca, "west", now_unix() - 5);
    let err = t
        .check(&c("east"), &ca.bundle().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expired") && err.contains("new one"), "{err}");
}

#[test]
fn secrets_are_one_time_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = LinkStore::open(dir.path()).unwrap();
    let s = new_secret();
    store.add_secret(&s, Duration::from_secs(60)).unwrap();
    let raw = fs::read_to_string(dir.path().join("peering-secrets.json")).unwrap();
    assert!(!raw.contains(&s), "only the hash is stored");
    drop(store);
    let store = LinkStore::open(dir.path()).unwrap();
    store.consume_secret(&s).unwrap();
    assert!(matches!(
        store.consume_secret(&s),
        Err(PeeringError::BadSecret)
    ));
    assert!(matches!(
        store.consume_secret("guess"),
        Err(PeeringError::BadSecret)
    ));
}

#[test]
fn links_persist_and_removal_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = LinkStore::open(dir.path()).unwrap();
    let link = Link {
        peer: c("west"),
        peer_identity: td()
            .workload_id("strait-system", "controller-west")
            .unwrap(),
        controller: "127.0.0.1:9000".parse().unwrap(),
        gateways: vec![],
        fail_mode: FailMode::FailStatic,
        lease_secs: None,
        established_unix: now_unix(),
    };
    store.insert(link.clone()).unwrap();
    store
        .set_fail_mode(&c("west"), FailMode::FailClosed)
        .unwrap();
    drop(store);
    let store = LinkStore::open(dir.path()).unwrap();
    let got = store.get(&c("west")).unwrap();
    assert_eq!(got.fail_mode, FailMode::FailClosed);
    assert_eq!(got.lease(Duration::from_secs(30)), Duration::from_secs(30));
    // A per-link lease persists; one out of range is refused and changes nothing.
    let got = store
        .update(&c("west"), |l| l.lease_secs = Some(45))
        .unwrap();
    assert_eq!(got.lease(Duration::from_secs(30)), Duration::from_secs(45));
    for bad in [0, 86_401] {
        let e = store
            .update(&c("west"), |l| l.lease_secs = Some(bad))
            .unwrap_err();
        assert!(e.to_string().contains("between 1s and 24h"), "{e}");
    }
    drop(store);
    let store = LinkStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&c("west")).unwrap().lease_secs, Some(45));
    assert_eq!(got.peer_identity, link.peer_identity);
    store.remove(&c("west")).unwrap();
    assert!(matches!(
        store.remove(&c("west")),
        Err(PeeringError::NotLinked(_))
    ));
    drop(store);
    assert!(LinkStore::open(dir.path()).unwrap().links().is_empty());
}

#[test]
fn unused_secrets_can_be_revoked_one_or_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = LinkStore::open(dir.path()).unwrap();
    let (a, b, x) = (new_secret(), new_secret(), new_secret());
    store.add_secret(&a, Duration::from_secs(60)).unwrap();
    store.add_secret(&b, Duration::from_secs(60)).unwrap();
    store.add_secret(&x, Duration::from_secs(60)).unwrap();
    assert_eq!(store.pending_secrets(), 3);
    assert!(store.revoke_secret(&a).unwrap());
    assert!(!store.revoke_secret(&a).unwrap(), "revoked twice");
    assert!(matches!(
        store.consume_secret(&a),
        Err(PeeringError::BadSecret)
    ));
    // A used secret is nothing to revoke.
    store.consume_secret(&x).unwrap();
    assert!(!store.revoke_secret(&x).unwrap());
    // Revocation is durable.
    drop(store);
    let store = LinkStore::open(dir.path()).unwrap();
    assert_eq!(store.pending_secrets(), 1);
    assert_eq!(store.revoke_all_secrets().unwrap(), 1);
    assert!(matches!(
        store.consume_secret(&b),
        Err(PeeringError::BadSecret)
    ));
    assert_eq!(store.pending_secrets(), 0);
}
