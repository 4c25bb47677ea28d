//! `strait top` (alias `strait stat`): live traffic per service and
//! cluster pair, read from the sidecars' and gateways' `/metrics` of a
//! running mesh, like `linkerd viz stat`. It scrapes every target twice,
//! `--interval` apart, and shows what grew in between ([`stats`]); on a
//! terminal it keeps refreshing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::output::{Format, emit, parse_duration};

mod stats;

use stats::{LinkRow, Sample, ServiceRow};

/// Live success rate, requests/s and p50/p99 per service and cluster pair.
///
/// Reads the metrics of every sidecar (`strait sidecar add`), egress and
/// gateway of a `strait cluster up` directory, or of the admin addresses
/// given with --target, twice, --interval apart. Services are seen from
/// the calling sidecars (FROM is the caller's cluster, TO the cluster that
/// answered); links from the serving cluster's gateways. On a terminal it
/// refreshes until Ctrl-C; otherwise (and with -o json) it prints once.
///
///   strait top
///   strait stat --cluster east -o json
///   strait top --target 127.0.0.1:15000 --target 127.0.0.1:15021 --once
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TopArgs {
    #[command(flatten)]
    dir: crate::meshdir::DirFlag,
    /// Only the sidecars and gateway of this cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// Admin addresses to read instead of a mesh directory (repeatable).
    #[arg(long = "target")]
    targets: Vec<SocketAddr>,
    /// Time between the two scrapes (and between refreshes).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// Print once, also on a terminal.
    #[arg(long)]
    once: bool,
}

/// One admin port read.
#[derive(Debug, Clone, Serialize)]
struct Target {
    address: SocketAddr,
    /// `sidecar`, `egress`, `gateway`, or `target` (from --target).
    kind: &'static str,
    cluster: Option<String>,
    /// Why it could not be read (the figures leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Top {
    interval_seconds: f64,
    services: Vec<ServiceRow>,
    links: Vec<LinkRow>,
    targets: Vec<Target>,
}

/// Every sidecar, egress and gateway admin port of the mesh directory.
fn targets(args: &TopArgs) -> anyhow::Result<Vec<Target>> {
    if !args.targets.is_empty() {
        return Ok(args
            .targets
            .iter()
            .map(|&address| Target {
                address,
                kind: "target",
                cluster: None,
                error: None,
            })
            .collect());
    }
    let dir = args.dir.resolve();
    let clusters = crate::cluster::layout::clusters(&dir)?;
    if clusters.is_empty() {
        bail!(
            "no `strait cluster up` clusters in {} (start one, or pass --target ADDR with sidecar and gateway admin addresses)",
            dir.display()
        );
    }
    if let Some(c) = &args.cluster
        && !clusters.iter().any(|i| &i.name == c)
    {
        bail!("no cluster {c} in {}", dir.display());
    }
    let mut out = Vec::new();
    for info in clusters
        .iter()
        .filter(|i| args.cluster.as_ref().is_none_or(|c| *c == i.name))
    {
        let at = |address, kind| Target {
            address,
            kind,
            cluster: Some(info.name.clone()),
            error: None,
        };
        out.push(at(info.gateway_admin, "gateway"));
        out.push(at(crate::cluster::configs::egress_admin(info), "egress"));
        for s in crate::sidecar::list(&dir, Some(&info.name))? {
            if s.running {
                out.push(at(s.admin, "sidecar"));
            }
        }
    }
    Ok(out)
}

/// `GET /metrics` of one admin port, parsed.
async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<Sample>> {
    use http_body_util::BodyExt;
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/metrics")
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        if !resp.status().is_success() {
            bail!("answered {}", resp.status());
        }
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .context("no answer within 3s")??;
    stats::parse(&text).map_err(|e| anyhow::anyhow!("bad metrics: {e}"))
}

