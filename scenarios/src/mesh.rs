//! A whole multi-cluster mesh in one process on loopback: one root CA, and
//! per cluster an intermediate, a federation controller, east-west gateway
//! replicas, a DNS server, echo workloads with sidecars and a client
//! sidecar. Every component is the real library, talking over real sockets.
//!
//! Addresses: cluster `c` of a mesh with base octet `B` lives in
//! `127.(B+c).0.0/16`: controller `.0.1` (gRPC 8610, admin 8611, peer relay
//! 8612), DNS `.0.2:8653`, client sidecar `.0.3`, gateways `.0.(10+i):15443`,
//! workload `w` replica `r` at `.(1+w).(1+r)` (app on the service port,
//! sidecar inbound on 15006). Peers reach a controller through its relay, so
//! a partition is a cut relay.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use strait_agent::{ControllerRef, Role, Target};
use strait_api::snapshot::{AuthorizationPolicy, Protocol};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};
use strait_ca::trust::TrustReport;
use strait_ca::{CaDir, CertStore, SharedBundle};
use strait_federation::catalog::{
    CheckKind, EndpointSpec, Export, HealthCheck, PolicySpec, Registration, ServiceKey,
};
use strait_federation::controller::{
    Controller, ControllerConfig, Handle as ControllerHandle, TokenOptions,
};
use strait_federation::peering::FailMode;
use strait_federation::snapshot::VipRange;
use strait_gateway::{ExportTable, Gateway, GatewayConfig};
use strait_proxy::Proxy;
use strait_proxy::config::{AppPort, IdentitySource, Limits, Listeners, ProxyConfig};
use strait_proxy::testing::{self, Behaviour, Echo};
use tokio::task::JoinHandle;

use crate::relay::Relay;

mod cluster;
mod faults;

use cluster::{controller_ref, locality, proxy_config, start_app};

pub const TD: &str = "strait.local";
const INBOUND_PORT: u16 = 15006;

/// A workload (an exported or local service) of a cluster.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub service: String,
    pub namespace: String,
    pub protocol: Protocol,
    pub port: u16,
    pub replicas: usize,
    pub behaviour: Behaviour,
    pub export: Export,
    /// Zone of the replicas (defaults to the cluster's).
    pub zone: Option<String>,
    pub authorization: Vec<AuthorizationPolicy>,
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    pub zone: String,
    pub gateways: usize,
    pub workloads: Vec<WorkloadSpec>,
}

#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// Second octet of the first cluster's /16 (see the module docs).
    pub base_octet: u8,
    pub dir: PathBuf,
    pub clusters: Vec<ClusterSpec>,
    pub links: Vec<(String, String)>,
    /// Policies per cluster (applied to that cluster's controller).
    pub policies: Vec<(String, PolicySpec)>,
    /// Lease of imported data (shorter in scenarios than the default 30 s).
    pub lease: Duration,
}

/// One replica of a workload.
pub struct Replica {
    pub ip: Ipv4Addr,
    pub app: Option<Echo>,
    pub sidecar: Proxy,
}

pub struct Workload {
    pub spec: WorkloadSpec,
    pub replicas: Vec<Replica>,
}

pub struct Cluster {
    pub name: ClusterName,
    pub index: usize,
    pub locality: Locality,
    pub net: u8,
    pub vip_octet: u8,
    pub controller: Option<ControllerHandle>,
    pub relay: Relay,
    pub gateways: Vec<Option<strait_gateway::Handle>>,
    pub dns: strait_dns::role::Handle,
    pub client: Proxy,
    pub workloads: Vec<Workload>,
    tasks: Vec<JoinHandle<()>>,
    certs: CertStore,
    bundle: SharedBundle,
}

pub struct Mesh {
    pub spec: MeshSpec,
    pub ca: CaDir,
    pub td: TrustDomain,
    pub clusters: Vec<Cluster>,
}

fn ip(net: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net, c, d)
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

