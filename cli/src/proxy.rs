//! `strait proxy`: run a sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use strait_api::ClusterName;
use strait_api::snapshot::Snapshot;
use strait_ca::tls::ExpectedServer;
use strait_federation::controller::controller_identity;
use strait_proxy::{Proxy, ProxyConfig};

/// Run the sidecar proxy beside one workload until Ctrl-C.
///
/// The config names the identity (certificate files or the cluster CA), the
/// listeners and the app's ports. Routing comes from the cluster's
/// controller (`controller:`, its config push over mTLS; when the
/// controller is gone the sidecar keeps the last good snapshot) or from a
/// snapshot file (`snapshot_file:`, re-read when it changes; a bad file is
/// refused and the last good snapshot stays).
///
///   strait proxy --config sidecar.yaml
///   strait proxy --config sidecar.yaml --check     # validate and exit
///   strait proxy capture install --netns pod1 --proxy-uid 1337   # see `capture --help`
///
/// sidecar.yaml:
///   trust_domain: strait.local
///   identity: { files: { chain: web/chain.pem, key: web/key.pem, bundle: web/bundle.pem } }
///   listeners: { inbound: 127.0.0.1:15006, outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000 }
///   local_service: web.default
///   app: [{ port: 8080, protocol: http1, target: 127.0.0.1:8080 }]
///   controller: { address: 127.0.0.1:8610, cluster: east, locality: us-east/us-east-1a }
///   # with `strait proxy capture install`: where redirected connections arrive
///   capture: { outbound: 127.0.0.1:15002, unknown: passthrough }
#[derive(Debug, Args)]
#[command(
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<crate::capture::ProxyCommand>,
    /// Sidecar config (YAML).
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    /// Validate the config and snapshot, print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Worker threads [default: the CPUs this process may run on; with
    /// one, a single-threaded runtime].
    #[arg(long, env = "STRAIT_PROXY_THREADS")]
    threads: Option<usize>,
}

/// `controller:` of a sidecar config: where its snapshots come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerRef {
    /// The controller's gRPC address (mTLS), not its admin port.
    address: SocketAddr,
    /// The workload's cluster; the controller must prove it is that
    /// cluster's controller (its SPIFFE ID).
    cluster: ClusterName,
    /// `region/zone` of the workload, for locality-aware routing.
    #[serde(default)]
    locality: Option<String>,
}

/// Splits `controller:` off the YAML and parses the rest as a [`ProxyConfig`].
fn load(path: &Path) -> anyhow::Result<(ProxyConfig, Option<ControllerRef>)> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    strait_api::yaml::check_nesting(&text, strait_api::yaml::MAX_YAML_NESTING)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| path.display().to_string())?;
    let controller = match doc.as_mapping_mut().and_then(|m| m.remove("controller")) {
        Some(v) => Some(serde_yaml_ng::from_value::<ControllerRef>(v).with_context(|| {
            format!(
                "{}: controller: needs {{ address: host:port, cluster: NAME, locality: region/zone }}",
                path.display()
            )
        })?),
        None => None,
    };
    let cfg = ProxyConfig::from_yaml(&serde_yaml_ng::to_string(&doc)?)
        .with_context(|| path.display().to_string())?;
    if controller.is_some() && cfg.snapshot_file.is_some() {
        anyhow::bail!(
            "{}: controller: and snapshot_file: are two sources of routing; keep one",
            path.display()
        );
    }
    if let Some(l) = controller.as_ref().and_then(|c| c.locality.as_deref()) {
        l.parse::<strait_api::Locality>()
            .with_context(|| format!("{}: controller.locality: {l:?}", path.display()))?;
    }
    Ok((cfg, controller))
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    if let Some(cmd) = args.command {
        return crate::capture::run(cmd);
    }
    let path = args.config.context("--config is required")?;
    let (cfg, controller) = load(&path)?;
    let snapshot = match &cfg.snapshot_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            Snapshot::from_yaml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => empty_snapshot()?,
    };
    let source = match &controller {
        Some(c) => format!("controller {} (cluster {})", c.address, c.cluster),
        None => format!(
            "snapshot version {} with {} service(s)",
            snapshot.version,
            snapshot.services.len()
        ),
    };
    if args.check {
        println!(
            "config ok: trust domain {}, {} app port(s), routing from {source}",
            cfg.trust_domain,
            cfg.app.len(),
        );
        return Ok(());
    }
    let rt = crate::runtime::data_plane(args.threads)?;
    rt.block_on(async move {
        let td = cfg.trust_domain.clone();
        let proxy = Proxy::start(cfg, snapshot).await?;
        eprintln!(
            "strait sidecar: inbound (mTLS) {}, outbound proxy {}, admin http://{}/metrics, routing from {source}; Ctrl-C to stop",
            proxy.inbound, proxy.outbound, proxy.admin
        );
        if let Some(c) = proxy.capture_outbound {
            eprintln!("strait sidecar: transparent capture on {c}");
        }
        crate::runtime::release_freed_memory();
        let feed = async {
            match controller {
                Some(c) => follow(&proxy, &td, c).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = crate::signal::wait_for_shutdown() => {}
            () = feed => {}
        }
        proxy.shutdown();
        anyhow::Ok(())
    })
}

/// Installs every snapshot the controller pushes; a refused one is logged
/// and the last good one stays (so does it while the controller is away).
async fn follow(proxy: &Proxy, td: &strait_api::TrustDomain, c: ControllerRef) {
    let (certs, bundle) = proxy.identity();
    let node = strait_api::proto::config::Node {
        id: String::new(),
        cluster: c.cluster.to_string(),
        locality: c.locality.clone().unwrap_or_default(),
    };
    let expected = ExpectedServer::Id(controller_identity(td, &c.cluster));
    let sub = strait_federation::push_client::subscribe(
        c.address,
        certs,
        bundle,
        expected,
        node,
        Default::default(),
    );
    let apply = proxy.applier();
    let mut rx = sub.snapshots();
    loop {
        let next = rx.borrow_and_update().clone();
        if let Some(s) = next {
            let version = s.version;
            match apply((*s).clone()) {
                Ok(()) => tracing::info!(version, "snapshot from the controller applied"),
                Err(e) => {
                    tracing::warn!(version, error = %e, "snapshot from the controller refused; keeping the last good one")
                }
            }
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// A sidecar with no snapshot yet serves nothing outbound until one comes.
fn empty_snapshot() -> anyhow::Result<Snapshot> {
    Ok(Snapshot::from_yaml(
        "version: 0\nlocal: { cluster: local }\nservices: []\n",
    )?)
}
