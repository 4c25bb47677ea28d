//! Links and pending peering secrets in Kubernetes objects: the
//! [`LinkBackend`] the controller uses in Kubernetes mode, so a replica
//! that becomes leader loads the links the previous leader made instead
//! of starting from an empty `state_dir`.
//!
//! - one `StraitLink` (`strait.io/v1alpha1`, namespaced) per peer in the
//!   controller's namespace, named after the peer cluster: `spec` is the
//!   link (peer, the SPIFFE ID its controller must present, its controller
//!   and gateway addresses, fail mode, lease), `status.conditions` says
//!   when this controller stored it;
//! - one Secret, `strait-peering` (key `pending.json`), holding the
//!   SHA-256 hashes and expiries of unused peering-token secrets (never a
//!   secret itself).
//!
//! Every write is a read-modify-write with the object's `resourceVersion`,
//! so a write racing another replica's (two leaders for a moment) fails
//! with a conflict instead of silently overwriting it; a consumed secret
//! stays consumed.
//!
//! The store calls backends synchronously, so each call blocks its tokio
//! worker with `block_in_place` (a multi-thread runtime is required;
//! [`KubeLinkBackend::new`] refuses another) and gives up after 10 s.
//!
//! What it is not: it does not watch these objects (only the leader
//! writes them, and a new leader reads them once when it starts), and
//! `status` records when a link was stored, not its last sync.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use strait_api::{ClusterName, SpiffeId};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::peering::{FailMode, Link, LinkBackend, PeeringError, PendingSecrets, Stored};

/// The Secret holding pending token secrets' hashes.
pub const PEERING_SECRET: &str = "strait-peering";
const PENDING_KEY: &str = "pending.json";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A link to one peer cluster, kept by that cluster's controller in its
/// own namespace; the object is named after the peer.
// Two `printcolumn(...)` with the same keys are two columns, not a
// duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.io",
    version = "v1alpha1",
    kind = "StraitLink",
    namespaced,
    status = "StraitLinkStatus",
    shortname = "slink",
    printcolumn(name = "Controller", type_ = "string", json_path = ".spec.controller"),
    printcolumn(name = "Fail mode", type_ = "string", json_path = ".spec.failMode")
)]
#[serde(rename_all = "camelCase")]
pub struct StraitLinkSpec {
    /// The peer cluster's name (equal to this object's name).
    pub peer: String,
    /// The SPIFFE ID the peer's controller must present, both ways
    /// (`spiffe://<td>/ns/strait-system/sa/controller-<peer>`).
    pub peer_identity: String,
    /// The peer controller's gRPC address, `host:port`.
    pub controller: String,
    /// The peer's east-west gateways, `host:port` each.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// What happens to the peer's imported endpoints when its lease runs out.
    #[serde(default)]
    pub fail_mode: LinkFailMode,
    /// Seconds the peer's data stays fresh without a message (1 to 86400);
    /// unset: the controller's `sync.lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub lease_seconds: Option<u64>,
    /// When the link was established (unix seconds).
    pub established_unix: u64,
}

/// [`FailMode`] in the CRD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LinkFailMode {
    #[default]
    FailStatic,
    FailClosed,
}

/// What the controller says of a stored link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StraitLinkStatus {
    #[serde(default)]
    pub conditions: Vec<LinkCondition>,
}

/// One condition (`Stored`: the controller wrote this link).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StraitLinkSpec {
    pub fn from_link(link: &Link) -> Self {
        Self {
            peer: link.peer.to_string(),
            peer_identity: link.peer_identity.to_string(),
            controller: link.controller.to_string(),
            gateways: link.gateways.iter().map(ToString::to_string).collect(),
            fail_mode: match link.fail_mode {
                FailMode::FailStatic => LinkFailMode::FailStatic,
                FailMode::FailClosed => LinkFailMode::FailClosed,
            },
            lease_seconds: link.lease_secs,
            established_unix: link.established_unix,
        }
    }

    /// The link this spec describes, checked field by field; `name` is the
    /// object's name, which must be the peer's.
    pub fn to_link(&self, name: &str) -> Result<Link, String> {
        let field = |f: &str, v: &str, e: &dyn std::fmt::Display| format!("spec.{f} {v:?}: {e}");
        let peer = ClusterName::new(&self.peer).map_err(|e| field("peer", &self.peer, &e))?;
        if name != self.peer {
            return Err(format!(
                "is named {name:?} but spec.peer is {:?}; a link is named after its peer",
                self.peer
            ));
        }
        let peer_identity = self
            .peer_identity
            .parse::<SpiffeId>()
            .map_err(|e| field("peerIdentity", &self.peer_identity, &e))?;
        let controller = self
            .controller
            .parse::<SocketAddr>()
            .map_err(|e| field("controller", &self.controller, &e))?;
        let gateways = self
            .gateways
            .iter()
            .map(|g| {
                g.parse::<SocketAddr>()
                    .map_err(|e| field("gateways", g, &e))
            })
            .collect::<Result<_, _>>()?;
        if let Some(secs) = self.lease_seconds {
            crate::peering::check_lease(secs).map_err(|e| e.to_string())?;
        }
        Ok(Link {
            peer,
            peer_identity,
            controller,
            gateways,
            fail_mode: match self.fail_mode {
                LinkFailMode::FailStatic => FailMode::FailStatic,
                LinkFailMode::FailClosed => FailMode::FailClosed,
            },
            lease_secs: self.lease_seconds,
            established_unix: self.established_unix,
        })
    }
}