impl Mesh {
    pub async fn start(spec: MeshSpec) -> anyhow::Result<Self> {
        let td = TrustDomain::new(TD)?;
        std::fs::create_dir_all(&spec.dir)?;
        let ca_dir = spec.dir.join("ca");
        let ca = match CaDir::open(&ca_dir) {
            Ok(ca) => ca,
            Err(_) => CaDir::init(&ca_dir, &td, Duration::from_secs(365 * 86400))?,
        };
        let mut mesh = Self {
            spec: spec.clone(),
            ca,
            td,
            clusters: Vec::new(),
        };
        for (i, c) in spec.clusters.iter().enumerate() {
            let cluster = mesh
                .start_cluster(i, c)
                .await
                .with_context(|| format!("cluster {}", c.name))?;
            mesh.clusters.push(cluster);
        }
        for (a, b) in &spec.links {
            mesh.link(a, b).await?;
        }
        // Traffic policies, plus each workload's authorization, go to the
        // owning cluster's controller, which pushes them to its sidecars.
        let mut policies: Vec<(String, PolicySpec)> = spec.policies.clone();
        for c in &spec.clusters {
            for w in c.workloads.iter().filter(|w| !w.authorization.is_empty()) {
                let key = ServiceKey::new(&w.namespace, &w.service);
                let at = policies
                    .iter()
                    .position(|(pc, p)| *pc == c.name && p.key() == key);
                let i = at.unwrap_or_else(|| {
                    policies.push((c.name.clone(), PolicySpec::new(&key)));
                    policies.len() - 1
                });
                policies[i].1.authorization = w.authorization.clone();
            }
        }
        for (cluster, p) in &policies {
            mesh.cluster(cluster)?.controller()?.set_policy(p.clone())?;
        }
        mesh.wait_for_gateways().await?;
        Ok(mesh)
    }

