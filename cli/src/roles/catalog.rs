//! The controller's `catalog:` section: where its local catalog comes
//! from. Absent, the catalog is the YAML files under `state_dir` (plain
//! hosts); `catalog: { kubernetes: {...} }` selects the Kubernetes source
//! (`strait_federation::kube`), whose catalog the admin API cannot edit.
//!
//!   catalog:
//!     kubernetes:
//!       kubeconfig: ./kubeconfig        # optional: the pod's service account otherwise
//!       namespaces: [shop, payments]    # optional: all namespaces otherwise
//!       label_selector: "mesh=strait"   # optional: only these Services
//!       inbound_port: 15006             # optional: sidecar inbound port of endpoints
//!       node_locality: true             # region/zone from nodes' topology labels
//!       state_namespace: strait-system  # optional: where links live (StraitLink objects,
//!                                       # Secret strait-peering); default: leader_election's
//!                                       # namespace, else the client's (pod's or kubeconfig's)
//!       leader_election:                # optional: one of several replicas leads
//!         namespace: strait-system      # the Lease's namespace and name
//!         name: strait-controller
//!         lease: 15s                    # a standby takes over this long after the leader's last renewal
//!         identity: ctl-a               # optional: <hostname>_<random> otherwise
//!
//! With `leader_election`, a replica first stands by: it serves only
//! `/live` (200) and `/ready` (503, naming the leader) on its admin port and
//! watches, pushes and syncs nothing. Once it holds the Lease it starts the
//! catalog and the controller; when it cannot renew within two thirds of
//! the lease (before another replica may take it) it stops and exits (so
//! the pod restarts as a standby), and on SIGTERM it hands the Lease back.
//!
//! In Kubernetes mode links and pending peering-token secrets live in
//! Kubernetes objects (`strait_federation::kube::links`), not in
//! `state_dir`, so a replica that takes over has the links the previous
//! leader made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use strait_api::label::is_dns_label;
use strait_api::{ClusterName, Locality, TrustDomain};
use strait_federation::catalog::CatalogSource;
use strait_federation::controller::Source;
use strait_federation::kube::leader::{Elector, LeaseConfig};
use strait_federation::kube::{KubeLinkBackend, KubeSourceConfig, KubernetesSource};
use strait_federation::peering::LinkBackend;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    kubernetes: KubernetesFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesFile {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    label_selector: Option<String>,
    #[serde(default)]
    inbound_port: Option<u16>,
    #[serde(default = "yes")]
    node_locality: bool,
    #[serde(default)]
    state_namespace: Option<String>,
    #[serde(default)]
    leader_election: Option<LeaderFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaderFile {
    namespace: String,
    #[serde(default = "default_lease_name")]
    name: String,
    #[serde(default = "default_lease", with = "strait_api::snapshot::duration_str")]
    lease: Duration,
    #[serde(default)]
    identity: Option<String>,
}

fn default_lease_name() -> String {
    "strait-controller".into()
}

fn default_lease() -> Duration {
    Duration::from_secs(15)
}

/// `<hostname>_<16 hex digits>`, unique among replicas as client-go's.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "strait".to_owned()
    } else {
        host
    };
    format!("{host}_{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn yes() -> bool {
    true
}

/// A validated Kubernetes catalog, started by [`KubeCatalog::start`].
#[derive(Debug, Clone)]
pub(super) struct KubeCatalog {
    kubeconfig: Option<PathBuf>,
    source: KubeSourceConfig,
    leader: Option<LeaseConfig>,
    /// Where links are stored; `None`: the client's default namespace.
    state_namespace: Option<String>,
}

/// A running Kubernetes catalog (and election, when configured).
pub(super) struct Started {
    pub source: Source,
    pub elector: Option<Elector>,
    pub links: Arc<dyn LinkBackend>,
}

