//! `strait proxy`: run a sidecar.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_api::snapshot::Snapshot;
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
///   # register this workload with the controller while it runs
///   service: { name: web, namespace: default, export: all }
///
/// Every key, with its default: docs/config-reference.md (limits:, egress:, ...).
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

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    if let Some(cmd) = args.command {
        return crate::capture::run(cmd);
    }
    let path = args.config.context("--config is required")?;
    let cfg = ProxyConfig::load(&path).with_context(|| path.display().to_string())?;
    let source = match (&cfg.controller, &cfg.snapshot_file) {
        (Some(c), _) => format!(
            "controller {} (cluster {})",
            c.address,
            c.cluster
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let s = Snapshot::from_yaml(&text).with_context(|| p.display().to_string())?;
            format!(
                "{} (version {}, {} service(s))",
                p.display(),
                s.version,
                s.services.len()
            )
        }
        (None, None) => {
            "nowhere: no controller: and no snapshot_file: (nothing to route to)".into()
        }
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
        let proxy = Proxy::start(cfg).await?;
        eprintln!(
            "strait sidecar: inbound (mTLS) {}, outbound proxy {}, admin http://{}/metrics, routing from {source}; Ctrl-C to stop",
            proxy.inbound, proxy.outbound, proxy.admin
        );
        if let Some(c) = proxy.capture_outbound {
            eprintln!("strait sidecar: transparent capture on {c}");
        }
        crate::runtime::release_freed_memory();
        crate::signal::wait_for_shutdown().await;
        // A registered workload leaves at once (callers stop choosing it);
        // when the controller cannot be told, its lease removes it.
        if let Err(e) = proxy.leave().await {
            tracing::warn!(error = %e, "could not deregister this workload; it expires with its registration lease");
        }
        proxy.shutdown();
        anyhow::Ok(())
    })
}
