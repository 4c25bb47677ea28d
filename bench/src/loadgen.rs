//! An open-loop, fixed-rate HTTP/1.1 load generator whose command line and
//! JSON output follow `oha` (`-z 10s -c 50 -q 2000 --latency-correction
//! --no-tui --output-format json URL`), so `bench/reference-bench.sh` can
//! use it as its `OHA`.
//!
//! Request `i` is due at `t0 + i / rate`. Connection `k` sends requests
//! `k, k + c, k + 2c, ...` (one in flight per keep-alive connection).
//! Latency is counted from the due time when the connection was still busy
//! then (the system's fault: no coordinated omission), and from the actual
//! send time when the connection was idle and only the timer woke late.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Args {
    pub duration: Duration,
    pub connections: usize,
    pub rate: f64,
    pub url: http::Uri,
}

/// Parses oha's flags (the subset the reference script passes).
pub fn parse(argv: &[String]) -> anyhow::Result<Args> {
    let mut duration = Duration::from_secs(10);
    let mut connections = 50;
    let mut rate = 1000.0;
    let mut url = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "-z" => duration = parse_duration(val()?)?,
            "-c" => connections = val()?.parse().context("-c")?,
            "-q" => rate = val()?.parse().context("-q")?,
            "--output-format" => {
                let v = val()?;
                if v != "json" {
                    bail!("only --output-format json is supported");
                }
            }
            "--latency-correction" | "--no-tui" => {}
            other if other.starts_with("http://") => url = Some(other.parse()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if connections == 0 || rate <= 0.0 {
        bail!("-c and -q must be positive");
    }
    Ok(Args {
        duration,
        connections,
        rate,
        url: url.context("a http:// URL is required")?,
    })
}

/// A bare number is seconds; otherwise the grammar of every Strait config.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    strait_api::snapshot::duration_str::parse(s)
        .with_context(|| format!("bad duration {s:?}: use e.g. 500ms, 10s or 1m"))
}

struct ConnResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    slowest: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let authority = args
        .url
        .authority()
        .context("URL has no host")?
        .as_str()
        .to_owned();
    let path = args
        .url
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let t0 = Instant::now() + Duration::from_millis(100);
    let end = t0 + args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = Vec::new();
    for k in 0..args.connections {
        let (authority, path) = (authority.clone(), path.clone());
        let c = args.connections;
        tasks.push(tokio::spawn(async move {
            connection(k, c, interval, t0, end, &authority, &path).await
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut ok, mut errors, mut slowest) = (0, 0, Duration::ZERO);
    for t in tasks {
        let r = t.await??;
        hist.add(&r.hist)?;
        ok += r.ok;
        errors += r.errors;
        slowest = slowest.max(r.slowest);
    }
    let secs = args.duration.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e9;
    Ok(serde_json::json!({
        "summary": {
            "successRate": if ok + errors > 0 { ok as f64 / (ok + errors) as f64 } else { 0.0 },
            "total": secs,
            "requestsPerSec": ok as f64 / secs,
            "slowest": slowest.as_secs_f64(),
            "fastest": hist.min() as f64 / 1e9,
            "average": hist.mean() / 1e9,
        },
        "latencyPercentiles": {
            "p50": q(0.50), "p75": q(0.75), "p90": q(0.90), "p95": q(0.95),
            "p99": q(0.99), "p99.9": q(0.999), "p99.99": q(0.9999),
        },
        "statusCodeDistribution": { "200": ok },
        "errorDistribution": { "errors": errors },
    }))
}

async fn connection(
    k: usize,
    c: usize,
    interval: Duration,
    t0: Instant,
    end: Instant,
    authority: &str,
    path: &str,
) -> anyhow::Result<ConnResult> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut ok, mut errors, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let mut send = None;
    let mut free_at = t0;
    let mut i = k;
    loop {
        let due = t0 + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        }
        if send.is_none() {
            send = Some(open(authority).await?);
        }
        let Some(s) = send.as_mut() else { break };
        // Busy past the due time: count from the due time. Idle: from now.
        let start = if free_at > due { due } else { Instant::now() };
        let req = http::Request::get(path)
            .header("host", authority)
            .body(Empty::<Bytes>::new())?;
        let res = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let done = Instant::now();
        free_at = done;
        match res {
            Ok(st) if st.is_success() => {
                ok += 1;
                let lat = done - start;
                slowest = slowest.max(lat);
                hist.record(u64::try_from(lat.as_nanos()).unwrap_or(u64::MAX).max(1))?;
            }
            _ => {
                errors += 1;
                send = None;
            }
        }
        i += c;
    }
    Ok(ConnResult {
        hist,
        ok,
        errors,
        slowest,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(authority: &str) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connect {authority}"))?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}