/// One requirement of a label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`
/// (set-based `in`/`notin` are not accepted).
fn check_selector(sel: &str) -> Result<(), String> {
    let key_ok = |k: &str| {
        let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let value_ok = |v: &str| {
        v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if sel.trim().is_empty() {
        return Err("is empty (leave it out to take every Service)".into());
    }
    for term in sel.split(',').map(str::trim) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            key_ok(k.trim()) && value_ok(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            key_ok(k.trim()) && value_ok(v.trim())
        } else {
            key_ok(term.strip_prefix('!').unwrap_or(term))
        };
        if !ok {
            return Err(format!(
                "{term:?} is not a requirement this selector takes (k, !k, k=v, k!=v)"
            ));
        }
    }
    Ok(())
}

impl CatalogFile {
    /// Validates the section; errors name the field.
    pub(super) fn validate(
        self,
        cluster: &ClusterName,
        td: &TrustDomain,
        locality: &Locality,
    ) -> Result<KubeCatalog, (String, String)> {
        let k = self.kubernetes;
        let field = |f: &str| format!("catalog.kubernetes.{f}");
        if let Some(path) = &k.kubeconfig {
            strait_federation::kube::check_kubeconfig(path)
                .map_err(|e| (field("kubeconfig"), e.to_string()))?;
        }
        for ns in &k.namespaces {
            if !is_dns_label(ns) {
                return Err((
                    field("namespaces"),
                    format!("{ns:?} is not a namespace name (a DNS label)"),
                ));
            }
        }
        if let Some(sel) = &k.label_selector {
            check_selector(sel)
                .map_err(|why| (field("label_selector"), format!("{sel:?} {why}")))?;
        }
        let leader = match k.leader_election {
            Some(l) => {
                let f = |x: &str| format!("catalog.kubernetes.leader_election.{x}");
                if !is_dns_label(&l.namespace) {
                    return Err((
                        f("namespace"),
                        format!("{:?} is not a namespace name", l.namespace),
                    ));
                }
                if !is_dns_label(&l.name) {
                    return Err((
                        f("name"),
                        format!("{:?} is not a lease name (a DNS label)", l.name),
                    ));
                }
                if l.lease < Duration::from_secs(3) {
                    return Err((
                        f("lease"),
                        format!(
                            "{:?} is shorter than 3s (renewals every third of it)",
                            l.lease
                        ),
                    ));
                }
                let identity = l.identity.unwrap_or_else(default_identity);
                if identity.is_empty() {
                    return Err((f("identity"), "is empty".into()));
                }
                Some(LeaseConfig::new(&l.namespace, &l.name, &identity, l.lease))
            }
            None => None,
        };
        if let Some(ns) = k.state_namespace.as_ref().filter(|n| !is_dns_label(n)) {
            return Err((
                field("state_namespace"),
                format!("{ns:?} is not a namespace name (a DNS label)"),
            ));
        }
        let state_namespace = k
            .state_namespace
            .or_else(|| leader.as_ref().map(|l| l.namespace.clone()));
        if k.inbound_port == Some(0) {
            return Err((field("inbound_port"), "0 is not a port".into()));
        }
        let mut source = KubeSourceConfig::new(cluster.clone(), td.clone());
        source.locality = locality.clone();
        source.namespaces = k.namespaces;
        source.label_selector = k.label_selector;
        source.node_locality = k.node_locality;
        if let Some(p) = k.inbound_port {
            source.inbound_port = p;
        }
        Ok(KubeCatalog {
            kubeconfig: k.kubeconfig,
            source,
            leader,
            state_namespace,
        })
    }
}

impl KubeCatalog {
    /// For `--check`.
    pub(super) fn summary(&self) -> String {
        let from = self.kubeconfig.as_ref().map_or_else(
            || "the pod's service account".to_owned(),
            |p| format!("kubeconfig {}", p.display()),
        );
        let ns = if self.source.namespaces.is_empty() {
            "all namespaces".to_owned()
        } else {
            format!("namespaces {}", self.source.namespaces.join(","))
        };
        let sel = self
            .source
            .label_selector
            .as_ref()
            .map(|s| format!(", services {s}"))
            .unwrap_or_default();
        let lease = self
            .leader
            .as_ref()
            .map(|l| {
                format!(
                    ", leader election on lease {}/{} ({}s) as {}",
                    l.namespace,
                    l.name,
                    l.duration.as_secs(),
                    l.identity
                )
            })
            .unwrap_or_default();
        let links = self.state_namespace.as_ref().map_or_else(
            || "the client's namespace".to_owned(),
            |n| format!("namespace {n}"),
        );
        format!("catalog kubernetes ({from}, {ns}{sel}{lease}, links in {links})")
    }

    /// Connects, starts the watches and waits until every resource has
    /// been listed once, so the controller never serves a half-empty
    /// catalog.
    /// With leader election, first stands by (serving `/live` and `/ready`
    /// on `admin`) until this replica holds the Lease.
    pub(super) async fn start(self, admin: Option<SocketAddr>) -> anyhow::Result<Started> {
        let client = strait_federation::kube::client(self.kubeconfig.as_deref())
            .await
            .context("catalog.kubernetes")?;
        let state_ns = self
            .state_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let links: Arc<dyn LinkBackend> = Arc::new(
            KubeLinkBackend::new(client.clone(), &state_ns).context("catalog.kubernetes")?,
        );
        let elector = match self.leader {
            Some(cfg) => Some(super::standby::until_leader(client.clone(), cfg, admin).await?),
            None => None,
        };
        let source = KubernetesSource::start(client, self.source);
        let mut waited = 0u64;
        loop {
            let synced =
                tokio::time::timeout(std::time::Duration::from_secs(10), source.wait_synced())
                    .await;
            if synced.is_ok() {
                break;
            }
            waited += 10;
            eprintln!(
                "waiting for the kubernetes catalog to list every resource ({waited}s; is the api server reachable?)"
            );
        }
        let services = source.watch().borrow().services.len();
        eprintln!("kubernetes catalog: {services} service(s)");
        for p in source.problems() {
            eprintln!("kubernetes catalog: left out {p}");
        }
        Ok(Started {
            source: Source::Custom(Arc::new(source)),
            elector,
            links,
        })
    }
}

/// Resolves with `true` when the leader lost its Lease, `false` on Ctrl-C
/// or SIGTERM.
pub(super) async fn shutdown_or_lost(elector: Option<&Elector>) -> bool {
    match elector {
        Some(e) => tokio::select! {
            () = crate::signal::wait_for_shutdown() => false,
            () = e.wait_lost() => true,
        },
        None => {
            crate::signal::wait_for_shutdown().await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_are_checked() {
        let table = [
            ("app=web", true),
            ("app==web,tier!=db", true),
            ("strait.io/mesh", true),
            ("!canary", true),
            ("", false),
            ("app in (web)", false),
            ("app=we b", false),
            ("=web", false),
        ];
        for (sel, ok) in table {
            assert_eq!(check_selector(sel).is_ok(), ok, "{sel:?}");
        }
    }

    fn file(yaml: &str) -> Result<KubeCatalog, (String, String)> {
        let f: CatalogFile = strait_api::yaml::from_str(yaml).unwrap();
        f.validate(
            &ClusterName::new("east").unwrap(),
            &TrustDomain::new("strait.local").unwrap(),
            &Locality::default(),
        )
    }

    #[test]
    fn bad_fields_are_named() {
        let table = [
            (
                "kubernetes: { namespaces: [Shop] }",
                "catalog.kubernetes.namespaces",
            ),
            (
                "kubernetes: { label_selector: 'a in (b)' }",
                "catalog.kubernetes.label_selector",
            ),
            (
                "kubernetes: { inbound_port: 0 }",
                "catalog.kubernetes.inbound_port",
            ),
            (
                "kubernetes: { kubeconfig: /nonexistent/kubeconfig }",
                "catalog.kubernetes.kubeconfig",
            ),
            (
                "kubernetes: { leader_election: { namespace: s, lease: 1s } }",
                "catalog.kubernetes.leader_election.lease",
            ),
            (
                "kubernetes: { leader_election: { namespace: S } }",
                "catalog.kubernetes.leader_election.namespace",
            ),
            (
                "kubernetes: { state_namespace: Strait_System }",
                "catalog.kubernetes.state_namespace",
            ),
        ];
        for (yaml, field) in table {
            assert_eq!(file(yaml).unwrap_err().0, field, "{yaml}");
        }
        let ok = file("kubernetes: { namespaces: [shop], label_selector: mesh=strait }").unwrap();
        assert_eq!(ok.source.namespaces, ["shop"]);
        assert!(ok.summary().contains("service account"), "{}", ok.summary());
        let le = file("kubernetes: { leader_election: { namespace: strait-system } }").unwrap();
        assert!(
            le.summary().contains("links in namespace strait-system"),
            "links live beside the Lease by default: {}",
            le.summary()
        );
        let own = file("kubernetes: { state_namespace: mesh, leader_election: { namespace: s } }")
            .unwrap();
        assert!(
            own.summary().contains("links in namespace mesh"),
            "{}",
            own.summary()
        );
        let l = le.leader.unwrap();
        assert_eq!(
            (l.name.as_str(), l.duration),
            ("strait-controller", Duration::from_secs(15))
        );
        assert!(l.identity.contains('_'), "{}", l.identity);
    }
}
