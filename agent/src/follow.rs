//! Who follows which controller: the `controller:` block every role's
//! config shares, and [`follow`], the one way roles subscribe.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strait_api::delta::ScopePattern;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Node, Registration, Scope};
use strait_api::snapshot::Snapshot;
use strait_api::{ClusterName, Locality, TrustDomain};
use strait_ca::tls::ExpectedServer;
use strait_ca::{CertStore, SharedBundle};

use crate::subscribe::{Options, Subscription, subscribe};

/// `controller:` in a sidecar's, gateway's or DNS server's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerRef {
    /// The controller's gRPC address (mTLS; port 8610 by default), not its
    /// admin port.
    pub address: SocketAddr,
    /// The cluster whose controller this is; it must present that
    /// cluster's controller identity. Roles whose config names their
    /// cluster already (gateway, DNS) may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterName>,
    /// `region/zone` of the subscriber, for locality-aware routing; the
    /// controller's own locality when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
}

impl ControllerRef {
    /// The cluster to follow: the block's own, or `own` (the role's). Both
    /// given and different is a config error, named.
    pub fn cluster_or(&self, own: Option<&ClusterName>) -> Result<ClusterName, String> {
        match (&self.cluster, own) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "controller.cluster is {a} but this role runs in cluster {b}"
            )),
            (Some(a), _) => Ok(a.clone()),
            (None, Some(b)) => Ok(b.clone()),
            (None, None) => Err("controller.cluster is missing".to_owned()),
        }
    }
}

/// `scope:` in a sidecar's config: the services it calls. The controller
/// then sends only those (and the sidecar's own service); left out, every
/// service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// `name.namespace` or `*.namespace`; at least one.
    pub services: Vec<ScopePattern>,
}

/// What a subscriber is; the controller sends each its own view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A sidecar: every service it may call, its own services' policies.
    Proxy,
    /// An east-west gateway: the cluster's export table and linked peers.
    Gateway,
    /// A DNS server: every service with its endpoints' health.
    Dns,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Gateway => "gateway",
            Self::Dns => "dns",
        }
    }
}

/// Everything needed to subscribe, resolved from a role's config.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: SocketAddr,
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub role: Role,
    /// A name for the controller's status and logs.
    pub node_id: String,
    pub locality: Option<Locality>,
    /// A sidecar's own workload, registered while it follows
    /// (`Node.registration`).
    pub registration: Option<Registration>,
    /// The services a sidecar calls; empty: every service.
    pub scope: Vec<ScopePattern>,
}

