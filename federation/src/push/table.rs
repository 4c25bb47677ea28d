//! The resources of one published version, shared by every delta session:
//! each merged service as its protobuf `Service`, encoded once per change
//! (not per session), and the [`History`] of which services changed.
//!
//! A service's resource is reused from the previous version when its merged
//! form is the same allocation (`merge_from` reuses unchanged services),
//! its local policy is equal and the set of linked clusters is the same
//! (failover names only linked clusters); otherwise it is built again and
//! compared, so a rebuild that changes nothing sends nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_api::delta::encode_service;
use strait_api::proto::config as pb;

use super::Published;
use super::plan::{HISTORY, History, diff};
use crate::catalog::ServiceKey;
use crate::snapshot::service_for;

/// One version's resources.
#[derive(Debug)]
pub struct Table {
    pub version: u64,
    pub services: BTreeMap<ServiceKey, Arc<pb::Service>>,
    /// The linked clusters.
    pub clusters: Vec<String>,
    /// Which services each recent version changed (this one included).
    pub history: History<ServiceKey>,
}

impl Table {
    /// The table for `now`, reusing what `prev` (the previous published
    /// version and its table) already encoded.
    pub fn build(prev: Option<(&Published, &Self)>, now: &Published) -> Self {
        let world = &now.world;
        let same_peers = |p: &Published| p.world.peers.keys().eq(world.peers.keys());
        let mut services = BTreeMap::new();
        for (key, merged) in &now.view.services {
            let reused = prev.and_then(|(pp, pt)| {
                let old = pp.view.services.get(key)?;
                let same = Arc::ptr_eq(old, merged)
                    && same_peers(pp)
                    && pp.world.catalog.policies.get(key) == world.catalog.policies.get(key);
                same.then(|| pt.services.get(key).cloned()).flatten()
            });
            let res =
                reused.unwrap_or_else(|| Arc::new(encode_service(&service_for(world, merged))));
            services.insert(key.clone(), res);
        }
        let clusters = world.peers.keys().map(ToString::to_string).collect();
        let history = match prev {
            None => {
                let mut h = History::new(HISTORY);
                h.push(world.version, Default::default());
                h
            }
            Some((_, pt)) => {
                let mut h = pt.history.clone();
                let d = diff(&pt.services, &services);
                if !d.is_empty() {
                    h.push(world.version, d.touched());
                }
                h
            }
        };
        // With nothing changed, the table keeps its version: a node that
        // holds it is up to date and resumes from it.
        let version = match prev {
            Some((_, pt)) if history.latest() == pt.history.latest() => pt.version,
            _ => world.version,
        };
        Self {
            version,
            services,
            clusters,
            history,
        }
    }
}

/// The latest table, built once per published version by the first
/// session that needs it.
#[derive(Debug, Default)]
pub struct Tables {
    current: Option<(Arc<Published>, Arc<Table>)>,
}

impl Tables {
    /// The table of `published`, or of a newer version already built.
    pub fn get(&mut self, published: &Arc<Published>) -> Arc<Table> {
        if let Some((p, t)) = &self.current {
            if Arc::ptr_eq(p, published) || p.world.version >= published.world.version {
                return t.clone();
            }
        }
        let table = Arc::new(Table::build(
            self.current.as_ref().map(|(p, t)| (&**p, &**t)),
            published,
        ));
        self.current = Some((published.clone(), table.clone()));
        table
    }
}
