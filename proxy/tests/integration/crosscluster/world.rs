//! The cross-cluster test world: one root, per-cluster intermediates,
//! sidecars and gateways on per-cluster loopback ranges, load helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strait_api::{ClusterName, TrustDomain};
use strait_ca::CaDir;
use strait_gateway::{ExportTable, Gateway, GatewayConfig, Handle, Limits, Listeners};
use strait_proxy::Proxy;
use strait_proxy::config::{self, AppPort, ProxyConfig};
use strait_proxy::testing::{self, Behaviour, Echo};

use crate::support::{Conn, TD, snap};

pub(super) const CLIENT: &str = "spiffe://strait.local/ns/default/sa/frontend";

pub(super) struct World {
    tmp: tempfile::TempDir,
    ca: CaDir,
}

pub(super) fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

pub(super) fn locality(cluster: &str) -> &'static str {
    match cluster {
        "east" => "us-east/a",
        "west" => "us-west/a",
        _ => "eu-central/a",
    }
}

impl World {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new(TD).unwrap();
        let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
        for c in ["east", "west", "central"] {
            ca.new_intermediate(&cluster(c), Duration::from_secs(86400))
                .unwrap();
        }
        Self { tmp, ca }
    }

    fn files(
        &self,
        c: &str,
        sa: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let id = strait_api::SpiffeId::parse(&format!("spiffe://{TD}/ns/default/sa/{sa}")).unwrap();
        let dir = self
            .tmp
            .path()
            .join(format!("{c}-{sa}-{}", rand::random::<u64>()));
        let f = self
            .ca
            .issue(&cluster(c), &id, Duration::from_secs(3600), &dir)
            .unwrap();
        (f.chain, f.key, f.bundle)
    }

    /// A sidecar of cluster `c` on `ip`; with `app`, it serves that app as
    /// `sa.default` on `port`.
    pub(super) async fn sidecar(
        &self,
        c: &str,
        ip: &str,
        sa: &str,
        app: Option<(u16, &str, SocketAddr)>,
        snapshot: &str,
    ) -> Proxy {
        let (chain, key, bundle) = self.files(c, sa);
        let any = |ip: &str| format!("{ip}:0").parse().unwrap();
        let cfg = ProxyConfig {
            trust_domain: TrustDomain::new(TD).unwrap(),
            identity: config::IdentitySource::Files { chain, key, bundle },
            listeners: config::Listeners {
                inbound: any(ip),
                outbound: any(ip),
                admin: any(ip),
                bind_vips: app.is_none(),
            },
            app: app
                .map(|(port, protocol, target)| AppPort {
                    port,
                    protocol: serde_yaml_ng::from_str(protocol).unwrap(),
                    target: Some(target),
                    permissive_listen: None,
                })
                .into_iter()
                .collect(),
            local_service: app.map(|_| format!("{sa}.default")),
            snapshot_file: None,
            controller: None,
            scope: None,
            limits: config::Limits::default(),
            access_log: false,
            tracing: None,
            capture: Default::default(),
            service: None,
            egress: None,
        };
        let snapshot = if snapshot.is_empty() {
            format!(
                "version: 1\nlocal: {{ cluster: {c}, locality: {} }}\n",
                locality(c)
            )
        } else {
            snapshot.to_owned()
        };
        Proxy::start_with(cfg, snap(&snapshot)).await.unwrap()
    }

    pub(super) fn gateway_config(&self, c: &str, ip: &str) -> GatewayConfig {
        let (chain, key, bundle) = self.files(c, "eastwest-gateway");
        GatewayConfig {
            cluster: cluster(c),
            trust_domain: TrustDomain::new(TD).unwrap(),
            identity: strait_gateway::config::IdentitySource::Files { chain, key, bundle },
            listeners: Listeners {
                public: format!("{ip}:0").parse().unwrap(),
                admin: format!("{ip}:0").parse().unwrap(),
            },
            limits: Limits::default(),
            controller: None,
            tracing: None,
        }
    }

    pub(super) async fn gateway(&self, c: &str, ip: &str, exports: ExportTable) -> Handle {
        Gateway::start(self.gateway_config(c, ip), exports)
            .await
            .unwrap()
    }
}

