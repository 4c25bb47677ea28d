//! The exporter's change log: exported services with the version at which
//! each last changed, and tombstones for withdrawn ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use strait_api::proto::federation::ExportedService;
use strait_api::snapshot::Health;
use strait_api::{ClusterName, Locality, TrustDomain};

use crate::catalog::{Export, LocalCatalog, ServiceKey};

/// Tombstones kept before the oldest are compacted (peers further behind
/// get a full resend).
pub const MAX_TOMBSTONES: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    revision: u64,
    export: Export,
    /// `None`: withdrawn (tombstone).
    service: Option<Arc<ExportedService>>,
}

/// What one peer needs to catch up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub reset: bool,
    pub version: u64,
    pub upserts: Vec<Arc<ExportedService>>,
    pub removals: Vec<ServiceKey>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        !self.reset && self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Versioned exports of one controller run (`epoch`).
#[derive(Debug, Clone)]
pub struct ExportLog {
    epoch: String,
    version: u64,
    entries: BTreeMap<ServiceKey, Entry>,
    /// Tombstones with a revision up to this one were dropped.
    compacted_through: u64,
    max_tombstones: usize,
}

impl ExportLog {
    pub fn new(epoch: String) -> Self {
        Self::with_max_tombstones(epoch, MAX_TOMBSTONES)
    }

