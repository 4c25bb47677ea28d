//! The controller, gateway and DNS server: ConfigMaps with the configs
//! their `strait` roles parse, Deployments, Services, the gateway's
//! PodDisruptionBudget and a NetworkPolicy that keeps the controller's
//! admin port closed to every pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    Namespace, PodSpec, PodTemplateSpec, SecretVolumeSource, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::common::{self, Probe, meta, selector};
use super::rbac::{CONTROLLER_SA, DNS_SA, GATEWAY_SA};
use super::secrets::{CONTROLLER_IDENTITY, DNS_IDENTITY, GATEWAY_IDENTITY};
use super::{InstallError, InstallOptions, Manifest};

pub const CONTROLLER: &str = "strait-controller";
pub const CONTROLLER_PEERING: &str = "strait-controller-peering";
pub const GATEWAY: &str = "strait-gateway";
pub const DNS: &str = "strait-dns";
pub const GRPC_PORT: u16 = 8610;
pub const ADMIN_PORT: u16 = 8611;
pub const GATEWAY_PORT: u16 = 15443;
pub const GATEWAY_ADMIN_PORT: u16 = 15021;
/// DNS listens unprivileged; its Service maps 53 to it.
pub const DNS_PORT: u16 = 8653;
/// Kubernetes expands `$(VAR)` in args from the container's env, which
/// includes the `<SERVICE>_SERVICE_HOST` variables of Services in the
/// namespace that existed when the pod started (the roles take a socket
/// address, not a name). A pod started before the Service fails its
/// config check and is restarted with the variable set.
pub const CONTROLLER_HOST_VAR: &str = "$(STRAIT_CONTROLLER_SERVICE_HOST)";

/// Identity files, relative to the containers' working directory.
#[derive(Debug, Serialize)]
pub struct Files {
    pub chain: &'static str,
    pub key: &'static str,
    pub bundle: &'static str,
}

pub const IDENTITY_FILES: Files = Files {
    chain: "identity/chain.pem",
    key: "identity/key.pem",
    bundle: "identity/bundle.pem",
};

#[derive(Debug, Serialize)]
pub struct Identity {
    pub files: Files,
}

/// `controller.yaml` (the keys `strait controller --config` reads).
#[derive(Debug, Serialize)]
pub struct ControllerFile {
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub trust_domain: String,
    pub state_dir: &'static str,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<SocketAddr>,
    pub identity: Identity,
    pub catalog: Catalog,
}

/// `catalog:`: the Kubernetes catalog with the pod's service account, and
/// leader election among the replicas on a Lease in the install's
/// namespace.
#[derive(Debug, Serialize)]
pub struct Catalog {
    pub kubernetes: KubernetesCatalog,
}

#[derive(Debug, Serialize)]
pub struct KubernetesCatalog {
    pub leader_election: LeaderElection,
}

#[derive(Debug, Serialize)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: &'static str,
    pub lease: &'static str,
}

/// `gateway.yaml` (the keys `strait gateway --config` reads; the
/// controller's address comes on the command line).
#[derive(Debug, Serialize)]
pub struct GatewayFile {
    pub cluster: String,
    pub trust_domain: String,
    pub identity: Identity,
    pub listeners: GatewayListeners,
}

