//! `strait-bench push`: config push with many proxies.
//!
//! One command runs a controller's push service in a child process (this
//! binary again, `push-controller`: the gRPC server over mTLS, the world
//! re-merged with `merge_from` and published as the controller does) with
//! `--services` services, and opens `--sessions` delta sessions to it from
//! this process, each on its own mTLS connection: a light client that
//! decodes every message and ACKs each version. Then three changes, one at a
//! time: one endpoint moves, one service is added, one service fails over
//! (its local endpoints turn unhealthy; a linked cluster serves it too).
//! For each: time from publishing until every session ACKed, gRPC payload
//! bytes received by all sessions, the controller's CPU time and RSS.
//!
//! It measures; it does not assert.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use serde_json::json;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Node, SnapshotRequest};
use strait_api::{ClusterName, TrustDomain};
use strait_ca::tls::ExpectedServer;
use strait_ca::{CaDir, CertStore, SharedBundle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod world;

pub struct Args {
    services: usize,
    sessions: usize,
    endpoints: usize,
    /// Sessions that connect (and take the full state) at once.
    batch: usize,
}

pub fn parse(rest: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        services: 10_000,
        sessions: 1_000,
        endpoints: 3,
        batch: 100,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let v: usize = it
            .next()
            .with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--services" => a.services = v,
            "--sessions" => a.sessions = v,
            "--endpoints" => a.endpoints = v,
            "--batch" => a.batch = v.max(1),
            _ => bail!(
                "usage: strait-bench push [--services N] [--sessions N] [--endpoints N] [--batch N]"
            ),
        }
    }
    Ok(a)
}

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").expect("a valid trust domain")
}

fn east() -> ClusterName {
    ClusterName::new("east").expect("a valid cluster name")
}

