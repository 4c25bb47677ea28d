//! Catalog sync and peering: protobuf bytes decoded as the federation
//! messages and fed to the importer's pure [`Imports::apply`], and peering
//! tokens ([`PeeringToken::decode`] / [`PeeringToken::check`]).
//!
//! Invariants: decoding and applying never panic; whatever a peer sends,
//! what gets imported is only services the peer claims for itself (its own
//! cluster name), with valid labels, ports and endpoints whose identities
//! are in our trust domain, within the per-peer limits; a refused batch
//! changes nothing; a decoded token re-encodes to itself and is checked
//! without panicking.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use prost::Message as _;
use strait_api::proto::federation::{EstablishRequest, SyncRequest, SyncUpdate};
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::TrustBundle;
use strait_federation::catalog::ServiceKey;
use strait_federation::peering::{FailMode, Link, PeeringToken};
use strait_federation::sync::SyncConfig;
use strait_federation::sync::import::Imports;

/// The peer every batch in [`check`] comes from.
pub const PEER: &str = "west";
pub const TRUST_DOMAIN: &str = "strait.local";

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("fixture: {e}"))
}

/// Small limits, so random input reaches them.
pub fn limits() -> SyncConfig {
    SyncConfig {
        max_services_per_peer: 8,
        max_endpoints_per_service: 8,
        ..SyncConfig::default()
    }
}

/// The link to [`PEER`].
pub fn link() -> Link {
    Link {
        peer: must(ClusterName::new(PEER)),
        peer_identity: must(SpiffeId::parse(
            "spiffe://strait.local/ns/strait/sa/controller",
        )),
        controller: ([127, 0, 0, 1], 15010).into(),
        gateways: vec![([127, 0, 0, 1], 15443).into()],
        lease_secs: None,
        fail_mode: FailMode::FailStatic,
        established_unix: 0,
    }
}

/// Splits `bytes` into up to three messages (length-prefixed by one byte
/// each) and applies them, as one batch, to fresh imports.
pub fn check(bytes: &[u8]) {
    let _ = SyncRequest::decode(bytes);
    let _ = EstablishRequest::decode(bytes);
    let mut batch = Vec::new();
    let mut rest = bytes;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (msg, tail) = tail.split_at(if batch.len() == 2 { tail.len() } else { n });
        rest = tail;
        if let Ok(u) = SyncUpdate::decode(msg) {
            batch.push(u);
        }
    }
    if let Ok(u) = SyncUpdate::decode(bytes) {
        batch.insert(0, u);
    }
    check_batch(&batch);
}

/// Applies `batch` from [`PEER`] and checks what was imported.
pub fn check_batch(batch: &[SyncUpdate]) {
    let td = must(TrustDomain::new(TRUST_DOMAIN));
    let imports = Imports::new(td.clone());
    let cfg = limits();
    let link = link();
    let links = BTreeMap::from([(link.peer.clone(), link.clone())]);
    let before = imports.views(&links);
    let result = imports.apply(&link.peer, batch, &cfg);
    let after = imports.views(&links);
    let Some(view) = after.get(&link.peer) else {
        panic!("no view for the linked peer");
    };
    match result {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(before, after, "a refused batch changed the imports ({e})");
        }
        Ok(()) => {
            assert!(view.services.len() <= cfg.max_services_per_peer);
            let claimed: Vec<ServiceKey> = batch
                .iter()
                .flat_map(|u| &u.upserts)
                .filter(|s| s.cluster == PEER)
                .map(|s| ServiceKey::new(&s.namespace, &s.name))
                .collect();
            for (key, svc) in &view.services {
                assert!(
                    claimed.contains(key),
                    "{key} imported but never claimed by {PEER}"
                );
                assert!(!svc.ports.is_empty(), "{key} imported without ports");
                assert!(svc.endpoints.len() <= cfg.max_endpoints_per_service);
                for ep in &svc.endpoints {
                    assert_eq!(ep.identity.trust_domain_str(), TRUST_DOMAIN, "{key}");
                    assert!(ep.weight >= 1, "{key}");
                }
            }
            let status = imports.status();
            if batch.is_empty() {
                assert!(status.is_empty(), "an empty batch recorded a peer");
            } else {
                assert_eq!(status.len(), 1);
                assert!(status[0].up && status[0].services == view.services.len());
            }
        }
    }
}

fn bundle() -> &'static TrustBundle {
    static B: OnceLock<TrustBundle> = OnceLock::new();
    B.get_or_init(|| {
        let td = must(TrustDomain::new(TRUST_DOMAIN));
        let (_, pem) = must(strait_ca::Authority::new_root(
            &td,
            Duration::from_secs(3600),
        ));
        must(TrustBundle::from_pem(td, &pem.cert))
    })
}

/// Decodes `bytes` as a peering token; a token that decodes re-encodes to
/// itself and is checked against our bundle without panicking.
pub fn check_peering_token(bytes: &[u8]) {
    let text = crate::text(bytes);
    let token = match PeeringToken::decode(&text) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.len() <= 2 * text.len() + 512,
                "error of {} bytes",
                msg.len()
            );
            return;
        }
    };
    let again = token.encode();
    assert_eq!(PeeringToken::decode(&again).ok().as_ref(), Some(&token));
    let ours = must(ClusterName::new("east"));
    if token.check(&ours, bundle()).is_ok() {
        assert_ne!(token.cluster, ours, "self link accepted");
        assert_eq!(token.trust_domain.as_str(), TRUST_DOMAIN);
    }
}