#[derive(Debug, Serialize)]
pub struct GatewayListeners {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn yaml<T: Serialize>(what: &str, v: &T) -> Result<String, InstallError> {
    serde_yaml_ng::to_string(v).map_err(|e| InstallError::Encode(what.into(), e.to_string()))
}

pub fn namespace(ns: &str) -> Namespace {
    let mut m = meta(ns, None, "strait");
    // Strait's own pods are never injected.
    m.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(crate::keys::INJECT.into(), "disabled".into());
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

fn config_map(name: &str, ns: &str, key: &str, text: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(name, Some(ns), name),
        data: Some(BTreeMap::from([(key.to_owned(), text)])),
        ..Default::default()
    }
}

pub(super) fn port(name: &str, p: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(p),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

pub(super) fn service_port(name: &str, p: u16, target: u16, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(p),
        target_port: Some(IntOrString::Int(i32::from(target))),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The config ConfigMap and identity Secret volumes, and their mounts.
pub fn config_and_identity(
    config_map: &str,
    config_dir: &str,
    identity_secret: &str,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "identity".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(identity_secret.into()),
                // Read by the group (the pod's fsGroup), not by others.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mounts = vec![
        mount("config", config_dir, true),
        mount("identity", &format!("{}/identity", common::WORKDIR), true),
    ];
    (volumes, mounts)
}

/// A Deployment of `replicas` pods running one container as `sa`.
pub fn deployment(
    name: &str,
    ns: &str,
    sa: &str,
    replicas: i32,
    container: Container,
    volumes: Vec<Volume>,
) -> Deployment {
    Deployment {
        metadata: meta(name, Some(ns), name),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(name)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common::labels(name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(sa.into()),
                    // Only the controller (catalog, Lease, links) and the CA
                    // (TokenReviews) talk to the API server.
                    automount_service_account_token: Some(
                        sa == CONTROLLER_SA || sa == super::rbac::CA_SA,
                    ),
                    security_context: Some(common::pod_security_context()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn service(name: &str, ns: &str, type_: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(name, Some(ns), name),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector(name)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The controller's `controller.yaml`.
pub fn controller_config(o: &InstallOptions) -> Result<String, InstallError> {
    yaml(
        "controller.yaml",
        &ControllerFile {
            cluster: o.cluster.to_string(),
            region: o.region.clone(),
            zone: o.zone.clone(),
            trust_domain: o.trust_domain.to_string(),
            state_dir: "state",
            listen: any(GRPC_PORT),
            admin_listen: any(ADMIN_PORT),
            advertise: o.controller_advertise,
            gateways: o.gateway_addresses.clone(),
            identity: Identity {
                files: IDENTITY_FILES,
            },
            catalog: Catalog {
                kubernetes: KubernetesCatalog {
                    leader_election: LeaderElection {
                        namespace: o.namespace.clone(),
                        name: CONTROLLER,
                        lease: "15s",
                    },
                },
            },
        },
    )
}

/// The controller: ConfigMap, Deployment (2 replicas), Services (in the
/// cluster; and a LoadBalancer for peers' controllers), NetworkPolicy.
pub fn controller(o: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    let ns = o.namespace.as_str();
    let cm = config_map(CONTROLLER, ns, "controller.yaml", controller_config(o)?);
    let (mut volumes, mut mounts) =
        config_and_identity(CONTROLLER, "/etc/strait/controller", CONTROLLER_IDENTITY);
    // The catalog's state (links, exports) until it lives in Kubernetes
    // objects: per pod, lost on restart (see docs/kubernetes.md).
    volumes.push(Volume {
        name: "state".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(mount("state", &format!("{}/state", common::WORKDIR), false));
    let mut c = common::container(
        "controller",
        &o.image,
        &[
            "controller",
            "--config",
            "/etc/strait/controller/controller.yaml",
        ],
    );
    c.ports = Some(vec![
        port("grpc", GRPC_PORT, "TCP"),
        port("admin", ADMIN_PORT, "TCP"),
    ]);
    c.readiness_probe = Some(Probe::http(ADMIN_PORT, "/ready").readiness());
    c.liveness_probe = Some(Probe::http(ADMIN_PORT, "/live").liveness());
    c.resources = Some(common::resources("100m", "128Mi", "1", "512Mi"));
    c.volume_mounts = Some(mounts);
    // `kubectl exec deploy/strait-controller -- strait peering token` (and
    // export, policy, link) reach this pod's admin API with its token.
    c.env = Some(vec![
        env("STRAIT_CONTROLLER", &format!("127.0.0.1:{ADMIN_PORT}")),
        env("STRAIT_STATE_DIR", "state"),
    ]);
    let dep = deployment(
        CONTROLLER,
        ns,
        CONTROLLER_SA,
        o.controller_replicas,
        c,
        volumes,
    );
    let svc = service(
        CONTROLLER,
        ns,
        "ClusterIP",
        vec![
            service_port("grpc", GRPC_PORT, GRPC_PORT, "TCP"),
            service_port("admin", ADMIN_PORT, ADMIN_PORT, "TCP"),
        ],
    );
    let mut peering = service(
        CONTROLLER_PEERING,
        ns,
        "LoadBalancer",
        vec![service_port("grpc", GRPC_PORT, GRPC_PORT, "TCP")],
    );
    if let Some(spec) = peering.spec.as_mut() {
        spec.selector = Some(selector(CONTROLLER));
    }
    Ok(vec![
        Manifest::new(&cm)?,
        Manifest::new(&svc)?,
        Manifest::new(&peering)?,
        Manifest::new(&dep)?,
        Manifest::new(&admin_policy(ns))?,
    ])
}

/// gRPC (mTLS) from anywhere (proxies, gateways and DNS follow the config
/// push there; peers' controllers sync); no pod may reach the plain-HTTP
/// admin port (operators use it through `kubectl exec`, on localhost).
fn admin_policy(ns: &str) -> NetworkPolicy {
    let tcp = |p: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(p))),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    NetworkPolicy {
        metadata: meta(CONTROLLER, Some(ns), CONTROLLER),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(CONTROLLER)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![tcp(GRPC_PORT)]),
                from: None,
            }]),
            ..Default::default()
        }),
    }
}

/// The gateway's `gateway.yaml`.
pub fn gateway_config(o: &InstallOptions) -> Result<String, InstallError> {
    yaml(
        "gateway.yaml",
        &GatewayFile {
            cluster: o.cluster.to_string(),
            trust_domain: o.trust_domain.to_string(),
            identity: Identity {
                files: IDENTITY_FILES,
            },
            listeners: GatewayListeners {
                public: any(GATEWAY_PORT),
                admin: any(GATEWAY_ADMIN_PORT),
            },
        },
    )
}

/// The gateway's arguments after `strait`.
pub fn gateway_args() -> Vec<String> {
    [
        "gateway",
        "--config",
        "/etc/strait/gateway/gateway.yaml",
        "--controller",
        &format!("{CONTROLLER_HOST_VAR}:{GRPC_PORT}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The gateway: ConfigMap, Deployment (2 replicas), a LoadBalancer
/// Service on 15443 and a PodDisruptionBudget keeping one up.
pub fn gateway(o: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    let ns = o.namespace.as_str();
    let cm = config_map(GATEWAY, ns, "gateway.yaml", gateway_config(o)?);
    let (volumes, mounts) = config_and_identity(GATEWAY, "/etc/strait/gateway", GATEWAY_IDENTITY);
    let args = gateway_args();
    let mut c = common::container(
        "gateway",
        &o.image,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    c.ports = Some(vec![
        port("tunnel", GATEWAY_PORT, "TCP"),
        port("admin", GATEWAY_ADMIN_PORT, "TCP"),
    ]);
    c.readiness_probe = Some(Probe::http(GATEWAY_ADMIN_PORT, "/ready").readiness());
    c.liveness_probe = Some(Probe::http(GATEWAY_ADMIN_PORT, "/live").liveness());
    c.resources = Some(common::resources("200m", "64Mi", "2", "512Mi"));
    c.volume_mounts = Some(mounts);
    let dep = deployment(GATEWAY, ns, GATEWAY_SA, 2, c, volumes);
    let svc = service(
        GATEWAY,
        ns,
        "LoadBalancer",
        vec![service_port("tunnel", GATEWAY_PORT, GATEWAY_PORT, "TCP")],
    );
    let pdb = PodDisruptionBudget {
        metadata: meta(GATEWAY, Some(ns), GATEWAY),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(GATEWAY)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(vec![
        Manifest::new(&cm)?,
        Manifest::new(&svc)?,
        Manifest::new(&dep)?,
        Manifest::new(&pdb)?,
    ])
}

/// The DNS server's arguments after `strait` (it takes flags, no file).
pub fn dns_args(o: &InstallOptions) -> Vec<String> {
    let controller = format!("{CONTROLLER_HOST_VAR}:{GRPC_PORT}");
    let listen = any(DNS_PORT).to_string();
    let cluster = o.cluster.to_string();
    [
        "dns",
        "--controller",
        &controller,
        "--cluster",
        &cluster,
        "--listen",
        &listen,
        "--chain",
        IDENTITY_FILES.chain,
        "--key",
        IDENTITY_FILES.key,
        "--bundle",
        IDENTITY_FILES.bundle,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// DNS: Deployment (2 replicas) and a Service on 53 (UDP and TCP).
pub fn dns(o: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    let ns = o.namespace.as_str();
    let (mut volumes, mut mounts) = config_and_identity(DNS, "/etc/strait/dns", DNS_IDENTITY);
    // No config file: keep only the identity.
    volumes.remove(0);
    mounts.remove(0);
    let args = dns_args(o);
    let mut c = common::container(
        "dns",
        &o.image,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    c.ports = Some(vec![
        port("dns-udp", DNS_PORT, "UDP"),
        port("dns-tcp", DNS_PORT, "TCP"),
    ]);
    // No admin port: TCP connect on the DNS port.
    let probe = Probe::Tcp { port: DNS_PORT };
    c.readiness_probe = Some(probe.readiness());
    c.liveness_probe = Some(probe.liveness());
    c.resources = Some(common::resources("50m", "32Mi", "1", "128Mi"));
    c.volume_mounts = Some(mounts);
    let dep = deployment(DNS, ns, DNS_SA, 2, c, volumes);
    let mut svc = service(
        DNS,
        ns,
        "ClusterIP",
        vec![
            service_port("dns-udp", 53, DNS_PORT, "UDP"),
            service_port("dns-tcp", 53, DNS_PORT, "TCP"),
        ],
    );
    if let (Some(ip), Some(spec)) = (o.dns_ip, svc.spec.as_mut()) {
        spec.cluster_ip = Some(ip.to_string());
    }
    Ok(vec![Manifest::new(&svc)?, Manifest::new(&dep)?])
}
