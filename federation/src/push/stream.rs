//! One delta session (`Node.deltas`): send the node what takes it from the
//! version it holds to the current one, wait for its ACK or NACK, repeat
//! on each change.
//!
//! One delta is in flight at a time: changes that come while it is are
//! folded into the next. An ACK moves the node to the delta's version; a
//! NACK leaves it where it was (it keeps its last good state), and the next
//! change is planned from there. A full state goes out in parts of
//! [`CHUNK`] services, and only [`FULL_AT_ONCE`] sessions send one at a
//! time, so a thousand proxies reconnecting at once cost the controller a
//! bounded amount of memory.

use std::sync::Arc;

use strait_api::delta::{Scope, removal_key};
use strait_api::proto::config as pb;
use strait_api::proto::config::{SnapshotRequest, SnapshotResponse};
use strait_api::snapshot::LocalPlace;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Status, Streaming};

use super::plan::{Held, Plan, plan};
use super::table::Table;
use super::{Inner, Nack};
use crate::catalog::ServiceKey;

/// Services per message of a full state.
pub const CHUNK: usize = 100;

/// Sessions that may send a full state at once (each holds at most the
/// channel's few messages of [`CHUNK`] services in memory).
pub const FULL_AT_ONCE: usize = 8;

/// The messages that carry `plan` (from `base`) to a node at `place`,
/// built one at a time as they are sent (a full state is never held whole
/// per session).
pub fn messages<'a>(
    table: &'a Table,
    plan: &'a Plan<ServiceKey>,
    epoch: &'a str,
    base: u64,
    place: &'a LocalPlace,
) -> impl Iterator<Item = SnapshotResponse> + 'a {
    let chunks: Vec<&[ServiceKey]> = if plan.upserts.is_empty() {
        vec![&[]]
    } else {
        plan.upserts.chunks(CHUNK).collect()
    };
    let last = chunks.len() - 1;
    chunks.into_iter().enumerate().map(move |(i, keys)| {
        let removals = if i == 0 {
            plan.removals
                .iter()
                .map(|k| removal_key(&k.namespace, &k.name))
                .collect()
        } else {
            Vec::new()
        };
        let delta = pb::Delta {
            epoch: epoch.to_owned(),
            base_version: if plan.full.is_some() { 0 } else { base },
            full: plan.full.is_some(),
            full_reason: plan.full.clone().unwrap_or_default(),
            partial: i < last,
            local_cluster: place.cluster.to_string(),
            local_locality: place.locality.to_string(),
            clusters: table.clusters.clone(),
            upserts: keys
                .iter()
                .filter_map(|k| table.services.get(k).map(|s| (**s).clone()))
                .collect(),
            removals,
        };
        SnapshotResponse {
            version: table.version,
            snapshot_json: Vec::new(),
            delta: Some(delta),
        }
    })
}

/// A delta sent and not yet answered.
struct InFlight {
    version: u64,
    _full: Option<OwnedSemaphorePermit>,
}

pub(super) async fn delta_session(
    inner: Arc<Inner>,
    id: u64,
    place: LocalPlace,
    scope: Scope,
    mut held: Held,
    mut inbound: Streaming<SnapshotRequest>,
    tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let mut warm = inner.warm.clone();
    let _ = warm.wait_for(|w| *w).await;
    let mut world = inner.world.clone();
    // The version the node holds (what a delta applies on), and `held`:
    // the latest version whose services in scope equal the node's, which
    // planning starts from (changes outside the scope move it on without
    // a message, so a quiet scoped node never falls out of the history).
    let mut node_version = held.version;
    let mut dirty = true;
    let mut in_flight: Option<InFlight> = None;
    'session: loop {
        if dirty && in_flight.is_none() {
            dirty = false;
            let published = world.borrow_and_update().clone();
            let table = inner.table(&published);
            drop(published);
            let p = plan(
                &held,
                &inner.epoch,
                &table.history,
                &table.services,
                |k: &ServiceKey| scope.contains(&k.namespace, &k.name),
            );
            if p.is_empty() {
                held.version = table.version;
            } else {
                let permit = match &p.full {
                    Some(reason) => {
                        tracing::debug!(proxy = id, %reason, "sending the full state");
                        inner.full_permits.clone().acquire_owned().await.ok()
                    }
                    None => None,
                };
                for m in messages(&table, &p, &inner.epoch, node_version, &place) {
                    if tx.send(Ok(m)).await.is_err() {
                        break 'session;
                    }
                }
                inner.metrics.push("sent");
                inner.update(id, |s| s.sent_version = table.version);
                in_flight = Some(InFlight {
                    version: table.version,
                    _full: permit,
                });
            }
        }
        tokio::select! {
            changed = world.changed() => {
                if changed.is_err() {
                    break;
                }
                dirty = true;
            }
            msg = inbound.message() => {
                let Ok(Some(m)) = msg else { break };
                let Some(f) = in_flight.take_if(|f| f.version == m.version) else {
                    continue;
                };
                if m.error.is_empty() {
                    held = Held { epoch: inner.epoch.clone(), version: f.version };
                    node_version = f.version;
                    inner.metrics.push("ack");
                    inner.update(id, |s| {
                        s.acked_version = s.acked_version.max(f.version);
                        s.last_nack = None;
                    });
                } else {
                    inner.metrics.push("nack");
                    tracing::warn!(proxy = id, version = m.version, held = held.version, error = %m.error, "proxy refused a delta; it keeps its previous state");
                    inner.update(id, |s| s.last_nack = Some(Nack { version: m.version, error: m.error.clone() }));
                }
            }
            () = tx.closed() => break,
        }
    }
    inner.session_ended(id);
}
