//! One cluster of a mesh: what it exposes to scenarios (addresses, trust
//! reports), and the helpers that build its parts' configs.

use super::*;

impl Cluster {
    /// What every component of the cluster trusts and presents now:
    /// (who, report) for the controller, each gateway and each sidecar.
    pub fn trust(&self) -> Vec<(String, TrustReport)> {
        let mut out = vec![(
            format!("controller {}", self.name),
            TrustReport::of(&self.certs, &self.bundle),
        )];
        for (i, g) in self.gateways.iter().enumerate() {
            if let Some(g) = g {
                out.push((format!("gateway-{i} {}", self.name), g.trust()));
            }
        }
        out.push((format!("client {}", self.name), self.client.trust()));
        for w in &self.workloads {
            for (r, rep) in w.replicas.iter().enumerate() {
                let who = format!("{}-{r} {}", w.spec.service, self.name);
                out.push((who, rep.sidecar.trust()));
            }
        }
        out
    }

    pub fn controller(&self) -> anyhow::Result<&ControllerHandle> {
        self.controller
            .as_ref()
            .ok_or_else(|| anyhow!("the controller of {} is stopped", self.name))
    }

    pub fn workload(&self, service: &str) -> anyhow::Result<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.spec.service == service)
            .ok_or_else(|| anyhow!("cluster {} has no workload {service:?}", self.name))
    }

    pub(super) fn workload_mut(&mut self, service: &str) -> anyhow::Result<&mut Workload> {
        let name = self.name.clone();
        self.workloads
            .iter_mut()
            .find(|w| w.spec.service == service)
            .ok_or_else(|| anyhow!("cluster {name} has no workload {service:?}"))
    }

    /// The VIP this cluster's client sidecar listens on for a service.
    pub fn vip(&self, namespace: &str, service: &str) -> Option<IpAddr> {
        let s = self.client.snapshot();
        s.service(namespace, service).map(|x| x.vip)
    }

    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.udp_addr()
    }

    pub fn client_proxy_addr(&self) -> SocketAddr {
        self.client.outbound
    }

    /// Where the cluster's controller serves gRPC (its planned address,
    /// also while it is stopped).
    pub fn controller_grpc(&self) -> SocketAddr {
        sock(ip(self.net, 0, 1), 8610)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.controller.as_ref().and_then(|c| c.admin_addr())
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().flatten().map(|g| g.listener).collect()
    }
}

/// A locality for a cluster's zone.
pub(super) fn locality(region: &str, zone: &str) -> Locality {
    Locality::new(region, zone).unwrap_or_default()
}

/// `controller:` of a sidecar in cluster `cluster`.
pub(super) fn controller_ref(
    address: SocketAddr,
    cluster: &ClusterName,
    locality: &Locality,
) -> ControllerRef {
    ControllerRef {
        address,
        cluster: Some(cluster.clone()),
        locality: Some(locality.clone()),
    }
}

pub(super) fn proxy_config(
    td: &TrustDomain,
    identity: IdentitySource,
    at: Ipv4Addr,
    app: Vec<AppPort>,
    local_service: Option<String>,
    bind_vips: bool,
) -> ProxyConfig {
    ProxyConfig {
        trust_domain: td.clone(),
        identity,
        listeners: Listeners {
            inbound: sock(at, INBOUND_PORT),
            outbound: sock(at, 15001),
            admin: sock(at, 0),
            bind_vips,
        },
        app,
        local_service,
        snapshot_file: None,
        controller: None,
        scope: None,
        limits: Limits {
            connect_timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        access_log: false,
        tracing: None,
        capture: Default::default(),
        service: None,
        egress: None,
    }
}

/// Starts the echo app, retrying while the port is still held by a
/// just-stopped one.
pub(super) async fn start_app(
    spec: &WorkloadSpec,
    cluster: &str,
    r: usize,
    at: Ipv4Addr,
) -> anyhow::Result<Echo> {
    let name = format!("{cluster}/{}-{r}", spec.service);
    let addr = sock(at, spec.port);
    let mut last = None;
    for _ in 0..50 {
        let res = match spec.protocol {
            Protocol::Grpc => testing::grpc(addr, &name).await,
            Protocol::Tcp => testing::tcp(addr, &name).await,
            Protocol::Http2 => testing::http(addr, &name, true, spec.behaviour.clone()).await,
            _ => testing::http(addr, &name, false, spec.behaviour.clone()).await,
        };
        match res {
            Ok(e) => return Ok(e),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    Err(anyhow!(
        "app {name} at {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
