//! The pure half of the Kubernetes source: cached objects in, a
//! [`LocalCatalog`] out, with a list of the objects that were skipped and
//! why. No I/O; [`super::watch`] calls [`build`] after every change.
//!
//! Conventions (also in the module doc of [`crate::kube`]):
//! - a Service becomes a [`Registration`] with its TCP ports; UDP and SCTP
//!   ports are skipped, `ExternalName` Services are skipped;
//! - a port's protocol comes from `appProtocol`, else from the port name's
//!   prefix before `-` (Istio style): `http`/`http1`/`kubernetes.io/ws` ->
//!   http1, `http2`/`h2c`/`kubernetes.io/h2c` -> http2, `grpc`/`grpc-web`
//!   -> grpc, `tcp`/`tls`/`https`/`mongo`/`mysql`/`redis` -> tcp; anything
//!   else -> http1, which the proxy treats as "sniff the first bytes";
//! - endpoints come from the Service's EndpointSlices
//!   (`kubernetes.io/service-name` label): each ready address (`ready`
//!   unset counts as ready, as the API says) at the sidecar inbound port;
//!   the pod annotation `strait.io/inbound-port` overrides the default;
//! - identity: `spiffe://<td>/ns/<pod namespace>/sa/<serviceAccountName>`;
//!   an endpoint whose target pod is not cached yet is left out until it
//!   is; an endpoint with no pod target takes the registration default;
//! - locality: region from the pod label (or annotation)
//!   `topology.kubernetes.io/region`, else the node's label of that name
//!   (the endpoint's `nodeName`, else the pod's), else the cluster's
//!   region; zone from the EndpointSlice endpoint's `zone`, else the pod
//!   label (or annotation) `topology.kubernetes.io/zone`, else the node's;
//!   with none of them, the cluster's default locality applies;
//! - exported when a `ServiceExport` of the same name exists; a
//!   `GlobalService` of the same name narrows the peers and adds a check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::core::PartialObjectMeta;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use strait_api::snapshot::{
    AuthorizationPolicy, AuthzRule, Distribute, LocalityPattern, PathPolicy, PrincipalPattern,
    Protocol, RetryOn, Route, ServicePort, duration_str,
};
use strait_api::{ClusterName, Locality, SpiffeId};

use super::KubeSourceConfig;
use super::crd::{
    AuthorizationSpec, AuthzRuleSpec, GlobalService, HealthCheckSpec, PathSpec, RouteSpec,
    ServiceExport, TrafficPolicy,
};
use crate::catalog::policy::deny_all;
use crate::catalog::{
    CheckKind, EndpointSpec, Export, HealthCheck, LocalCatalog, PolicySpec, Registration,
    ServiceKey,
};

#[cfg(test)]
mod tests;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Pod label or annotation with the region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Pod label or annotation with the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Pod annotation overriding the sidecar inbound port.
pub const INBOUND_PORT_ANNOTATION: &str = "strait.io/inbound-port";

/// A snapshot of every cached object.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub exports: Vec<Arc<ServiceExport>>,
    pub globals: Vec<Arc<GlobalService>>,
    pub policies: Vec<Arc<TrafficPolicy>>,
    /// Nodes, metadata only (their topology labels).
    pub nodes: Vec<Arc<PartialObjectMeta<Node>>>,
}

/// An object left out of the catalog, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// What [`build`] returns.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Built {
    pub catalog: LocalCatalog,
    pub problems: Vec<Problem>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
    ))
}