    pub fn with_max_tombstones(epoch: String, max_tombstones: usize) -> Self {
        Self {
            epoch,
            version: 0,
            entries: BTreeMap::new(),
            compacted_through: 0,
            max_tombstones,
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Exported services (not tombstones).
    pub fn exported(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.service.is_some())
            .count()
    }

    /// Brings the log up to `catalog`; returns whether anything changed.
    pub fn update(
        &mut self,
        cluster: &ClusterName,
        td: &TrustDomain,
        locality: &Locality,
        catalog: &LocalCatalog,
        health: &dyn Fn(&ServiceKey, SocketAddr) -> Health,
    ) -> bool {
        let next = self.version + 1;
        let mut changed = false;
        for (key, reg) in catalog
            .services
            .iter()
            .filter(|(_, r)| r.export.is_exported())
        {
            let svc =
                super::convert::export_service(cluster, td, locality, reg, &|a| health(key, a));
            let same = self
                .entries
                .get(key)
                .is_some_and(|e| e.export == reg.export && e.service.as_deref() == Some(&svc));
            if !same {
                let entry = Entry {
                    revision: next,
                    export: reg.export.clone(),
                    service: Some(Arc::new(svc)),
                };
                self.entries.insert(key.clone(), entry);
                changed = true;
            }
        }
        for (key, e) in &mut self.entries {
            let live = catalog
                .services
                .get(key)
                .is_some_and(|r| r.export.is_exported());
            if !live && e.service.is_some() {
                *e = Entry {
                    revision: next,
                    export: Export::None,
                    service: None,
                };
                changed = true;
            }
        }
        if changed {
            self.version = next;
            self.compact();
        }
        changed
    }

    fn compact(&mut self) {
        let mut tombs: Vec<(u64, ServiceKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.service.is_none())
            .map(|(k, e)| (e.revision, k.clone()))
            .collect();
        if tombs.len() <= self.max_tombstones {
            return;
        }
        tombs.sort();
        let drop = tombs.len() - self.max_tombstones;
        for (rev, key) in tombs.into_iter().take(drop) {
            self.entries.remove(&key);
            self.compacted_through = self.compacted_through.max(rev);
        }
    }

    /// What `peer`, at (`epoch`, `since`), needs to reach this version.
    pub fn delta(&self, peer: &ClusterName, epoch: &str, since: u64) -> Delta {
        let resumable =
            epoch == self.epoch && since <= self.version && since >= self.compacted_through;
        let mut d = Delta {
            reset: !resumable,
            version: self.version,
            ..Delta::default()
        };
        for (key, e) in &self.entries {
            let visible = e.service.as_ref().filter(|_| e.export.includes(peer));
            if resumable && e.revision <= since {
                continue;
            }
            match visible {
                Some(svc) => d.upserts.push(svc.clone()),
                None if resumable => d.removals.push(key.clone()),
                None => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use strait_api::snapshot::{Protocol, ServicePort};

    use super::*;
    use crate::catalog::{EndpointSpec, Registration};

    fn c(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn catalog(entries: &[(&str, Export)]) -> LocalCatalog {
        let mut cat = LocalCatalog::default();
        for (name, export) in entries {
            let reg = Registration {
                name: (*name).into(),
                namespace: "default".into(),
                ports: vec![ServicePort {
                    port: 80,
                    protocol: Protocol::Http1,
                }],
                endpoints: vec![EndpointSpec {
                    address: "10.0.0.1:80".parse().unwrap(),
                    locality: None,
                    identity: None,
                    weight: 1,
                }],
                export: export.clone(),
                health_check: None,
            };
            cat.services.insert(reg.key(), reg);
        }
        cat
    }

    fn update(log: &mut ExportLog, cat: &LocalCatalog, health: Health) -> bool {
        let td = TrustDomain::new("strait.local").unwrap();
        log.update(&c("east"), &td, &Locality::default(), cat, &|_, _| health)
    }

    fn names(d: &Delta) -> Vec<String> {
        d.upserts.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn deltas_carry_only_what_changed_since_the_peer_version() {
        let mut log = ExportLog::new("e1".into());
        let cat = catalog(&[
            ("a", Export::All),
            ("b", Export::All),
            ("local", Export::None),
        ]);
        assert!(update(&mut log, &cat, Health::Healthy));
        assert!(
            !update(&mut log, &cat, Health::Healthy),
            "no change, no new version"
        );
        let full = log.delta(&c("west"), "", 0);
        assert!(full.reset);
        assert_eq!(names(&full), ["a", "b"]);
        let v1 = log.version();
        assert!(log.delta(&c("west"), "e1", v1).is_empty());

        // Health changes are changes.
        assert!(update(&mut log, &cat, Health::Unhealthy));
        let d = log.delta(&c("west"), "e1", v1);
        assert!(!d.reset);
        assert_eq!(names(&d), ["a", "b"]);
        assert_eq!(d.upserts[0].endpoints[0].health, "unhealthy");
        assert_eq!(d.upserts[0].cluster, "east");

        let v2 = log.version();
        let cat = catalog(&[("a", Export::All), ("b", Export::None)]);
        assert!(update(&mut log, &cat, Health::Unhealthy));
        let d = log.delta(&c("west"), "e1", v2);
        assert!(d.upserts.is_empty());
        assert_eq!(d.removals, vec![ServiceKey::new("default", "b")]);
    }

    #[test]
    fn named_exports_are_visible_only_to_the_named_peers() {
        let mut log = ExportLog::new("e1".into());
        let cat = catalog(&[("a", Export::To(vec![c("central")]))]);
        update(&mut log, &cat, Health::Healthy);
        assert!(names(&log.delta(&c("west"), "", 0)).is_empty());
        assert_eq!(names(&log.delta(&c("central"), "", 0)), ["a"]);
        let v = log.version();
        let cat = catalog(&[("a", Export::To(vec![c("west")]))]);
        update(&mut log, &cat, Health::Healthy);
        let d = log.delta(&c("central"), "e1", v);
        assert_eq!(d.removals, vec![ServiceKey::new("default", "a")]);
        assert_eq!(names(&log.delta(&c("west"), "e1", v)), ["a"]);
    }

    #[test]
    fn a_new_epoch_or_compacted_tombstones_force_a_full_resend() {
        let mut log = ExportLog::with_max_tombstones("e2".into(), 1);
        update(
            &mut log,
            &catalog(&[("a", Export::All), ("b", Export::All)]),
            Health::Healthy,
        );
        let v = log.version();
        assert!(log.delta(&c("west"), "e1", v).reset, "another epoch");
        assert!(log.delta(&c("west"), "e2", v + 5).reset, "from the future");
        update(&mut log, &catalog(&[("b", Export::All)]), Health::Healthy);
        update(&mut log, &catalog(&[]), Health::Healthy);
        // Two tombstones, one kept: a peer at `v` missed a compacted one.
        let d = log.delta(&c("west"), "e2", v);
        assert!(d.reset);
        assert!(d.upserts.is_empty());
        assert!(!log.delta(&c("west"), "e2", log.version() - 1).reset);
    }
}
