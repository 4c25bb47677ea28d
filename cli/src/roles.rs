//! The role commands: `strait controller`, `strait gateway`, `strait dns`.
//!
//! Each loads its config, starts the component library, prints the
//! addresses it bound and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use strait_agent::{ControllerRef, Role, Target};
use strait_api::{ClusterName, Locality, TrustDomain};
use strait_ca::identity::IdentitySource;
use strait_ca::{CertStore, SharedBundle, TrustBundle};
use strait_federation::controller::admin_api::ADMIN_TOKEN_FILE;
use strait_federation::controller::{Controller, ControllerConfig};
use strait_federation::snapshot::VipRange;
use strait_gateway::{ExportTable, Gateway, GatewayConfig};

mod catalog;
mod dns;
mod standby;

pub use dns::{DnsArgs, run_dns};

/// Run a cluster's federation controller until Ctrl-C.
///
/// The catalog lives in `state_dir` (YAML files; change it with `strait
/// service register`, `export`, `policy`, `link`, which call the admin port
/// with the token the controller writes to `<state_dir>/admin-token`).
///
///   strait controller --config controller.yaml
///   strait controller --config controller.yaml --check   # validate and exit
///
/// controller.yaml (relative paths are taken from the working directory):
///   cluster: east
///   region: us-east                  # locality of local endpoints and proxies
///   zone: us-east-1a
///   trust_domain: strait.local
///   state_dir: ./state/east
///   listen: 127.0.0.1:8610           # mTLS gRPC: proxies and peers
///   admin_listen: 127.0.0.1:8611     # /metrics /ready /status and /v1 (keep on loopback)
///   advertise: 10.0.0.5:8610         # optional: the address peers dial
///   gateways: [10.0.0.5:15443]       # this cluster's east-west gateways
///   identity:                        # spiffe://<td>/ns/strait-system/sa/controller-east
///     files: { chain: ./ctl/chain.pem, key: ./ctl/key.pem, bundle: ./ctl/bundle.pem }
///     # or from the cluster's CA service (a join token once, then renewed there):
///     # ca: { address: 127.0.0.1:8620, spiffe_id: spiffe://strait.local/ns/strait-system/sa/controller-east,
///     #       token_file: ./ctl/join-token, bundle: ./ca/bundle.pem }
///   dns: { listen: 127.0.0.1:8653 }  # optional: serve clusterset.local for this cluster
///                                    # (also meshed_clients: [CIDR], egress: IP, as `strait dns`)
///   vips: 127.77.0.0/16              # optional: the loopback /16 of service VIPs
///   default_health_check: true       # ask the sidecar of endpoints without health_check:
///   registration_lease: 15s          # a self-registered sidecar's endpoint outlives its stream this long
///   catalog:                         # optional: the Kubernetes catalog instead of state_dir's files
///     kubernetes: { kubeconfig: ./kubeconfig, namespaces: [shop], label_selector: mesh=strait }
///
/// Every key, with its default: docs/config-reference.md.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ControllerArgs {
    /// Controller config (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the config and identity files, print a summary and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerFile {
    cluster: ClusterName,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    trust_domain: TrustDomain,
    state_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_admin")]
    admin_listen: SocketAddr,
    #[serde(default)]
    advertise: Option<SocketAddr>,
    #[serde(default)]
    gateways: Vec<SocketAddr>,
    identity: IdentitySource,
    #[serde(default)]
    dns: Option<DnsFile>,
    /// Where service VIPs are drawn from (default 127.77.0.0/16); clusters
    /// whose sidecars share one host each need their own.
    #[serde(default)]
    vips: Option<VipRange>,
    /// Check endpoints registered without `health_check:` by asking their
    /// sidecar each second (on by default).
    #[serde(default = "yes")]
    default_health_check: bool,
    /// How long a self-registered sidecar's endpoint stays after its
    /// config stream ended without a deregistration (crash, kill -9).
    #[serde(default, with = "strait_api::snapshot::duration_str::option")]
    registration_lease: Option<std::time::Duration>,
    /// Where the local catalog comes from (default: `state_dir`'s files).
    #[serde(default)]
    catalog: Option<catalog::CatalogFile>,
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8610))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8611))
}