/// Scrapes every target; failures are recorded on the target.
async fn scrape_all(targets: &mut [Target]) -> Vec<Option<Vec<Sample>>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let addr = t.address;
        set.spawn(async move { (i, scrape(addr).await) });
    }
    let mut got: Vec<anyhow::Result<Vec<Sample>>> = targets
        .iter()
        .map(|_| Err(anyhow::anyhow!("not scraped")))
        .collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            got[i] = r;
        }
    }
    targets
        .iter_mut()
        .zip(got)
        .map(|(t, r)| match r {
            Ok(s) => {
                t.error = None;
                Some(s)
            }
            Err(e) => {
                t.error = Some(format!("{e:#}"));
                None
            }
        })
        .collect()
}

/// The figures between two scrapes of the same targets.
fn top(
    targets: &[Target],
    before: &[Option<Vec<Sample>>],
    after: &[Option<Vec<Sample>>],
    took: Duration,
) -> Top {
    let grown: Vec<Sample> = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some(stats::growth(b.as_ref()?, a.as_ref()?)))
        .flatten()
        .collect();
    let (services, links) = stats::figures(&grown, took.as_secs_f64());
    Top {
        interval_seconds: took.as_secs_f64(),
        services,
        links,
        targets: targets.to_vec(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn human(t: &Top) -> String {
    let mut out = String::new();
    let mut rows =
        vec![["SERVICE", "FROM", "TO", "SUCCESS", "RPS", "P50", "P99"].map(String::from)];
    for s in &t.services {
        rows.push([
            s.service.clone(),
            s.source_cluster.clone(),
            if s.destination_cluster.is_empty() {
                "(none)".to_owned()
            } else {
                s.destination_cluster.clone()
            },
            opt(s.success_rate, |r| format!("{:.2}%", r * 100.0)),
            format!("{:.1}", s.requests_per_second),
            opt(s.p50_ms, |v| format!("{v:.1}ms")),
            opt(s.p99_ms, |v| format!("{v:.1}ms")),
        ]);
    }
    out.push_str(&table(&rows));
    if !t.links.is_empty() {
        let mut rows = vec![
            [
                "LINK",
                "SERVICE",
                "TUNNELS/S",
                "REFUSED/S",
                "IN B/S",
                "OUT B/S",
            ]
            .map(String::from),
        ];
        for l in &t.links {
            rows.push([
                format!("{} -> {}", l.source_cluster, l.destination_cluster),
                l.service.clone(),
                format!("{:.1}", l.tunnels_per_second),
                format!("{:.1}", l.refused_per_second),
                format!("{:.0}", l.bytes_in_per_second),
                format!("{:.0}", l.bytes_out_per_second),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    for target in t.targets.iter().filter(|t| t.error.is_some()) {
        out.push_str(&format!(
            "\nnot read: {} {} ({})",
            target.kind,
            target.address,
            target.error.as_deref().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "\n{} target(s) read over {:.1}s\n",
        t.targets.iter().filter(|t| t.error.is_none()).count(),
        t.interval_seconds
    ));
    out
}

/// Columns padded to their widest cell.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned() + "\n"
        })
        .collect()
}

pub fn run(args: TopArgs, format: Format) -> anyhow::Result<()> {
    let mut targets = targets(&args)?;
    let live = format == Format::Human
        && !args.once
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut before = scrape_all(&mut targets).await;
        if before.iter().all(Option::is_none) {
            let why: Vec<String> = targets
                .iter()
                .map(|t| {
                    format!(
                        "{} {}: {}",
                        t.kind,
                        t.address,
                        t.error.as_deref().unwrap_or("")
                    )
                })
                .collect();
            bail!("no target answered:\n  {}", why.join("\n  "));
        }
        let mut at = Instant::now();
        loop {
            tokio::time::sleep(args.interval).await;
            let after = scrape_all(&mut targets).await;
            let now = Instant::now();
            let t = top(&targets, &before, &after, now - at);
            if !live {
                return emit(format, &t, human);
            }
            // Clear the screen and draw again.
            print!("\x1b[2J\x1b[H{}", human(&t));
            (before, at) = (after, now);
        }
    })
}