/// Builds the catalog from the cached objects.
pub fn build(objects: &Objects, cfg: &KubeSourceConfig) -> Built {
    let mut out = Built::default();
    let nodes: Nodes<'_> = objects
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
        .collect();
    let pods: HashMap<ServiceKey, &Pod> = objects
        .pods
        .iter()
        .filter_map(|p| Some((key_of(&p.metadata)?, p.as_ref())))
        .collect();
    let exported: BTreeSet<ServiceKey> = objects
        .exports
        .iter()
        .filter_map(|e| key_of(&e.metadata))
        .collect();
    let globals: HashMap<ServiceKey, &GlobalService> = objects
        .globals
        .iter()
        .filter_map(|g| Some((key_of(&g.metadata)?, g.as_ref())))
        .collect();
    let mut slices: HashMap<ServiceKey, Vec<&EndpointSlice>> = HashMap::new();
    for s in &objects.slices {
        let ns = s.metadata.namespace.as_deref();
        let svc = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(svc)) = (ns, svc) {
            slices.entry(ServiceKey::new(ns, svc)).or_default().push(s);
        }
    }
    for svc in &objects.services {
        let Some(key) = key_of(&svc.metadata) else {
            continue;
        };
        let mut problem = |reason: String| {
            out.problems.push(Problem {
                object: format!("Service {key}"),
                reason,
            });
        };
        let Some(ports) = ports_of(svc) else {
            continue;
        };
        if ports.is_empty() {
            problem("has no tcp port".into());
            continue;
        }
        let endpoints = endpoints_of(
            &key,
            slices.get(&key).map_or(&[][..], Vec::as_slice),
            &pods,
            &nodes,
            cfg,
            &mut problem,
        );
        let global = globals.get(&key).copied();
        let export = if exported.contains(&key) {
            export_of(global, cfg, &mut problem)
        } else {
            Export::None
        };
        let health_check = match global.and_then(|g| g.spec.health_check.as_ref()) {
            Some(hc) => match health_check_of(hc) {
                Ok(hc) => Some(hc),
                Err(why) => {
                    problem(format!("GlobalService healthCheck ignored: {why}"));
                    None
                }
            },
            None => None,
        };
        let reg = Registration {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ports,
            endpoints,
            export,
            health_check,
        };
        match reg.validate(&cfg.trust_domain, &cfg.cluster) {
            Ok(()) => {
                out.catalog.services.insert(key, reg);
            }
            Err(e) => problem(format!(
                "{}: {:?} is invalid: {}",
                e.field, e.value, e.reason
            )),
        }
    }
    for tp in &objects.policies {
        let Some(key) = key_of(&tp.metadata) else {
            continue;
        };
        match policy_of(&key, tp) {
            Ok(p) => {
                out.catalog.policies.insert(key, p);
            }
            Err(reason) if !tp.spec.authorization.is_empty() => {
                // Dropping the policy would drop its deny rules: fail closed.
                let mut p = PolicySpec::new(&key);
                p.authorization = vec![deny_all("strait-invalid-policy")];
                out.catalog.policies.insert(key.clone(), p);
                out.problems.push(Problem {
                    object: format!("TrafficPolicy {key}"),
                    reason: format!("{reason}; the service denies every caller until it is fixed"),
                });
            }
            Err(reason) => out.problems.push(Problem {
                object: format!("TrafficPolicy {key}"),
                reason,
            }),
        }
    }
    out.problems.sort();
    out
}

/// The TCP ports of a Service; `None` for an `ExternalName` Service.
fn ports_of(svc: &Service) -> Option<Vec<ServicePort>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut out: Vec<ServicePort> = Vec::new();
    for p in spec.ports.iter().flatten() {
        let tcp = p.protocol.as_deref().is_none_or(|p| p == "TCP");
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        if tcp && port != 0 && !out.iter().any(|o| o.port == port) {
            out.push(ServicePort {
                port,
                protocol: protocol_of(p.app_protocol.as_deref(), p.name.as_deref()),
            });
        }
    }
    Some(out)
}

/// The protocol of a port from its `appProtocol`, else its name.
pub fn protocol_of(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    let word = |s: &str| -> Option<Protocol> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_prefix("kubernetes.io/").unwrap_or(&s);
        match s.split('-').next().unwrap_or_default() {
            "http" | "http1" | "ws" => Some(Protocol::Http1),
            "http2" | "h2c" | "h2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            "tcp" | "tls" | "https" | "wss" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            _ => None,
        }
    };
    app_protocol
        .and_then(word)
        .or_else(|| name.and_then(word))
        .unwrap_or(Protocol::Http1)
}

fn endpoints_of(
    key: &ServiceKey,
    slices: &[&EndpointSlice],
    pods: &HashMap<ServiceKey, &Pod>,
    nodes: &Nodes<'_>,
    cfg: &KubeSourceConfig,
    problem: &mut dyn FnMut(String),
) -> Vec<EndpointSpec> {
    let mut out: BTreeMap<SocketAddr, EndpointSpec> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            let pod = match ep.target_ref.as_ref() {
                Some(t) if t.kind.as_deref() == Some("Pod") => {
                    let ns = t.namespace.as_deref().unwrap_or(&key.namespace);
                    let Some(name) = t.name.as_deref() else {
                        continue;
                    };
                    match pods.get(&ServiceKey::new(ns, name)) {
                        Some(p) => Some(*p),
                        // Not cached yet: the pod's watch event will come.
                        None => continue,
                    }
                }
                _ => None,
            };
            let port = match inbound_port(pod, cfg.inbound_port) {
                Ok(p) => p,
                Err(why) => {
                    problem(why);
                    continue;
                }
            };
            let identity = match pod.map(|p| identity_of(p, cfg)) {
                Some(Ok(id)) => Some(id),
                Some(Err(why)) => {
                    problem(why);
                    continue;
                }
                None => None,
            };
            let node = ep
                .node_name
                .as_deref()
                .or_else(|| pod.and_then(|p| p.spec.as_ref()?.node_name.as_deref()))
                .and_then(|n| nodes.get(n).copied());
            let locality = match locality_of(ep, pod, node, &cfg.locality) {
                Ok(l) => l,
                Err(why) => {
                    problem(why);
                    None
                }
            };
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    problem(format!("endpoint address {addr:?} is not an ip address"));
                    continue;
                };
                let address = SocketAddr::new(ip, port);
                out.entry(address).or_insert_with(|| EndpointSpec {
                    address,
                    locality: locality.clone(),
                    identity: identity.clone(),
                    weight: 1,
                });
            }
        }
    }
    out.into_values().collect()
}

