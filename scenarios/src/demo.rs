//! `strait demo`: three clusters (east, west, central) on loopback with a
//! shared root CA, a controller, a gateway and DNS per cluster, an echo
//! service exported from west and central, and the links between them.
//! It prints what it started and how to try it, writes `demo.json` (the
//! addresses `strait status` reads), and runs until told to stop.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use strait_api::ClusterName;
use strait_api::snapshot::Protocol;
use strait_federation::catalog::{Export, PolicySpec, ServiceKey};
use strait_proxy::testing::Behaviour;

use crate::mesh::{ClusterSpec, Mesh, MeshSpec, WorkloadSpec};

/// Second octet of the demo's first cluster (127.180.0.0/16 ...).
pub const DEMO_OCTET: u8 = 180;

pub use strait_api::meshdir::{DemoCluster, DemoState};

/// `demo.json` in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(strait_api::meshdir::DEMO_STATE_FILE)
}

fn echo(export: Export) -> WorkloadSpec {
    WorkloadSpec {
        service: "echo".into(),
        namespace: "demo".into(),
        protocol: Protocol::Http1,
        port: 8080,
        replicas: 2,
        behaviour: Behaviour::default(),
        export,
        zone: None,
        authorization: Vec::new(),
    }
}

/// The demo's mesh.
pub fn spec(dir: &Path) -> MeshSpec {
    let cluster = |name: &str, region: &str, workloads: Vec<WorkloadSpec>| ClusterSpec {
        name: name.into(),
        region: region.into(),
        zone: format!("{region}-1a"),
        gateways: 1,
        workloads,
    };
    let mut policy = PolicySpec::new(&ServiceKey {
        namespace: "demo".into(),
        name: "echo".into(),
    });
    policy.failover = ["west", "central"]
        .iter()
        .filter_map(|c| ClusterName::new(c).ok())
        .collect();
    MeshSpec {
        base_octet: DEMO_OCTET,
        dir: dir.to_owned(),
        clusters: vec![
            cluster("east", "us-east", vec![]),
            cluster("west", "us-west", vec![echo(Export::All)]),
            cluster("central", "us-central", vec![echo(Export::All)]),
        ],
        links: vec![
            ("east".into(), "west".into()),
            ("west".into(), "central".into()),
            ("east".into(), "central".into()),
        ],
        policies: vec![("east".into(), policy)],
        lease: Duration::from_secs(10),
    }
}

/// Starts the demo mesh and waits until east's sidecar can reach echo.
pub async fn start(dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<(Mesh, DemoState)> {
    progress("creating the root CA and one intermediate per cluster");
    progress("starting east, west and central: controller, gateway, DNS, sidecars, echo apps");
    let mesh = Mesh::start(spec(dir)).await?;
    progress(
        "linked east-west, west-central, east-central; echo.demo exported from west and central",
    );
    let east = mesh.cluster("east")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(vip) = east.vip("demo", "echo") {
            if tokio::net::TcpStream::connect((vip, 8080)).await.is_ok() {
                break;
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "echo.demo never reached east's sidecar"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = DemoState {
        pid: std::process::id(),
        clusters: mesh
            .clusters
            .iter()
            .map(|c| DemoCluster {
                name: c.name.to_string(),
                admin: c.admin_addr(),
                dns: c.dns_addr(),
                outbound_proxy: c.client_proxy_addr(),
                gateways: c.gateway_addrs(),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&state)?;
    strait_ca::store::write_atomic(&state_file(dir), &json, 0o644)?;
    Ok((mesh, state))
}

/// The lines `strait demo` prints once everything runs.
pub fn banner(mesh: &Mesh, state: &DemoState) -> String {
    let mut out =
        String::from("\nStrait demo is running: 3 clusters on loopback, one root CA.\n\n");
    out.push_str("  cluster   controller admin         DNS                  gateway\n");
    for c in &state.clusters {
        out.push_str(&format!(
            "  {:<9} {:<22} {:<20} {}\n",
            c.name,
            c.admin.map(|a| a.to_string()).unwrap_or_default(),
            c.dns,
            c.gateways
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let east = mesh.cluster("east").ok();
    let vip = east.and_then(|e| e.vip("demo", "echo"));
    let dns = state.clusters.first().map(|c| c.dns);
    out.push_str("\nTry it (echo.demo runs only in west and central; east fails over by policy west, central):\n\n");
    if let Some(vip) = vip {
        out.push_str(&format!("  curl http://{vip}:8080/hello                 # east's sidecar VIP -> west gateway -> west\n"));
    }
    if let Some(e) = state.clusters.first() {
        out.push_str(&format!(
            "  curl -x http://{} http://echo.demo.svc.clusterset.local:8080/hello\n",
            e.outbound_proxy
        ));
    }
    if let Some(dns) = dns {
        out.push_str(&format!(
            "  dig @{} -p {} echo.demo.svc.clusterset.local\n  dig @{} -p {} west.echo.demo.svc.clusterset.local\n",
            dns.ip(),
            dns.port(),
            dns.ip(),
            dns.port()
        ));
    }
    out.push_str("  strait status            # links, services and who serves east now\n\nCtrl-C stops everything.\n");
    out
}

/// One A query over UDP; the addresses answered.
pub async fn query_a(server: SocketAddr, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut msg = Message::query();
    msg.add_query(Query::query(
        Name::from_ascii(name).context("bad name")?,
        RecordType::A,
    ));
    let bytes = msg.to_vec()?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&bytes, server).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
        .await
        .context("dns timeout")??;
    let answer = Message::from_vec(&buf[..n])?;
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}