/// PEM files from `strait ca issue`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFile {
    listen: SocketAddr,
    /// Networks of clients behind a sidecar (they get VIPs).
    #[serde(default)]
    meshed_clients: Vec<strait_dns::IpNet>,
    /// The cluster's egress for clients without a sidecar.
    #[serde(default)]
    egress: Option<std::net::IpAddr>,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl IdentityFiles {
    /// The certificate and the trust bundle, checked to be in `td`.
    pub fn load(&self, td: &TrustDomain) -> anyhow::Result<(CertStore, SharedBundle)> {
        let certs =
            CertStore::from_pem(&read(&self.chain)?, &read(&self.key)?).with_context(|| {
                format!(
                    "identity: {} / {}",
                    self.chain.display(),
                    self.key.display()
                )
            })?;
        let bundle = TrustBundle::from_pem(td.clone(), &read(&self.bundle)?)
            .with_context(|| format!("identity: bundle {}", self.bundle.display()))?;
        Ok((certs, SharedBundle::new(bundle)))
    }
}

/// A validated controller config plus the optional DNS listener.
struct Loaded {
    /// With the certificate from files, or none yet (from the CA service:
    /// got when it starts).
    config: ControllerConfig,
    dns: Option<strait_dns::DnsConfig>,
    /// Started with the controller: files are watched (a new certificate or
    /// bundle is swapped in), a CA-issued certificate is renewed.
    identity: IdentitySource,
    /// The Kubernetes catalog, started before the controller.
    kube: Option<catalog::KubeCatalog>,
}

fn load_controller(path: &Path) -> anyhow::Result<Loaded> {
    let text = read(path)?;
    // The error names the field; its source would repeat it.
    let f: ControllerFile = strait_api::yaml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bad = |field: &str, why: String| anyhow::anyhow!("{}: {field}: {why}", path.display());
    let locality = match (&f.region, &f.zone) {
        (None, None) => Locality::default(),
        (Some(r), z) => Locality::new(r, z.as_deref().unwrap_or_default())
            .map_err(|e| bad("region/zone", format!("{r:?}/{z:?}: {e}")))?,
        (None, Some(z)) => return Err(bad("zone", format!("{z:?} needs a region too"))),
    };
    if f.listen == f.admin_listen && f.listen.port() != 0 {
        return Err(bad(
            "admin_listen",
            format!("{} is also `listen`", f.admin_listen),
        ));
    }
    if let Some(a) = f.advertise {
        if a.ip().is_unspecified() || a.port() == 0 {
            return Err(bad(
                "advertise",
                format!("{a} needs a concrete ip and port"),
            ));
        }
    }
    if let Some(d) = &f.dns {
        if d.listen == f.listen || d.listen == f.admin_listen {
            return Err(bad(
                "dns.listen",
                format!("{} is taken by the controller", d.listen),
            ));
        }
    }
    let expected = f.trust_domain.controller_id(&f.cluster);
    let (certs, bundle) = match &f.identity {
        IdentitySource::Files { chain, key, bundle } => {
            let files = IdentityFiles {
                chain: chain.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
            };
            let (certs, bundle) = files
                .load(&f.trust_domain)
                .map_err(|e| bad("identity", format!("{e:#}")))?;
            let got = certs.identity();
            if got.as_ref() != Some(&expected) {
                let got = got.map_or_else(|| "no SPIFFE ID".to_owned(), |g| g.to_string());
                return Err(bad(
                    "identity",
                    format!(
                        "the certificate is for {got}; the controller of {} must present {expected} (strait ca issue --cluster {} --spiffe-id {expected} ...)",
                        f.cluster, f.cluster
                    ),
                ));
            }
            (certs, bundle)
        }
        IdentitySource::Ca {
            spiffe_id,
            token_file,
            bundle,
            ..
        } => {
            if spiffe_id != &expected {
                return Err(bad(
                    "identity.ca.spiffe_id",
                    format!(
                        "{spiffe_id}: the controller of {} must present {expected}",
                        f.cluster
                    ),
                ));
            }
            read(token_file).map_err(|e| bad("identity.ca.token_file", format!("{e:#}")))?;
            let roots = TrustBundle::from_pem(f.trust_domain.clone(), &read(bundle)?)
                .map_err(|e| bad("identity.ca.bundle", format!("{e:#}")))?;
            (CertStore::empty(), SharedBundle::new(roots))
        }
    };
    let kube = match f.catalog {
        Some(c) => Some(
            c.validate(&f.cluster, &f.trust_domain, &locality)
                .map_err(|(field, why)| bad(&field, why))?,
        ),
        None => None,
    };
    let mut config = ControllerConfig::new(f.cluster, f.state_dir, certs, bundle);
    config.locality = locality;
    config.listen = f.listen;
    config.admin_listen = Some(f.admin_listen);
    config.advertise = f.advertise;
    config.gateways = f.gateways;
    if let Some(v) = f.vips {
        config.vips = v;
    }
    config.default_health_check = f.default_health_check;
    if let Some(l) = f.registration_lease {
        config.registration_lease = l;
    }
    Ok(Loaded {
        config,
        dns: f.dns.map(|d| {
            let mut c = strait_dns::DnsConfig::new(d.listen);
            c.meshed_clients = d.meshed_clients;
            c.answer.egress = d.egress;
            c
        }),
        identity: f.identity,
        kube,
    })
}