impl Target {
    /// The node message that opens the stream.
    pub fn node(&self) -> Node {
        Node {
            id: self.node_id.clone(),
            cluster: self.cluster.to_string(),
            locality: self
                .locality
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            role: self.role.as_str().to_owned(),
            registration: self.registration.clone(),
            // Gateways take full snapshots (the export table); every other
            // role takes protobuf deltas.
            deltas: self.role != Role::Gateway,
            scope: (!self.scope.is_empty()).then(|| Scope {
                services: self.scope.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    /// The identity the controller must present.
    pub fn expected(&self) -> ExpectedServer {
        ExpectedServer::Id(self.trust_domain.controller_id(&self.cluster))
    }
}

/// Subscribes to `target`'s controller with the role's live certificate
/// and bundle (a rotated certificate is used from the next reconnect on).
/// Every snapshot passes `apply` before it is ACKed; an error NACKs it,
/// with the reason, and the role keeps its previous config. Dropping the
/// subscription stops it.
pub fn follow(
    target: &Target,
    certs: CertStore,
    bundle: SharedBundle,
    apply: impl Fn(&Snapshot) -> Result<(), String> + Send + Sync + 'static,
) -> Subscription {
    let options = Options {
        accept: Some(Arc::new(apply)),
        ..Options::default()
    };
    subscribe(
        target.address,
        certs,
        bundle,
        target.expected(),
        target.node(),
        options,
    )
}

/// Tells the controller that the workload `target` registered is leaving:
/// its endpoint is removed at once, not when the registration lease ends.
/// Called on a clean shutdown; when it fails, the lease removes it.
pub async fn deregister(
    target: &Target,
    certs: &CertStore,
    bundle: &SharedBundle,
) -> Result<(), String> {
    let Some(reg) = &target.registration else {
        return Ok(());
    };
    let channel =
        crate::subscribe::connect(target.address, certs, bundle, &target.expected()).await?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let call = client.deregister(reg.clone());
    match tokio::time::timeout(std::time::Duration::from_secs(3), call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(s.message().to_owned()),
        Err(_) => Err("the controller did not answer within 3s".to_owned()),
    }
}

/// [`follow`] on behalf of `owner`, held weakly: the subscription never
/// keeps its role alive, and once the role is gone every snapshot is
/// refused.
pub fn follow_owner<T: Send + Sync + 'static>(
    target: &Target,
    certs: CertStore,
    bundle: SharedBundle,
    owner: &Arc<T>,
    apply: impl Fn(&T, &Snapshot) -> Result<(), String> + Send + Sync + 'static,
) -> Subscription {
    let weak = Arc::downgrade(owner);
    follow(target, certs, bundle, move |snap| match weak.upgrade() {
        Some(owner) => apply(&owner, snap),
        None => Err("the role stopped".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    #[test]
    fn the_controller_block_parses_and_names_its_cluster() {
        let r: ControllerRef = serde_yaml_ng::from_str(
            "{ address: 127.0.0.1:8610, cluster: east, locality: us-east/us-east-1a }",
        )
        .unwrap();
        assert_eq!(r.cluster_or(None), Ok(c("east")));
        assert_eq!(r.cluster_or(Some(&c("east"))), Ok(c("east")));
        let e = r.cluster_or(Some(&c("west"))).unwrap_err();
        assert!(e.contains("east") && e.contains("west"), "{e}");
        let bare: ControllerRef = serde_yaml_ng::from_str("{ address: 127.0.0.1:8610 }").unwrap();
        assert_eq!(bare.cluster_or(Some(&c("west"))), Ok(c("west")));
        assert!(bare.cluster_or(None).unwrap_err().contains("missing"));
        let e = serde_yaml_ng::from_str::<ControllerRef>("{ address: x:1 }").unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
        let e = serde_yaml_ng::from_str::<ControllerRef>("{ address: 127.0.0.1:1, port: 2 }")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn the_node_carries_role_cluster_and_locality() {
        let t = Target {
            address: "127.0.0.1:8610".parse().unwrap(),
            cluster: c("east"),
            trust_domain: TrustDomain::new("strait.local").unwrap(),
            role: Role::Gateway,
            node_id: "gateway-0".into(),
            locality: Some("us-east/a".parse().unwrap()),
            registration: None,
            scope: Vec::new(),
        };
        let n = t.node();
        assert_eq!(
            (n.role.as_str(), n.cluster.as_str(), n.locality.as_str()),
            ("gateway", "east", "us-east/a")
        );
        assert!(
            !n.deltas && n.scope.is_none(),
            "a gateway takes full snapshots"
        );
        let proxy = Target {
            role: Role::Proxy,
            scope: vec!["web.shop".parse().unwrap(), "*.pay".parse().unwrap()],
            ..t.clone()
        };
        let n = proxy.node();
        assert!(n.deltas);
        assert_eq!(n.scope.unwrap().services, ["web.shop", "*.pay"]);
        let e = serde_yaml_ng::from_str::<ScopeConfig>("{ services: [web] }").unwrap_err();
        assert!(e.to_string().contains("name.namespace"), "{e}");
        assert_eq!(
            t.expected(),
            ExpectedServer::Id(
                strait_api::SpiffeId::parse(
                    "spiffe://strait.local/ns/strait-system/sa/controller-east"
                )
                .unwrap()
            )
        );
    }
}
