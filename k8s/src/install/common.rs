//! Pieces every Strait pod shares: the hardened container, probes,
//! resources, labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HTTPGetAction, PodSecurityContext, Probe as K8sProbe,
    ResourceRequirements, SeccompProfile, SecurityContext, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Where the image puts the binary (see `Containerfile`).
pub const BINARY: &str = "/usr/local/bin/strait";
/// The image's non-root user and group.
pub const USER: i64 = 65532;
/// Every Strait container runs here; identity paths in configs are
/// relative to it (`identity/chain.pem`), so the same config validates on
/// a workstation with `--check` from a directory holding `identity/`.
pub const WORKDIR: &str = "/var/run/strait";
/// The readiness path of every admin port.
pub const ADMIN_PROBE: &str = "/ready";

/// A container running `strait ARGS` as a non-root user with a read-only
/// root filesystem and no capabilities.
pub fn container(name: &str, image: &str, args: &[&str]) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![BINARY.into()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        working_dir: Some(WORKDIR.into()),
        security_context: Some(security_context()),
        ..Default::default()
    }
}

pub fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Pod-level: non-root, and mounted Secrets readable by the group.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        fs_group: Some(USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

pub fn resources(
    cpu_req: &str,
    mem_req: &str,
    cpu_lim: &str,
    mem_lim: &str,
) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q(cpu_req)),
            ("memory".to_owned(), q(mem_req)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), q(cpu_lim)),
            ("memory".to_owned(), q(mem_lim)),
        ])),
        ..Default::default()
    }
}

/// A probe target: HTTP GET on a path (admin ports), HTTPS GET (the
/// webhook) or a TCP connect (DNS, which has no admin port).
#[derive(Debug, Clone)]
pub enum Probe {
    Http {
        port: u16,
        path: String,
        https: bool,
    },
    Tcp {
        port: u16,
    },
}

impl Probe {
    pub fn http(port: u16, path: &str) -> Self {
        Self::Http {
            port,
            path: path.into(),
            https: false,
        }
    }

    pub fn https(port: u16, path: &str) -> Self {
        Self::Http {
            port,
            path: path.into(),
            https: true,
        }
    }

    fn base(&self) -> K8sProbe {
        match self {
            Self::Http { port, path, https } => K8sProbe {
                http_get: Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: IntOrString::Int(i32::from(*port)),
                    scheme: Some(if *https { "HTTPS" } else { "HTTP" }.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Self::Tcp { port } => K8sProbe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(i32::from(*port)),
                    host: None,
                }),
                ..Default::default()
            },
        }
    }

    pub fn readiness(&self) -> K8sProbe {
        K8sProbe {
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..self.base()
        }
    }

    pub fn liveness(&self) -> K8sProbe {
        K8sProbe {
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(6),
            ..self.base()
        }
    }

    /// Up to 30 s to start; the app containers of a pod wait for it.
    pub fn startup(&self) -> K8sProbe {
        K8sProbe {
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(30),
            ..self.base()
        }
    }
}

/// `app.kubernetes.io/*` labels of one component.
pub fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "strait".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "strait-install".to_owned(),
        ),
    ])
}

/// The selector matching a component's pods (a subset of [`labels`]).
pub fn selector(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), component.to_owned())])
}

pub fn meta(name: &str, namespace: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(component)),
        ..Default::default()
    }
}