pub fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let loaded = load_controller(&args.config)?;
    let c = &loaded.config;
    if args.check {
        println!(
            "config ok: cluster {} ({}), state {}, grpc {}, admin {}, {} gateway(s){}{}",
            c.cluster,
            c.locality,
            c.state_dir.display(),
            c.listen,
            c.admin_listen
                .map_or_else(|| "off".into(), |a| a.to_string()),
            c.gateways.len(),
            loaded
                .dns
                .map(|d| format!(", dns {}", d.listen))
                .unwrap_or_default(),
            loaded
                .kube
                .map(|k| format!(", {}", k.summary()))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut loaded = loaded;
        let mut config = loaded.config;
        let state_dir = config.state_dir.clone();
        let td = config.bundle.get().trust_domain().clone();
        // Files: swapped in place when they change (root rotation). The CA
        // service: renewed, and re-issued when its intermediate changes.
        let (certs, bundle, reload) = loaded.identity.start(&td).await.context("identity")?;
        let expected = td.controller_id(&config.cluster);
        if certs.identity().as_ref() != Some(&expected) {
            bail!("identity: the certificate is not for {expected}");
        }
        (config.certs, config.bundle) = (certs.clone(), bundle.clone());
        let (dns_certs, dns_bundle) = (certs, bundle);
        let mut elector = None;
        if let Some(k) = loaded.kube.take() {
            let started = k.start(config.admin_listen).await?;
            config.source = started.source;
            config.link_backend = Some(started.links);
            elector = started.elector;
        }
        let handle = Controller::start(config).await?;
        let admin = handle
            .admin_addr()
            .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/status"));
        eprintln!(
            "strait controller {}: grpc (mTLS) {}, admin {admin}, admin token {}",
            handle.cluster(),
            handle.grpc_addr(),
            state_dir.join(ADMIN_TOKEN_FILE).display()
        );
        let mut dns = None;
        if let Some(dns_config) = loaded.dns {
            let listen = dns_config.listen;
            // The controller's own DNS follows it like `strait dns` does:
            // over its config push, with the controller's certificate.
            let target = Target {
                address: handle.grpc_addr(),
                cluster: handle.cluster().clone(),
                trust_domain: td.clone(),
                role: Role::Dns,
                node_id: "dns (in the controller)".into(),
                locality: None,
                registration: None,
                scope: Vec::new(),
            };
            let following = strait_dns::role::Following {
                target,
                certs: dns_certs,
                bundle: dns_bundle,
            };
            let server =
                strait_dns::role::start(dns_config, following, strait_dns::DnsMetrics::default())
                    .await
                    .with_context(|| format!("dns on {listen}"))?;
            eprintln!(
                "strait dns for cluster {}: udp {}, tcp {}",
                handle.cluster(),
                server.udp_addr(),
                server.tcp_addr()
            );
            dns = Some(server);
        }
        let lost = catalog::shutdown_or_lost(elector.as_ref()).await;
        reload.abort();
        if let Some(d) = dns {
            let _ = d.shutdown().await;
        }
        handle.shutdown().await;
        match elector {
            Some(_) if lost => bail!("lost the leader-election lease (could not renew it in time); exiting so this replica restarts as a standby"),
            Some(e) => e.release().await,
            None => {}
        }
        eprintln!("stopped");
        anyhow::Ok(())
    })
}