    /// Waits until every gateway admits what its controller exports: each
    /// exported workload in its table and each linked peer admitted (what
    /// an operator sees in a gateway's `/exports` before sending traffic),
    /// so a scenario's first requests do not race the config push.
    async fn wait_for_gateways(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for (a, b) in &self.spec.links {
            for (exporter, caller) in [(b, a), (a, b)] {
                let c = self.cluster(exporter)?;
                let wanted: Vec<&str> = c
                    .workloads
                    .iter()
                    .filter(|w| w.spec.export.is_exported())
                    .map(|w| w.spec.service.as_str())
                    .collect();
                for g in c.gateways.iter().flatten() {
                    loop {
                        let table = g.exports();
                        let has = |s: &&str| table.services.iter().any(|e| e.name == *s);
                        if wanted.iter().all(has) && g.admits_cluster(caller) {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            return Err(anyhow!(
                                "the gateway of {exporter} did not admit {caller} to {wanted:?} within 10 s"
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn cluster(&self, name: &str) -> anyhow::Result<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.name.as_str() == name)
            .ok_or_else(|| anyhow!("no cluster {name:?} in this mesh"))
    }

    fn cluster_mut(&mut self, name: &str) -> anyhow::Result<&mut Cluster> {
        self.clusters
            .iter_mut()
            .find(|c| c.name.as_str() == name)
            .ok_or_else(|| anyhow!("no cluster {name:?} in this mesh"))
    }

    /// Certificate files for `identity` issued by `cluster`'s intermediate.
    fn issue(
        &self,
        cluster: &ClusterName,
        identity: &SpiffeId,
        tag: &str,
    ) -> anyhow::Result<(IdentitySource, CertStore)> {
        let out = self.spec.dir.join("certs").join(cluster.as_str()).join(tag);
        let f = self
            .ca
            .issue(cluster, identity, Duration::from_secs(86400), &out)?;
        let store = CertStore::from_pem(
            &std::fs::read_to_string(&f.chain)?,
            &std::fs::read_to_string(&f.key)?,
        )?;
        Ok((
            IdentitySource::Files {
                chain: f.chain,
                key: f.key,
                bundle: f.bundle,
            },
            store,
        ))
    }

    async fn start_cluster(&self, index: usize, spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        let name = ClusterName::new(&spec.name)?;
        let net = self.spec.base_octet + index as u8;
        let vip_octet = self.spec.base_octet + 40 + index as u8;
        let locality = locality(&spec.region, &spec.zone);
        if self.ca.intermediate(&name).is_err() {
            self.ca
                .new_intermediate(&name, Duration::from_secs(30 * 86400))?;
        }
        let bundle = SharedBundle::new(self.ca.bundle()?);
        let gw_addrs: Vec<SocketAddr> = (0..spec.gateways)
            .map(|i| sock(ip(net, 0, 10 + i as u8), 15443))
            .collect();
        let ctl_id = self.td.controller_id(&name);
        let (ctl_files, certs) = self.issue(&name, &ctl_id, "controller")?;
        let relay = Relay::start(sock(ip(net, 0, 1), 8612), sock(ip(net, 0, 1), 8610)).await?;
        let controller = self
            .start_controller(
                &name,
                net,
                vip_octet,
                &locality,
                &gw_addrs,
                certs.clone(),
                bundle.clone(),
                relay.addr,
            )
            .await?;
        let grpc = controller.grpc_addr();
        // Gateways and DNS follow the controller's config push, as the
        // `strait gateway` and `strait dns` processes do.
        let mut gateways = Vec::new();
        for i in 0..spec.gateways {
            gateways.push(Some(self.start_gateway(&name, net, i, grpc).await?));
        }
        let mut dns_cfg = strait_dns::DnsConfig::new(sock(ip(net, 0, 2), 8653));
        dns_cfg.meshed_clients = vec![];
        let dns_target = Target {
            address: grpc,
            cluster: name.clone(),
            trust_domain: self.td.clone(),
            role: Role::Dns,
            node_id: "dns".into(),
            locality: None,
            registration: None,
            scope: Vec::new(),
        };
        let following = strait_dns::role::Following {
            target: dns_target,
            certs: certs.clone(),
            bundle: bundle.clone(),
        };
        let dns =
            strait_dns::role::start(dns_cfg, following, strait_dns::DnsMetrics::default()).await?;
        let tasks = vec![tokio::spawn(crate::rotation::reload_files(
            ctl_files,
            self.td.clone(),
            ctl_id.clone(),
            certs.clone(),
            bundle.clone(),
        ))];
        // The cluster's client sidecar (where scenario traffic starts).
        let client_id = self.td.workload_id("default", "client")?;
        let (client_files, _) = self.issue(&name, &client_id, "client")?;
        let mut client_cfg =
            proxy_config(&self.td, client_files, ip(net, 0, 3), vec![], None, true);
        client_cfg.controller = Some(controller_ref(grpc, &name, &locality));
        let client = Proxy::start(client_cfg).await?;
        let mut cluster = Cluster {
            name: name.clone(),
            index,
            locality,
            net,
            vip_octet,
            controller: Some(controller),
            relay,
            gateways,
            dns,
            client,
            workloads: Vec::new(),
            tasks,
            certs,
            bundle,
        };
        for (w, ws) in spec.workloads.iter().enumerate() {
            let workload = self.start_workload(&cluster, w, ws).await?;
            cluster.workloads.push(workload);
        }
        self.register_all(&cluster)?;
        Ok(cluster)
    }

    async fn start_gateway(
        &self,
        cluster: &ClusterName,
        net: u8,
        i: usize,
        controller: SocketAddr,
    ) -> anyhow::Result<strait_gateway::Handle> {
        let gw_id = self
            .td
            .workload_id("strait-system", &format!("gateway-{cluster}"))?;
        let (identity, _) = self.issue(cluster, &gw_id, &format!("gateway-{i}"))?;
        let yaml = "cluster: x\ntrust_domain: strait.local\nidentity: { files: { chain: c, key: k, bundle: b } }\n";
        let mut cfg = GatewayConfig::from_yaml(yaml)?;
        cfg.cluster = cluster.clone();
        cfg.identity = identity;
        cfg.listeners.public = sock(ip(net, 0, 10 + i as u8), 15443);
        cfg.listeners.admin = sock(ip(net, 0, 10 + i as u8), 15021);
        cfg.controller = Some(ControllerRef {
            address: controller,
            cluster: None,
            locality: None,
        });
        Ok(Gateway::start(cfg, ExportTable::default()).await?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_controller(
        &self,
        name: &ClusterName,
        net: u8,
        vip_octet: u8,
        locality: &Locality,
        gateways: &[SocketAddr],
        certs: CertStore,
        bundle: SharedBundle,
        advertise: SocketAddr,
    ) -> anyhow::Result<ControllerHandle> {
        let state = self.spec.dir.join("state").join(name.as_str());
        let mut cfg = ControllerConfig::new(name.clone(), state, certs, bundle);
        cfg.locality = locality.clone();
        cfg.listen = sock(ip(net, 0, 1), 8610);
        cfg.admin_listen = Some(sock(ip(net, 0, 1), 8611));
        cfg.advertise = Some(advertise);
        cfg.gateways = gateways.to_vec();
        cfg.sync.lease = self.spec.lease;
        cfg.sync.heartbeat = (self.spec.lease / 4).max(Duration::from_millis(200));
        cfg.rescan_interval = None;
        cfg.vips = VipRange::new(vip_octet).map_err(|e| anyhow!(e))?;
        cfg.default_health_check = true;
        Ok(Controller::start(cfg).await?)
    }

    async fn start_workload(
        &self,
        cluster: &Cluster,
        w: usize,
        spec: &WorkloadSpec,
    ) -> anyhow::Result<Workload> {
        let mut replicas = Vec::new();
        let id = self.td.workload_id(&spec.namespace, &spec.service)?;
        for r in 0..spec.replicas {
            let wip = ip(cluster.net, 1 + w as u8, 1 + r as u8);
            let app = start_app(spec, cluster.name.as_str(), r, wip).await?;
            let (files, _) = self.issue(&cluster.name, &id, &format!("{}-{r}", spec.service))?;
            let app_port = AppPort {
                port: spec.port,
                protocol: spec.protocol,
                target: Some(sock(wip, spec.port)),
                permissive_listen: None,
            };
            let mut cfg = proxy_config(
                &self.td,
                files,
                wip,
                vec![app_port],
                Some(format!("{}.{}", spec.service, spec.namespace)),
                false,
            );
            let ctl = cluster.controller()?.grpc_addr();
            cfg.controller = Some(controller_ref(ctl, &cluster.name, &cluster.locality));
            let sidecar = Proxy::start(cfg).await?;
            replicas.push(Replica {
                ip: wip,
                app: Some(app),
                sidecar,
            });
        }
        Ok(Workload {
            spec: spec.clone(),
            replicas,
        })
    }

    /// Registers every workload of `cluster` in its controller (which
    /// pushes the export table to its gateways).
    fn register_all(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let ctl = cluster.controller()?;
        for w in &cluster.workloads {
            let s = &w.spec;
            let zone_loc = s
                .zone
                .as_ref()
                .map(|z| locality(&cluster.locality.region, z));
            let endpoints: Vec<EndpointSpec> = w
                .replicas
                .iter()
                .map(|r| EndpointSpec {
                    address: sock(r.ip, INBOUND_PORT),
                    locality: zone_loc.clone(),
                    identity: None,
                    weight: 1,
                })
                .collect();
            ctl.register(Registration {
                name: s.service.clone(),
                namespace: s.namespace.clone(),
                ports: vec![strait_api::snapshot::ServicePort {
                    port: s.port,
                    protocol: s.protocol,
                }],
                endpoints,
                export: s.export.clone(),
                // HTTP apps get an HTTP check, which also sees a hung
                // (paused) app; others get a TCP connect check.
                health_check: Some(HealthCheck {
                    kind: if s.protocol == Protocol::Http1 {
                        CheckKind::Http
                    } else {
                        CheckKind::Tcp
                    },
                    path: (s.protocol == Protocol::Http1).then(|| "/".to_owned()),
                    port: Some(s.port),
                    interval: Duration::from_millis(300),
                    timeout: Duration::from_millis(200),
                    healthy_threshold: 1,
                    unhealthy_threshold: 2,
                }),
            })?;
        }
        Ok(())
    }

    /// `a` takes a peering token from `b` and establishes the link.
    pub async fn link(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ca, cb) = (self.cluster(a)?, self.cluster(b)?);
        let token = cb.controller()?.peering_token(TokenOptions {
            ttl: Duration::from_secs(600),
            controller: Some(cb.relay.addr),
        })?;
        ca.controller()?
            .establish(&token, FailMode::FailStatic)
            .await
            .with_context(|| format!("link {a} -> {b}"))?;
        Ok(())
    }

    /// (file tag, identity) of every sidecar of a cluster.
    pub(crate) fn sidecar_identities(
        &self,
        c: &Cluster,
    ) -> anyhow::Result<Vec<(String, SpiffeId)>> {
        let mut out = vec![(
            "client".to_owned(),
            self.td.workload_id("default", "client")?,
        )];
        for w in &c.workloads {
            for r in 0..w.replicas.len() {
                out.push((
                    format!("{}-{r}", w.spec.service),
                    self.td.workload_id(&w.spec.namespace, &w.spec.service)?,
                ));
            }
        }
        Ok(out)
    }

    /// Every sidecar of a cluster (the client first).
    pub(crate) fn sidecars<'a>(&self, c: &'a Cluster) -> Vec<&'a Proxy> {
        std::iter::once(&c.client)
            .chain(
                c.workloads
                    .iter()
                    .flat_map(|w| w.replicas.iter().map(|r| &r.sidecar)),
            )
            .collect()
    }

    pub fn set_policy(&self, cluster: &str, policy: PolicySpec) -> anyhow::Result<()> {
        self.cluster(cluster)?.controller()?.set_policy(policy)?;
        Ok(())
    }

    pub fn set_export(&self, cluster: &str, service: &str, export: bool) -> anyhow::Result<()> {
        let c = self.cluster(cluster)?;
        let key = ServiceKey {
            namespace: c.workload(service)?.spec.namespace.clone(),
            name: service.to_owned(),
        };
        if export {
            c.controller()?.export(&key, vec![])?;
        } else {
            c.controller()?.unexport(&key)?;
        }
        Ok(())
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for c in &mut self.clusters {
            for t in c.tasks.drain(..) {
                t.abort();
            }
            if let Some(h) = c.controller.take() {
                h.shutdown().await;
            }
            for g in c.gateways.iter_mut() {
                if let Some(g) = g.take() {
                    g.kill();
                }
            }
        }
    }
}