/// Links as `StraitLink` objects and pending secrets in the Secret
/// [`PEERING_SECRET`], in one namespace.
#[derive(Debug)]
pub struct KubeLinkBackend {
    links: Api<StraitLink>,
    secrets: Api<Secret>,
    namespace: String,
    rt: Handle,
    /// The Secret's `resourceVersion` as last read or written: a write
    /// from another replica in between makes ours a conflict.
    secret_version: Mutex<Option<String>>,
}

impl KubeLinkBackend {
    /// A backend in `namespace`; must be called on a multi-thread tokio
    /// runtime (the store blocks a worker per call).
    pub fn new(client: Client, namespace: &str) -> Result<Self, PeeringError> {
        let store = format!("kubernetes namespace {namespace}");
        let rt = Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
            .ok_or_else(|| PeeringError::Store {
                store,
                reason: "needs a multi-thread tokio runtime".into(),
            })?;
        Ok(Self {
            links: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            rt,
            secret_version: Mutex::new(None),
        })
    }

    fn err(&self, reason: String) -> PeeringError {
        PeeringError::Store {
            store: self.describe(),
            reason,
        }
    }

    /// Runs `f` to completion from the store's synchronous call, with a
    /// deadline.
    fn block<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, PeeringError> {
        let call = async { tokio::time::timeout(CALL_TIMEOUT, f).await };
        let out = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(call))
            }
            Ok(_) => return Err(self.err("needs a multi-thread tokio runtime".into())),
            Err(_) => self.rt.block_on(call),
        };
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(format!("{what}: {}", explain(&e)))),
            Err(_) => Err(self.err(format!(
                "{what}: no answer from the api server within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    fn set_version(&self, v: Option<String>) {
        *self
            .secret_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }

    fn version(&self) -> Option<String> {
        self.secret_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// An API error in words an operator can act on.
fn explain(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => format!(
            "not found ({}): is the StraitLink CRD installed (strait install kubernetes)?",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden ({}): the controller's Role must allow straitlinks and the Secret {PEERING_SECRET}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 409 => format!(
            "conflict ({}): another replica wrote it meanwhile (two leaders?); not overwritten",
            s.message
        ),
        other => other.to_string(),
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl LinkBackend for KubeLinkBackend {
    fn describe(&self) -> String {
        format!("kubernetes namespace {}", self.namespace)
    }

    fn load(&self) -> Result<Stored, PeeringError> {
        let list = self.block("list straitlinks", self.links.list(&ListParams::default()))?;
        let mut links = BTreeMap::new();
        for obj in list.items {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let link = obj
                .spec
                .to_link(&name)
                .map_err(|e| self.err(format!("StraitLink {name}: {e}")))?;
            links.insert(link.peer.clone(), link);
        }
        let secret = self.block(
            &format!("get secret {PEERING_SECRET}"),
            self.secrets.get_opt(PEERING_SECRET),
        )?;
        let secrets = match secret {
            None => PendingSecrets::default(),
            Some(s) => {
                self.set_version(s.metadata.resource_version.clone());
                match s.data.as_ref().and_then(|d| d.get(PENDING_KEY)) {
                    None => PendingSecrets::default(),
                    Some(raw) => serde_json::from_slice(&raw.0).map_err(|e| {
                        self.err(format!("secret {PEERING_SECRET} key {PENDING_KEY}: {e}"))
                    })?,
                }
            }
        };
        Ok(Stored { links, secrets })
    }

    fn put_link(&self, link: &Link) -> Result<(), PeeringError> {
        let name = link.peer.to_string();
        let spec = StraitLinkSpec::from_link(link);
        let current = self.block(&format!("get straitlink {name}"), self.links.get_opt(&name))?;
        let pp = PostParams::default();
        match current {
            Some(mut obj) => {
                obj.spec = spec;
                self.block(
                    &format!("replace straitlink {name}"),
                    self.links.replace(&name, &pp, &obj),
                )?;
            }
            None => {
                let obj = StraitLink {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "strait".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                };
                self.block(
                    &format!("create straitlink {name}"),
                    self.links.create(&pp, &obj),
                )?;
            }
        }
        let status = serde_json::json!({"status": StraitLinkStatus {
            conditions: vec![LinkCondition {
                type_: "Stored".into(),
                status: "True".into(),
                last_transition_time: Some(now_rfc3339()),
                reason: Some("Established".into()),
                message: Some(format!("link to {name} stored by this cluster's controller")),
            }],
        }});
        self.block(
            &format!("patch straitlink {name} status"),
            self.links
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)),
        )?;
        Ok(())
    }

    fn delete_link(&self, peer: &ClusterName) -> Result<(), PeeringError> {
        let name = peer.to_string();
        self.block(&format!("delete straitlink {name}"), async {
            match self.links.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn put_secrets(&self, secrets: &PendingSecrets) -> Result<(), PeeringError> {
        let json = serde_json::to_vec(secrets).unwrap_or_default();
        let obj = Secret {
            metadata: ObjectMeta {
                name: Some(PEERING_SECRET.into()),
                namespace: Some(self.namespace.clone()),
                resource_version: self.version(),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "strait".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(PENDING_KEY.to_owned(), ByteString(json))])),
            ..Default::default()
        };
        let pp = PostParams::default();
        let written = if obj.metadata.resource_version.is_some() {
            self.block(
                &format!("replace secret {PEERING_SECRET}"),
                self.secrets.replace(PEERING_SECRET, &pp, &obj),
            )?
        } else {
            self.block(
                &format!("create secret {PEERING_SECRET}"),
                self.secrets.create(&pp, &obj),
            )?
        };
        self.set_version(written.metadata.resource_version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StraitLinkSpec {
        StraitLinkSpec {
            peer: "west".into(),
            peer_identity: "spiffe://strait.local/ns/strait-system/sa/controller-west".into(),
            controller: "10.0.0.1:8610".into(),
            gateways: vec!["10.0.0.2:15443".into()],
            fail_mode: LinkFailMode::FailClosed,
            lease_seconds: Some(45),
            established_unix: 1_700_000_000,
        }
    }

    #[test]
    fn a_link_round_trips_through_its_spec() {
        let link = spec().to_link("west").unwrap();
        assert_eq!(link.fail_mode, FailMode::FailClosed);
        assert_eq!(link.lease_secs, Some(45));
        assert_eq!(StraitLinkSpec::from_link(&link), spec());
    }

    #[test]
    fn a_bad_spec_is_refused_naming_the_field() {
        type Edit = fn(&mut StraitLinkSpec);
        let table: [(&str, Edit, &str); 6] = [
            (
                "west",
                |s| s.controller = "nowhere".into(),
                "spec.controller \"nowhere\"",
            ),
            (
                "west",
                |s| s.gateways.push("x:y".into()),
                "spec.gateways \"x:y\"",
            ),
            (
                "west",
                |s| s.peer_identity = "http://x".into(),
                "spec.peerIdentity",
            ),
            ("west", |s| s.peer = "West_1".into(), "spec.peer \"West_1\""),
            ("west", |s| s.lease_seconds = Some(0), "between 1s and 24h"),
            ("east", |_| {}, "named \"east\" but spec.peer is \"west\""),
        ];
        for (name, f, want) in table {
            let mut s = spec();
            f(&mut s);
            let e = s.to_link(name).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn the_crd_has_a_schema_a_status_subresource_and_kebab_fail_modes() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(StraitLink::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "straitlinks.strait.io");
        let v = &crd["spec"]["versions"][0];
        assert!(v["subresources"]["status"].is_object(), "{v:#}");
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let modes = spec["properties"]["failMode"].to_string();
        assert!(
            modes.contains("fail-static") && modes.contains("fail-closed"),
            "{modes}"
        );
        let required = spec["required"].to_string();
        for f in ["peer", "peerIdentity", "controller", "establishedUnix"] {
            assert!(required.contains(f), "{f} required: {required}");
        }
    }
}