/// Run an east-west gateway until Ctrl-C.
///
/// The config is the gateway's (cluster, trust domain, identity, listeners,
/// limits) plus `controller:`, its cluster's controller. The gateway
/// subscribes to that controller's config push (mTLS, as the cluster's
/// gateway identity) and admits tunnels from the clusters linked now to the
/// local endpoints of the services exported to them; while the controller
/// is away it keeps the last table.
///
///   strait gateway --config gateway.yaml
///   strait gateway --config gateway.yaml --controller 127.0.0.1:8610
///
/// gateway.yaml:
///   cluster: east
///   trust_domain: strait.local
///   controller: { address: 127.0.0.1:8610 }   # the controller's gRPC port
///   identity:                        # spiffe://<td>/ns/strait-system/sa/gateway-east
///     files: { chain: ./gw/chain.pem, key: ./gw/key.pem, bundle: ./gw/bundle.pem }
///   listeners: { public: 0.0.0.0:15443, admin: 127.0.0.1:15021 }
///   limits: { drain_timeout: 30s }   # every key: docs/config-reference.md
///
/// Without a controller (benchmarks, fixed hosts), `--exports FILE` gives a
/// fixed export table instead; any cluster under the mesh root may then
/// use it:
///
///   strait gateway --config gateway.yaml --exports exports.yaml
///
/// exports.yaml:
///   services:
///     - { name: web, namespace: default, ports: [8080],
///         endpoints: [{ address: 10.0.0.7:15006 }] }
///
/// SIGTERM drains: GOAWAY on every connection, no new connections, open
/// tunnels run up to `limits.drain_timeout`, then the process exits.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GatewayArgs {
    /// Gateway config (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// The controller's gRPC address (overrides `controller:` in the file).
    #[arg(long, conflicts_with = "exports")]
    controller: Option<SocketAddr>,
    /// A fixed export table (YAML) instead of a controller.
    #[arg(long)]
    exports: Option<PathBuf>,
    /// Worker threads [default: the CPUs this process may run on; with
    /// one, a single-threaded runtime].
    #[arg(long, env = "STRAIT_GATEWAY_THREADS")]
    threads: Option<usize>,
    /// Validate the config, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn load_exports(path: &Path) -> anyhow::Result<ExportTable> {
    let text = read(path)?;
    let table: ExportTable =
        strait_api::yaml::from_str(&text).with_context(|| path.display().to_string())?;
    table
        .validate()
        .with_context(|| format!("{}: export table refused", path.display()))?;
    Ok(table)
}

fn load_gateway(path: &Path) -> anyhow::Result<GatewayConfig> {
    GatewayConfig::load(path).map_err(|e| {
        let hint = if e.to_string().contains("controller: invalid type: string") {
            " (controller: is now { address: <the controller's gRPC address, port 8610> }: the gateway follows the config push, not the admin /status)"
        } else {
            ""
        };
        anyhow::anyhow!("{}: {e}{hint}", path.display())
    })
}

pub fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut cfg = load_gateway(&args.config)?;
    if let Some(address) = args.controller {
        let c = cfg.controller.get_or_insert(ControllerRef {
            address,
            cluster: None,
            locality: None,
        });
        c.address = address;
    }
    let fixed = match &args.exports {
        Some(path) => {
            cfg.controller = None;
            Some(load_exports(path)?)
        }
        None => None,
    };
    let from = match (&cfg.controller, &fixed) {
        (Some(c), _) => format!("controller {}", c.address),
        (None, Some(t)) => format!(
            "{} (fixed, {} service(s))",
            args.exports.as_deref().unwrap_or(Path::new("")).display(),
            t.services.len()
        ),
        (None, None) => bail!(
            "{}: controller: missing; the gateway learns what it exports from its controller (controller: {{ address: <gRPC address> }}, or --controller ADDR, or --exports FILE for a fixed table)",
            args.config.display()
        ),
    };
    if args.check {
        println!(
            "config ok: gateway of cluster {}, public {}, admin {}, exports from {from}",
            cfg.cluster, cfg.listeners.public, cfg.listeners.admin
        );
        return Ok(());
    }
    let rt = crate::runtime::data_plane(args.threads)?;
    rt.block_on(async move {
        let cluster = cfg.cluster.clone();
        let gw = Gateway::start(cfg, fixed.unwrap_or_default()).await?;
        eprintln!(
            "strait gateway {cluster}: public (mTLS) {}, admin http://{}/metrics, exports from {from}",
            gw.listener, gw.admin
        );
        crate::signal::wait_for_shutdown().await;
        eprintln!("draining");
        gw.shutdown().await;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}