fn label_or_annotation<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    let m = &pod.metadata;
    m.labels
        .as_ref()
        .and_then(|l| l.get(name))
        .or_else(|| m.annotations.as_ref().and_then(|a| a.get(name)))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

fn inbound_port(pod: Option<&Pod>, default: u16) -> Result<u16, String> {
    let Some(pod) = pod else {
        return Ok(default);
    };
    let v = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INBOUND_PORT_ANNOTATION));
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(format!(
                "pod {}: annotation {INBOUND_PORT_ANNOTATION}: {v:?} is not a port",
                pod.metadata.name.as_deref().unwrap_or_default()
            )),
        },
    }
}

fn identity_of(pod: &Pod, cfg: &KubeSourceConfig) -> Result<SpiffeId, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let sa = spec
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    cfg.trust_domain.workload_id(ns, sa).map_err(|e| {
        format!(
            "pod {ns}/{}: service account {sa:?}: {e}",
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// Node name -> its labels.
type Nodes<'a> = HashMap<&'a str, &'a BTreeMap<String, String>>;

fn locality_of(
    ep: &Endpoint,
    pod: Option<&Pod>,
    node: Option<&BTreeMap<String, String>>,
    default: &Locality,
) -> Result<Option<Locality>, String> {
    let node_label = |k: &str| node.and_then(|n| n.get(k)).map(String::as_str);
    let region = pod
        .and_then(|p| label_or_annotation(p, REGION_LABEL))
        .or_else(|| node_label(REGION_LABEL));
    let zone = ep
        .zone
        .as_deref()
        .filter(|z| !z.is_empty())
        .or_else(|| pod.and_then(|p| label_or_annotation(p, ZONE_LABEL)))
        .or_else(|| node_label(ZONE_LABEL));
    if region.is_none() && zone.is_none() {
        return Ok(None);
    }
    let region = region.unwrap_or(&default.region);
    if region.is_empty() {
        return Err(format!(
            "zone {:?} without a region: label the pod {REGION_LABEL} or give the cluster a region",
            zone.unwrap_or_default()
        ));
    }
    let s = match zone {
        Some(z) => format!("{region}/{z}"),
        None => region.to_owned(),
    };
    s.parse()
        .map(Some)
        .map_err(|e| format!("locality {s:?}: {e}"))
}

fn export_of(
    global: Option<&GlobalService>,
    cfg: &KubeSourceConfig,
    problem: &mut dyn FnMut(String),
) -> Export {
    let Some(g) = global.filter(|g| !g.spec.export_to.is_empty()) else {
        return Export::All;
    };
    let mut to: Vec<ClusterName> = Vec::new();
    for c in &g.spec.export_to {
        match ClusterName::new(c) {
            Ok(c) if c == cfg.cluster => {
                problem(format!(
                    "GlobalService exportTo: {c} is this cluster; ignored"
                ));
            }
            Ok(c) if !to.contains(&c) => to.push(c),
            Ok(_) => {}
            Err(e) => problem(format!("GlobalService exportTo: {e}; ignored")),
        }
    }
    if to.is_empty() {
        problem("GlobalService exportTo names no usable peer; not exported".into());
        return Export::None;
    }
    Export::To(to)
}

fn health_check_of(spec: &HealthCheckSpec) -> Result<HealthCheck, String> {
    let mut hc = match spec.kind.as_str() {
        "http" => HealthCheck::http(spec.path.as_deref().unwrap_or("/")),
        "tcp" => HealthCheck::tcp(),
        other => return Err(format!("kind {other:?} is not http or tcp")),
    };
    if hc.kind == CheckKind::Tcp && spec.path.is_some() {
        return Err("a tcp check has no path".into());
    }
    hc.port = spec.port;
    let dur = |f: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, String> {
        v.as_deref()
            .map(|s| {
                strait_api::snapshot::duration_str::parse(s)
                    .ok_or_else(|| format!("{f} {s:?} is not a duration like 5s or 500ms"))
            })
            .transpose()
    };
    if let Some(d) = dur("interval", &spec.interval)? {
        hc.interval = d;
    }
    if let Some(d) = dur("timeout", &spec.timeout)? {
        hc.timeout = d;
    }
    if let Some(n) = spec.healthy_threshold {
        hc.healthy_threshold = n;
    }
    if let Some(n) = spec.unhealthy_threshold {
        hc.unhealthy_threshold = n;
    }
    Ok(hc)
}

fn policy_of(key: &ServiceKey, tp: &TrafficPolicy) -> Result<PolicySpec, String> {
    let mut p = PolicySpec::new(key);
    for (i, c) in tp.spec.failover.iter().enumerate() {
        p.failover
            .push(ClusterName::new(c).map_err(|e| format!("failover[{i}]: {e}"))?);
    }
    for (i, d) in tp.spec.distribute.iter().enumerate() {
        let pat = |s: &str, f: &str| -> Result<LocalityPattern, String> {
            s.parse()
                .map_err(|e| format!("distribute[{i}].{f}: {s:?}: {e}"))
        };
        let mut to = BTreeMap::new();
        for (k, w) in &d.to {
            to.insert(pat(k, "to")?, *w);
        }
        p.distribute.push(Distribute {
            from: pat(&d.from, "from")?,
            to,
        });
    }
    if let Some(f) = tp.spec.overprovisioning_factor {
        p.overprovisioning_factor = f;
    }
    for (i, a) in tp.spec.authorization.iter().enumerate() {
        p.authorization
            .push(authorization_of(&format!("authorization[{i}]"), a)?);
    }
    for (i, r) in tp.spec.routes.iter().enumerate() {
        p.routes.push(route_of(&format!("routes[{i}]"), r)?);
    }
    p.validate()
        .map_err(|e| format!("{}: {:?} is invalid: {}", e.field, e.value, e.reason))?;
    Ok(p)
}

fn route_of(f: &str, r: &RouteSpec) -> Result<Route, String> {
    let mut route = Route::default();
    if let Some(prefix) = &r.path_prefix {
        route.path_prefix.clone_from(prefix);
    }
    if let Some(t) = &r.timeout {
        route.timeout = duration_str::parse(t).ok_or_else(|| {
            format!("{f}.timeout: {t:?} is invalid: use a number with ms, s, m or h, e.g. 2s")
        })?;
    }
    if let Some(retry) = &r.retry {
        if let Some(n) = retry.attempts {
            route.retry.attempts = n;
        }
        if let Some(on) = &retry.retry_on {
            route.retry.retry_on = on
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    RetryOn::deserialize(s.as_str().into_deserializer()).map_err(
                        |e: serde::de::value::Error| format!("{f}.retry.retryOn[{k}]: {s:?}: {e}"),
                    )
                })
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(route)
}

fn authorization_of(f: &str, a: &AuthorizationSpec) -> Result<AuthorizationPolicy, String> {
    let rules = |kind: &str, rules: &[AuthzRuleSpec]| -> Result<Vec<AuthzRule>, String> {
        rules
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let from = r
                    .from
                    .iter()
                    .enumerate()
                    .map(|(m, s)| {
                        s.parse::<PrincipalPattern>()
                            .map_err(|e| format!("{f}.{kind}[{k}].from[{m}]: {s:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(AuthzRule {
                    from,
                    paths: r.paths.clone(),
                    // Upper-case, as `strait policy set --methods` does.
                    methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                    hosts: r.hosts.clone(),
                })
            })
            .collect()
    };
    Ok(AuthorizationPolicy {
        name: a.name.clone(),
        ports: a.ports.clone(),
        deny: rules("deny", &a.deny)?,
        allow: rules("allow", &a.allow)?,
        path: path_of(f, a.path.as_ref())?,
    })
}

fn path_of(f: &str, p: Option<&PathSpec>) -> Result<PathPolicy, String> {
    fn mode<T: serde::de::DeserializeOwned>(field: String, v: &str) -> Result<T, String> {
        T::deserialize(v.into_deserializer())
            .map_err(|e: serde::de::value::Error| format!("{field}: {v:?}: {e}"))
    }
    let Some(p) = p else {
        return Ok(PathPolicy::default());
    };
    let mut out = PathPolicy {
        case_insensitive: p.case_insensitive,
        ..PathPolicy::default()
    };
    if let Some(v) = &p.escaped_slashes {
        out.escaped_slashes = mode(format!("{f}.path.escapedSlashes"), v)?;
    }
    if let Some(v) = &p.parameters {
        out.parameters = mode(format!("{f}.path.parameters"), v)?;
    }
    Ok(out)
}