/// One exported service per (name, port, endpoint addresses).
pub(super) fn exports(services: &[(&str, u16, &[SocketAddr])]) -> ExportTable {
    let mut yaml = String::from("services:\n");
    for (name, port, eps) in services {
        let eps: Vec<String> = eps
            .iter()
            .map(|a| format!("{{ address: \"{a}\" }}"))
            .collect();
        yaml += &format!(
            "  - {{ name: {name}, ports: [{port}], endpoints: [{}] }}\n",
            eps.join(", ")
        );
    }
    serde_yaml_ng::from_str(&yaml).unwrap()
}

/// An endpoint of a remote service: (inbound address, cluster, sa, gateways).
pub(super) type Remote<'a> = (SocketAddr, &'a str, &'a str, &'a [SocketAddr]);

/// The snapshot of the calling sidecar in east: services whose endpoints
/// are all in other clusters.
/// (name, vip, port, protocol, endpoints, extra yaml)
pub(super) type Svc<'a> = (&'a str, &'a str, u16, &'a str, &'a [Remote<'a>], &'a str);

pub(super) fn east_snapshot(services: &[Svc<'_>]) -> String {
    let mut s = "version: 1\nlocal: { cluster: east, locality: us-east/a }\nclusters: [west, central]\nservices:\n".to_owned();
    for (name, vip, port, protocol, eps, extra) in services {
        s += &format!(
            "  - name: {name}\n    namespace: default\n    vip: {vip}\n    ports: [{{ port: {port}, protocol: {protocol} }}]\n    endpoints:\n"
        );
        for (addr, c, sa, gws) in *eps {
            let gws: Vec<String> = gws.iter().map(ToString::to_string).collect();
            s += &format!(
                "      - {{ address: \"{addr}\", cluster: {c}, locality: {}, identity: \"spiffe://{TD}/ns/default/sa/{sa}\", gateways: [{}] }}\n",
                locality(c),
                gws.join(", ")
            );
        }
        s += extra;
    }
    s
}

pub(super) async fn http_app(ip: &str, name: &str) -> Echo {
    testing::http(
        format!("{ip}:0").parse().unwrap(),
        name,
        false,
        Behaviour::default(),
    )
    .await
    .unwrap()
}

pub(super) fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(super) fn tunnels_ok(gw: &Handle, service: &str) -> f64 {
    metric(
        &gw.metrics(),
        &format!(
            r#"strait_gateway_tunnels_total{{source_cluster="east",destination_service="{service}",destination_cluster="west",result="ok"}}"#
        ),
    )
}

/// `workers` keep-alive clients sending GETs to `vip` until `stop`; returns
/// (served per app name, failed).
pub(super) async fn load(
    vip: SocketAddr,
    workers: usize,
    stop: Arc<AtomicUsize>,
) -> (HashMap<String, usize>, usize) {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(vip).await;
            let (mut seen, mut failed) = (std::collections::HashMap::<String, usize>::new(), 0);
            while stop.load(Ordering::Relaxed) == 0 {
                let (status, body) = conn.get("/", "web").await;
                if status == 200 {
                    *seen
                        .entry(body.split(' ').next().unwrap_or("").to_owned())
                        .or_default() += 1;
                } else {
                    failed += 1;
                }
            }
            (seen, failed)
        }));
    }
    let (mut seen, mut failed) = (HashMap::new(), 0);
    for t in tasks {
        let (s, f) = t.await.unwrap();
        failed += f;
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
    }
    (seen, failed)
}

/// `n` sequential GETs; returns (answered by central, failed).
pub(super) async fn load_n(vip: SocketAddr, n: usize) -> (usize, usize) {
    let mut conn = Conn::open(vip).await;
    let (mut central, mut failed) = (0, 0);
    for _ in 0..n {
        let (status, body) = conn.get("/", "web").await;
        match status {
            200 if body.starts_with("central ") => central += 1,
            200 => {}
            _ => failed += 1,
        }
    }
    (central, failed)
}
