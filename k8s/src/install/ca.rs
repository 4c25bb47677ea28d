//! The cluster's CA signing service in the cluster: a Deployment running
//! `strait ca serve --token-review in-cluster` (sidecars injected with
//! `--identity token` get their certificate there with their projected
//! ServiceAccount token) and its Service on 8600.
//!
//! The intermediate comes from the Secret `strait-ca` (`install
//! --ca-dir`). A Secret volume cannot give a non-root user the key mode
//! 0600 the CA insists on (with `fsGroup` the kubelet makes it 0440), so
//! an init container, `strait ca unpack`, lays the Secret's files out as a
//! CA directory in an in-memory `emptyDir` the CA then serves from. A new
//! intermediate reaches the CA when its pods restart.

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, SecretVolumeSource, Volume};

use super::common::{self, Probe};
use super::rbac::CA_SA;
use super::roles::{deployment, mount, port, service, service_port};
use super::secrets::CA_SECRET;
use super::{InstallError, InstallOptions, Manifest};

/// The Deployment and Service name.
pub const CA: &str = "strait-ca";
/// gRPC (TLS) signing service and its admin HTTP port.
pub const CA_PORT: u16 = 8600;
pub const CA_ADMIN_PORT: u16 = 8601;
/// Where the Secret is mounted, and the CA directory (relative to the
/// working directory) the init container writes.
pub const CA_SECRET_DIR: &str = "/etc/strait/ca-secret";
pub const CA_DIR: &str = "ca";

/// `strait ca unpack ...` of the init container.
pub fn unpack_args(o: &InstallOptions) -> Vec<String> {
    let cluster = o.cluster.to_string();
    [
        "ca",
        "unpack",
        "--from",
        CA_SECRET_DIR,
        "--ca-dir",
        CA_DIR,
        "--cluster",
        &cluster,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `strait ca serve ...` of the CA container.
pub fn serve_args(o: &InstallOptions) -> Vec<String> {
    let cluster = o.cluster.to_string();
    let listen = format!("0.0.0.0:{CA_PORT}");
    let admin = format!("0.0.0.0:{CA_ADMIN_PORT}");
    [
        "ca",
        "serve",
        "--ca-dir",
        CA_DIR,
        "--cluster",
        &cluster,
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--token-review",
        "in-cluster",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strait(name: &str, o: &InstallOptions, args: &[String]) -> Container {
    common::container(
        name,
        &o.image,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The CA: Deployment (2 replicas; each signs with the same intermediate)
/// and a ClusterIP Service on 8600.
pub fn objects(o: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    let ns = o.namespace.as_str();
    let work = format!("{}/{CA_DIR}", common::WORKDIR);
    let volumes = vec![
        Volume {
            name: "ca-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(CA_SECRET.into()),
                // Read by the group (the pod's fsGroup), not by others.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "ca".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut unpack = strait("unpack", o, &unpack_args(o));
    unpack.volume_mounts = Some(vec![
        mount("ca-secret", CA_SECRET_DIR, true),
        mount("ca", &work, false),
    ]);
    unpack.resources = Some(common::resources("10m", "16Mi", "1", "64Mi"));
    let mut c = strait("ca", o, &serve_args(o));
    c.ports = Some(vec![
        port("grpc", CA_PORT, "TCP"),
        port("admin", CA_ADMIN_PORT, "TCP"),
    ]);
    let probe = Probe::http(CA_ADMIN_PORT, common::ADMIN_PROBE);
    c.readiness_probe = Some(probe.readiness());
    c.liveness_probe = Some(Probe::http(CA_ADMIN_PORT, "/live").liveness());
    c.resources = Some(common::resources("50m", "32Mi", "1", "128Mi"));
    c.volume_mounts = Some(vec![mount("ca", &work, false)]);
    let mut dep = deployment(CA, ns, CA_SA, 2, c, volumes);
    if let Some(spec) = dep.spec.template.spec.as_mut() {
        spec.init_containers = Some(vec![unpack]);
    }
    let svc = service(
        CA,
        ns,
        "ClusterIP",
        vec![service_port("grpc", CA_PORT, CA_PORT, "TCP")],
    );
    Ok(vec![Manifest::new(&svc)?, Manifest::new(&dep)?])
}
