//! `strait proxy`: run a sidecar.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_api::snapshot::Snapshot;
use strait_proxy::{Proxy, ProxyConfig};

/// Run the sidecar proxy beside one workload until Ctrl-C.
///
/// The config names the identity (certificate files or the cluster CA), the
/// listeners and the app's ports; routing comes from a snapshot file
/// (re-read when it changes; a bad file is refused and the last good
/// snapshot stays) or from the controller.
///
///   strait proxy --config sidecar.yaml
///   strait proxy --config sidecar.yaml --check     # validate and exit
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ProxyArgs {
    /// Sidecar config (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the config and snapshot, print a summary and exit.
    #[arg(long)]
    check: bool,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let cfg = ProxyConfig::load(&args.config)?;
    let snapshot = match &cfg.snapshot_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            Snapshot::from_yaml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => empty_snapshot(&cfg)?,
    };
    if args.check {
        println!(
            "config ok: trust domain {}, {} app port(s), snapshot version {} with {} service(s)",
            cfg.trust_domain,
            cfg.app.len(),
            snapshot.version,
            snapshot.services.len()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let proxy = Proxy::start(cfg, snapshot).await?;
        eprintln!(
            "strait sidecar: inbound (mTLS) {}, outbound proxy {}, admin http://{}/metrics; Ctrl-C to stop",
            proxy.inbound, proxy.outbound, proxy.admin
        );
        crate::signal::wait_for_shutdown().await;
        proxy.shutdown();
        anyhow::Ok(())
    })
}

/// A sidecar with no snapshot yet serves nothing outbound until one comes.
fn empty_snapshot(cfg: &ProxyConfig) -> anyhow::Result<Snapshot> {
    let _ = cfg;
    Ok(Snapshot::from_yaml(
        "version: 0\nlocal: { cluster: local }\nservices: []\n",
    )?)
}
