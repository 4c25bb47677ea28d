//! Config deltas: what a controller sends a proxy that takes deltas
//! (`Node.deltas`), and how the proxy turns them into a [`Snapshot`].
//!
//! A delta carries whole services (protobuf `strait.config.v1.Service`,
//! see [`encode_service`]) that were added or changed since the version the
//! proxy holds, and the `namespace/name` of services that were removed or
//! left its [`Scope`]. [`apply`] is the pure step a proxy runs: held
//! snapshot + delta -> next snapshot, or an error naming what is wrong (the
//! proxy then NACKs and keeps what it held).
//!
//! What it is not: the controller's bookkeeping (history, resumption) lives
//! in `strait-federation`'s push module; this crate only defines the
//! resources and their application.

use std::collections::BTreeMap;

use crate::cluster::ClusterName;
use crate::proto::config as pb;
use crate::snapshot::{LocalPlace, Service, Snapshot};

mod codec;
mod scope;
#[cfg(test)]
mod tests;

pub use codec::{decode_service, encode_service};
pub use scope::{Scope, ScopePattern};

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    #[error("{field}: {value} is invalid: {reason}")]
    Field {
        field: String,
        value: String,
        reason: String,
    },
    #[error("delta applies on version {base} but version {held} is held")]
    BaseMismatch { base: u64, held: u64 },
    #[error("a delta message without its delta")]
    Empty,
}

/// `namespace/name`: how a removal names a service.
pub fn removal_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The next snapshot: `held` with the delta `pieces` (one message, or the
/// partial messages of one version in order) applied, at `version`. A full
/// delta replaces every service; any other needs `held` at the delta's
/// base version. Services come out ordered by namespace, then name.
pub fn apply(
    held: Option<&Snapshot>,
    version: u64,
    pieces: &[pb::Delta],
) -> Result<Snapshot, DeltaError> {
    let first = pieces.first().ok_or(DeltaError::Empty)?;
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    if !first.full {
        let held_version = held.map_or(0, |h| h.version);
        if held.is_none() || held_version != first.base_version {
            return Err(DeltaError::BaseMismatch {
                base: first.base_version,
                held: held_version,
            });
        }
        for s in held.iter().flat_map(|h| &h.services) {
            services.insert((s.namespace.clone(), s.name.clone()), s.clone());
        }
    }
    for (p, piece) in pieces.iter().enumerate() {
        for r in &piece.removals {
            let Some((ns, name)) = r.split_once('/') else {
                return Err(DeltaError::Field {
                    field: format!("delta[{p}].removals"),
                    value: format!("{r:?}"),
                    reason: "a removal is namespace/name".into(),
                });
            };
            services.remove(&(ns.to_owned(), name.to_owned()));
        }
        for (i, u) in piece.upserts.iter().enumerate() {
            let s = decode_service(&format!("delta[{p}].upserts[{i}]"), u)?;
            services.insert((s.namespace.clone(), s.name.clone()), s);
        }
    }
    let field = |f: &str, v: &str, e: String| DeltaError::Field {
        field: f.to_owned(),
        value: format!("{v:?}"),
        reason: e,
    };
    let local = LocalPlace {
        cluster: ClusterName::new(&first.local_cluster)
            .map_err(|e| field("local_cluster", &first.local_cluster, e.to_string()))?,
        locality: first
            .local_locality
            .parse()
            .map_err(|e: crate::NameError| {
                field("local_locality", &first.local_locality, e.to_string())
            })?,
    };
    let clusters = first
        .clusters
        .iter()
        .map(|c| ClusterName::new(c).map_err(|e| field("clusters", c, e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(Snapshot {
        version,
        local,
        clusters,
        services: services.into_values().collect(),
        exports: None,
    })
}