/// The controller child, talked to over its stdin and stdout.
struct Controller {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Controller {
    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("the controller child exited");
        }
        Ok(l.trim().to_owned())
    }

    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let l = self.line()?;
        l.strip_prefix(prefix)
            .map(|r| r.trim().to_owned())
            .with_context(|| format!("expected {prefix:?} from the controller, got {l:?}"))
    }

    /// Publishes a change; returns its version.
    fn change(&mut self, what: &str) -> anyhow::Result<u64> {
        writeln!(self.stdin, "{what}")?;
        self.stdin.flush()?;
        Ok(self.expect("published")?.parse()?)
    }

    /// (CPU seconds so far, RSS MiB, peak RSS MiB) from /proc.
    fn usage(&self) -> (f64, f64, f64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime and stime are the 12th and
        // 13th (clock ticks, 100 per second on Linux).
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (cpu, kib("VmRSS:"), kib("VmHWM:"))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every session reports.
struct Stats {
    acked: Vec<AtomicU64>,
    bytes: AtomicU64,
    messages: AtomicU64,
}

async fn session(
    i: usize,
    addr: SocketAddr,
    certs: CertStore,
    bundle: SharedBundle,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let chan = strait_federation::grpc::channel(
        addr,
        &certs,
        &bundle,
        ExpectedServer::Id(td().controller_id(&east())),
    )?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(SnapshotRequest {
        node: Some(Node {
            id: format!("bench-{i}"),
            cluster: "east".into(),
            deltas: true,
            ..Node::default()
        }),
        ..SnapshotRequest::default()
    })
    .await?;
    let mut inbound = ConfigDiscoveryClient::new(chan)
        .stream_snapshots(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(m) = inbound.message().await? {
        stats
            .bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        stats.messages.fetch_add(1, Ordering::Relaxed);
        let partial = m.delta.as_ref().is_some_and(|d| d.partial);
        if !partial {
            tx.send(SnapshotRequest {
                version: m.version,
                ..SnapshotRequest::default()
            })
            .await?;
            stats.acked[i].store(m.version, Ordering::Release);
        }
    }
    Ok(())
}

async fn all_acked(
    stats: &Stats,
    range: std::ops::Range<usize>,
    version: u64,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let behind = stats.acked[range.clone()]
            .iter()
            .filter(|a| a.load(Ordering::Acquire) < version)
            .count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{behind} sessions did not ACK version {version} within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ca = CaDir::init(&dir.path().join("ca"), &td(), Duration::from_secs(86_400))?;
    ca.new_intermediate(&east(), Duration::from_secs(86_400))?;
    let controller_files = ca.issue(
        &east(),
        &td().controller_id(&east()),
        Duration::from_secs(86_400),
        &dir.path().join("controller"),
    )?;
    let client_files = ca.issue(
        &east(),
        &td().workload_id("default", "bench")?,
        Duration::from_secs(86_400),
        &dir.path().join("client"),
    )?;
    let certs = CertStore::from_pem(
        &std::fs::read_to_string(&client_files.chain)?,
        &std::fs::read_to_string(&client_files.key)?,
    )?;
    let bundle = SharedBundle::new(ca.bundle()?);
    let mut child = Command::new(std::env::current_exe()?)
        .arg("push-controller")
        .arg(ca.path())
        .arg(&controller_files.chain)
        .arg(&controller_files.key)
        .arg(args.services.to_string())
        .arg(args.endpoints.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ctl = Controller {
        stdin: child.stdin.take().context("child stdin")?,
        stdout: BufReader::new(child.stdout.take().context("child stdout")?),
        child,
    };
    let addr: SocketAddr = ctl.expect("ready")?.parse()?;
    // What an old client would get instead, built here (not in the
    // controller child, whose memory is measured).
    let json_bytes = {
        let w = world::Bench::new(args.services, args.endpoints);
        w.json_len(&w.publish())
    };
    let first: u64 = ctl.expect("version")?.parse()?;
    let load_before = loadavg();
    let stats = Arc::new(Stats {
        acked: (0..args.sessions).map(|_| AtomicU64::new(0)).collect(),
        bytes: AtomicU64::new(0),
        messages: AtomicU64::new(0),
    });
    let (cpu0, _, _) = ctl.usage();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lo in (0..args.sessions).step_by(args.batch) {
        let hi = (lo + args.batch).min(args.sessions);
        for i in lo..hi {
            let (certs, bundle, stats) = (certs.clone(), bundle.clone(), stats.clone());
            tasks.spawn(async move {
                if let Err(e) = session(i, addr, certs, bundle, stats).await {
                    eprintln!("session {i}: {e:#}");
                }
            });
        }
        all_acked(&stats, lo..hi, first, Duration::from_secs(120)).await?;
    }
    let initial_s = started.elapsed().as_secs_f64();
    let initial_bytes = stats.bytes.load(Ordering::Relaxed);
    let (cpu1, rss1, _) = ctl.usage();
    let mut changes = Vec::new();
    for what in ["endpoint", "service", "failover"] {
        let (cpu_a, _, _) = ctl.usage();
        let bytes_a = stats.bytes.load(Ordering::Relaxed);
        let msgs_a = stats.messages.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let version = ctl.change(what)?;
        all_acked(&stats, 0..args.sessions, version, Duration::from_secs(60)).await?;
        let took = t0.elapsed();
        // Let the last ACKs land before reading the CPU.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (cpu_b, rss, _) = ctl.usage();
        let bytes = stats.bytes.load(Ordering::Relaxed) - bytes_a;
        changes.push(json!({
            "change": what,
            "all_acked_ms": (took.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            "bytes_total": bytes,
            "bytes_per_session": bytes as f64 / args.sessions as f64,
            "messages": stats.messages.load(Ordering::Relaxed) - msgs_a,
            "controller_cpu_s": ((cpu_b - cpu_a) * 100.0).round() / 100.0,
            "controller_rss_mib": rss.round(),
        }));
    }
    let (_, rss, peak) = ctl.usage();
    tasks.abort_all();
    Ok(json!({
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "sessions": args.sessions,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "initial": {
            "all_acked_s": (initial_s * 100.0).round() / 100.0,
            "bytes_per_session": initial_bytes as f64 / args.sessions as f64,
            "controller_cpu_s": ((cpu1 - cpu0) * 100.0).round() / 100.0,
            "controller_rss_mib": rss1.round(),
        },
        "full_json_snapshot_bytes": json_bytes,
        "changes": changes,
        "controller_rss_mib": rss.round(),
        "controller_peak_rss_mib": peak.round(),
    }))
}

/// The child: `push-controller CA_DIR CHAIN KEY SERVICES ENDPOINTS`.
pub fn controller_main(rest: &[String]) -> anyhow::Result<()> {
    let [ca_dir, chain, key, services, endpoints] = rest else {
        bail!("usage: strait-bench push-controller CA_DIR CHAIN KEY SERVICES ENDPOINTS");
    };
    let ca = CaDir::open(std::path::Path::new(ca_dir))?;
    let bundle = SharedBundle::new(ca.bundle()?);
    let certs = CertStore::from_pem(
        &std::fs::read_to_string(chain)?,
        &std::fs::read_to_string(key)?,
    )?;
    let mut w = world::Bench::new(services.parse()?, endpoints.parse()?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let (tx, rx) = tokio::sync::watch::channel(w.publish());
            let live = strait_federation::catalog::live::LiveCatalog::start(
                Arc::new(strait_federation::catalog::FixedCatalog::new(
                    Default::default(),
                )),
                Duration::from_secs(15),
            )
            .0;
            let push = strait_federation::push::PushService::new(
                east(),
                "us-east/a".parse()?,
                rx,
                tokio::sync::watch::channel(true).1,
                strait_federation::health::HealthTable::new(),
                Arc::new(strait_federation::metrics::Metrics::default()),
                live,
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = strait_federation::grpc::serve(
                l,
                &certs,
                &bundle,
                tonic::service::Routes::new(push.server()),
            )?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {}", server.addr)?;
            writeln!(out, "version {}", tx.borrow().world.version)?;
            out.flush()?;
            drop(out);
            let mut lines =
                tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
            while let Some(l) = lines.next_line().await? {
                match l.trim() {
                    "endpoint" => w.move_endpoint(),
                    "service" => w.add_service(),
                    "failover" => w.fail_over(),
                    "quit" => break,
                    other => bail!("unknown change {other:?}"),
                }
                let next = w.publish_from(&tx.borrow());
                let v = next.world.version;
                tx.send_replace(next);
                let mut out = std::io::stdout().lock();
                writeln!(out, "published {v}")?;
                out.flush()?;
            }
            drop(server);
            Ok::<(), anyhow::Error>(())
        })
}
