//! `strait status`: links, services, endpoints and who serves each service
//! now, from the controllers' admin `/status`.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::Args;
use strait_federation::controller::Status;

use crate::output::{Format, emit};

/// Show links, global services, endpoints and who serves each service now.
///
/// Reads a running demo's `demo.json`, or asks the controllers whose admin
/// addresses you give.
///
///   strait status
///   strait status -o json
///   strait status --controller 127.0.0.1:8611
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct StatusArgs {
    #[command(flatten)]
    dir: crate::meshdir::DirFlag,
    /// Controller admin addresses (instead of a demo directory).
    #[arg(long = "controller")]
    controllers: Vec<SocketAddr>,
}

fn controllers(args: &StatusArgs) -> anyhow::Result<Vec<SocketAddr>> {
    if !args.controllers.is_empty() {
        return Ok(args.controllers.clone());
    }
    let dir = args.dir.resolve();
    // A `cluster up` directory lists its clusters; a demo's has demo.json.
    let up = crate::cluster::layout::clusters(&dir)?;
    if !up.is_empty() {
        return Ok(up.iter().map(|c| c.admin).collect());
    }
    let state = crate::meshdir::read_state(&dir, "--controller ADDR")?;
    Ok(state.clusters.iter().filter_map(|c| c.admin).collect())
}

async fn fetch(addr: SocketAddr) -> anyhow::Result<Status> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("controller admin {addr}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/status")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("controller {addr} answered {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

pub fn status(args: StatusArgs, format: Format) -> anyhow::Result<()> {
    let addrs = controllers(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    let statuses: Vec<Status> = rt.block_on(async {
        let mut out = Vec::new();
        for a in addrs {
            out.push(fetch(a).await?);
        }
        anyhow::Ok(out)
    })?;
    emit(format, &statuses, |all| all.iter().map(render).collect())
}

fn render(s: &Status) -> String {
    let mut out = format!("cluster {} (config version {})\n", s.cluster, s.version);
    if s.links.is_empty() {
        out.push_str("  links: none\n");
    }
    for l in &s.links {
        out.push_str(&format!(
            "  link -> {:<10} {:<11} lease {:<5} {}\n",
            l.peer,
            format!("{:?}", l.fail_mode),
            format!("{}s", l.lease_secs),
            sync_line(l.sync.as_ref().and_then(|x| serde_json::to_value(x).ok()))
        ));
    }
    for svc in &s.services {
        out.push_str(&format!(
            "  service {}.{} vip {} ports {}  serving: {} ({})\n",
            svc.name,
            svc.namespace,
            svc.vip,
            svc.ports.join(","),
            svc.serving
                .cluster
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            svc.serving.reason
        ));
        for c in &svc.clusters {
            let eps: Vec<String> = c
                .endpoints
                .iter()
                .map(|e| format!("{} {:?}", e.address, e.health).to_lowercase())
                .collect();
            out.push_str(&format!(
                "    {:<10} {}{}\n",
                c.cluster,
                if c.local { "(local) " } else { "" },
                eps.join(", ")
            ));
        }
    }
    for c in &s.conflicts {
        out.push_str(&format!(
            "  conflict: {}\n",
            serde_json::to_string(c).unwrap_or_default()
        ));
    }
    out
}

/// `sync up, data 1.8s old, 1 full resync, 0 deltas` from the sync status.
fn sync_line(v: Option<serde_json::Value>) -> String {
    let Some(v) = v else {
        return "sync not started".into();
    };
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let mut line = format!(
        "sync: data {:.1}s old, {} full resync(s), {} delta(s)",
        num("age_secs"),
        num("full_resyncs"),
        num("delta_updates")
    );
    if let Some(err) = v.get("last_error").and_then(serde_json::Value::as_str) {
        line.push_str(&format!(", last error: {err}"));
    }
    line
}
