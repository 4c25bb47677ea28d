//! Federation scale: CLUSTERS controllers (default 10), each with SERVICES
//! exported services (1,000) of ENDPOINTS endpoints (10), linked full mesh
//! (45 links), one process per controller so memory is per controller.
//!
//! `cargo bench -p strait-federation --bench scale` (knobs from the
//! environment: `CLUSTERS=3 SERVICES=100 ENDPOINTS=5 cargo bench ...`).
//!
//! The bench re-executes itself once per controller (`STRAIT_SCALE_CHILD`
//! set): a child issues its controller certificate from the shared test
//! CA, starts a controller on loopback port 0 with an empty custom catalog
//! source, prints `READY <grpc> <admin>` and then obeys stdin (`publish`
//! publishes its catalog; end of input stops it). The parent links every
//! pair through the admin API (`POST /v1/peering/token` on one side,
//! `/v1/peering/establish` on the other), waits until every sync stream is
//! up, tells every child to publish, and measures the time until every
//! controller's merged view (`strait_catalog_services`,
//! `strait_catalog_endpoints` on its admin `/metrics`) holds every service
//! and endpoint of every cluster. Then it reads each child's `VmRSS` and
//! `VmHWM` (peak) from `/proc/<pid>/status`, prints a table and one JSON
//! line, and kills every child (also when it fails: [`Children`] kills on
//! drop).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use strait_api::snapshot::{Protocol, ServicePort};
use strait_api::{ClusterName, TrustDomain};
use strait_ca::{CaDir, CertStore, SharedBundle};
use strait_federation::catalog::{EndpointSpec, Export, FixedCatalog, LocalCatalog, Registration};
use strait_federation::controller::admin_api::token_path;
use strait_federation::controller::{Controller, ControllerConfig, Source};

// The allocator of the shipped `strait` binary (cli/src/main.rs), so each
// child's RSS is what a controller process holds.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CHILD_ENV: &str = "STRAIT_SCALE_CHILD";
const DIR_ENV: &str = "STRAIT_SCALE_DIR";
const CONVERGE_TARGET_SECS: f64 = 5.0;
const RSS_TARGET_MIB: f64 = 200.0;

/// The size of the run, from CLUSTERS, SERVICES and ENDPOINTS.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    clusters: usize,
    services: usize,
    endpoints: usize,
    timeout: Duration,
}

impl Knobs {
    fn from_env() -> Res<Self> {
        let num = |name: &str, default: usize, max: usize| -> Res<usize> {
            let v = match std::env::var(name) {
                Ok(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={s:?} is not a number"))?,
                Err(_) => default,
            };
            if v == 0 || v > max {
                return Err(format!("{name}={v}: must be between 1 and {max}").into());
            }
            Ok(v)
        };
        Ok(Self {
            // Addresses are 127.<100+cluster>.<svc/250>.<svc%250+1>:<20000+ep>.
            clusters: num("CLUSTERS", 10, 150)?,
            services: num("SERVICES", 1000, 250 * 256)?,
            endpoints: num("ENDPOINTS", 10, 1000)?,
            timeout: Duration::from_secs(num("CONVERGE_TIMEOUT_SECS", 300, 3600)? as u64),
        })
    }

    fn total_services(&self) -> usize {
        self.clusters * self.services
    }

    fn total_endpoints(&self) -> usize {
        self.total_services() * self.endpoints
    }
}

fn cluster_name(i: usize) -> String {
    format!("c{i:02}")
}

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").expect("a valid trust domain")
}

fn main() {
    let result = match std::env::var(CHILD_ENV) {
        Ok(i) => child(&i),
        Err(_) => parent(),
    };
    if let Err(e) = result {
        eprintln!("scale bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- child

/// Cluster `i`'s catalog: every service exported to every peer.
fn catalog(i: usize, k: &Knobs) -> Res<LocalCatalog> {
    let mut cat = LocalCatalog::default();
    let octet = |v: usize| u8::try_from(v).map_err(|_| format!("{v} does not fit an octet"));
    for s in 0..k.services {
        let ip = [127, octet(100 + i)?, octet(s / 250)?, octet(s % 250 + 1)?];
        let reg = Registration {
            name: format!("{}-svc-{s}", cluster_name(i)),
            namespace: "default".into(),
            ports: vec![ServicePort {
                port: 80,
                protocol: Protocol::Http1,
            }],
            endpoints: (0..k.endpoints)
                .map(|e| EndpointSpec {
                    address: SocketAddr::from((ip, 20000 + e as u16)),
                    locality: None,
                    identity: None,
                    weight: 1,
                })
                .collect(),
            export: Export::All,
            health_check: None,
        };
        cat.services.insert(reg.key(), reg);
    }
    Ok(cat)
}

fn child(index: &str) -> Res<()> {
    let i: usize = index.parse()?;
    let knobs = Knobs::from_env()?;
    let dir = PathBuf::from(std::env::var(DIR_ENV)?);
    let name = ClusterName::new(&cluster_name(i))?;
    let ca = CaDir::open(&dir.join("ca"))?;
    let state = dir.join("state").join(name.as_str());
    let id = td().controller_id(&name);
    let files = ca.issue(&name, &id, Duration::from_secs(86400), &state.join("certs"))?;
    let chain = strait_ca::pem::certs(&std::fs::read_to_string(&files.chain)?);
    let key = PrivateKeyDer::from_pem_file(&files.key)?;
    let certs = CertStore::from_parts(chain, key)?;
    let bundle = SharedBundle::new(ca.bundle()?);
    let source = Arc::new(FixedCatalog::new(LocalCatalog::default()));
    let mut config = ControllerConfig::new(name.clone(), state, certs, bundle);
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = Some("127.0.0.1:0".parse()?);
    config.locality = format!("region-{i}/zone-a").parse()?;
    config.gateways = vec![SocketAddr::from(([127, 0, 0, 1], 15443 + i as u16))];
    config.source = Source::Custom(source.clone());
    config.rescan_interval = None;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let handle = Controller::start(config).await?;
        let admin = handle.admin_addr().ok_or("the admin port is off")?;
        say(&format!("READY {} {admin}", handle.grpc_addr()))?;
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        // End of input (the parent is gone) stops the controller.
        while let Some(cmd) = lines.recv().await {
            if cmd.trim() == "publish" {
                source.set(catalog(i, &knobs)?);
                say("PUBLISHED")?;
            }
        }
        handle.shutdown().await;
        Res::Ok(())
    })
}

fn say(line: &str) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

// --------------------------------------------------------------- parent

/// One controller process.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    admin: SocketAddr,
    state: PathBuf,
}

/// Every child; kills them all when dropped (also on error or panic).
struct Children(Vec<Proc>);

impl Drop for Children {
    fn drop(&mut self) {
        for p in &mut self.0 {
            drop(p.stdin.take());
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Proc {
    fn spawn(i: usize, dir: &Path) -> Res<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, i.to_string())
            .env(DIR_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            name: cluster_name(i),
            child,
            stdin,
            stdout,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: dir.join("state").join(cluster_name(i)),
        })
    }

    /// The next line the child prints (it exits on a fatal error).
    fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(format!("controller {} exited", self.name).into());
        }
        Ok(line.trim().to_owned())
    }

    fn send(&mut self, cmd: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        Ok(())
    }

    fn token(&self) -> Res<String> {
        Ok(std::fs::read_to_string(token_path(&self.state))?
            .trim()
            .to_owned())
    }

    fn metrics(&self) -> Res<String> {
        let (code, body) = http(self.admin, "GET", "/metrics", None, "")?;
        if code != 200 {
            return Err(format!("{}: /metrics answered {code}", self.name).into());
        }
        Ok(body)
    }

    fn post(&self, path: &str, body: &str) -> Res<serde_json::Value> {
        let (code, text) = http(self.admin, "POST", path, Some(&self.token()?), body)?;
        if code != 200 {
            return Err(format!("{}: {path} answered {code}: {text}", self.name).into());
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// User plus system CPU seconds so far (`/proc/<pid>/stat`, at the
    /// usual 100 ticks per second).
    fn cpu_seconds(&self) -> Res<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces).
        let rest = stat.rsplit_once(')').ok_or("bad /proc/<pid>/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Res<f64> { Ok(fields.get(i).ok_or("short stat")?.parse()?) };
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        Ok((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// (`VmRSS`, `VmHWM`) in MiB.
    fn memory(&self) -> Res<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = |key: &str| -> Res<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .ok_or_else(|| format!("no {key} in /proc/<pid>/status"))?;
            let n: f64 = line
                .split_whitespace()
                .nth(1)
                .ok_or("empty line")?
                .parse()?;
            Ok(n / 1024.0)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }
}

/// One HTTP/1.1 call with `connection: close`: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Res<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{auth}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no http status")?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((code, body.unwrap_or_default()))
}

/// The value of an unlabelled gauge in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Sleeps between polls (the parent is synchronous: no async workers).
#[allow(clippy::disallowed_methods)]
fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned());
    format!("{model}, {cpus} cpus")
}

struct Row {
    name: String,
    converged: Option<f64>,
    /// CPU seconds used from publishing until converged.
    cpu: f64,
    services: u64,
    endpoints: u64,
    rss: f64,
    peak: f64,
}

fn parent() -> Res<()> {
    let k = Knobs::from_env()?;
    let links = k.clusters * (k.clusters - 1) / 2;
    println!(
        "federation scale: {} clusters x {} services x {} endpoints, {links} links (full mesh), one process per controller",
        k.clusters, k.services, k.endpoints
    );
    let tmp = tempfile::tempdir()?;
    let ca = CaDir::init(&tmp.path().join("ca"), &td(), Duration::from_secs(86400))?;
    for i in 0..k.clusters {
        ca.new_intermediate(
            &ClusterName::new(&cluster_name(i))?,
            Duration::from_secs(86400),
        )?;
    }
    let mut kids = Children(Vec::new());
    for i in 0..k.clusters {
        kids.0.push(Proc::spawn(i, tmp.path())?);
    }
    for p in &mut kids.0 {
        let line = p.line()?;
        let admin = line
            .strip_prefix("READY ")
            .and_then(|r| r.split_whitespace().nth(1))
            .ok_or_else(|| format!("{}: unexpected {line:?}", p.name))?;
        p.admin = admin.parse()?;
    }

    let started = Instant::now();
    for a in 0..k.clusters {
        for b in a + 1..k.clusters {
            let t = kids.0[b].post("/v1/peering/token", r#"{"ttl_secs": 900}"#)?;
            let token = t["token"].as_str().ok_or("no token in the answer")?;
            let body = serde_json::json!({ "token": token }).to_string();
            kids.0[a].post("/v1/peering/establish", &body)?;
        }
    }
    let linked = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + k.timeout;
    loop {
        let mut up = 0;
        for p in &kids.0 {
            let m = p.metrics()?;
            up += m
                .lines()
                .filter(|l| l.starts_with("strait_peer_up{") && l.ends_with(" 1"))
                .count();
        }
        if up == 2 * links {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {up} of {} sync streams came up", 2 * links).into());
        }
        pause(50);
    }
    let streams = started.elapsed().as_secs_f64();
    println!(
        "{links} links established in {linked:.2} s; all {} sync streams up after {streams:.2} s",
        2 * links
    );

    let cpu0: Vec<f64> = kids.0.iter().map(Proc::cpu_seconds).collect::<Res<_>>()?;
    let t0 = Instant::now();
    for p in &mut kids.0 {
        p.send("publish")?;
    }
    for p in &mut kids.0 {
        let line = p.line()?;
        if line != "PUBLISHED" {
            return Err(format!("{}: unexpected {line:?}", p.name).into());
        }
    }
    let published = t0.elapsed().as_secs_f64();
    let mut rows: Vec<Row> = kids
        .0
        .iter()
        .map(|p| Row {
            name: p.name.clone(),
            converged: None,
            cpu: 0.0,
            services: 0,
            endpoints: 0,
            rss: 0.0,
            peak: 0.0,
        })
        .collect();
    let (want_s, want_e) = (k.total_services() as u64, k.total_endpoints() as u64);
    while rows.iter().any(|r| r.converged.is_none()) && Instant::now() < t0 + k.timeout {
        for ((p, r), c0) in kids.0.iter().zip(&mut rows).zip(&cpu0) {
            if r.converged.is_some() {
                continue;
            }
            let m = p.metrics()?;
            r.services = gauge(&m, "strait_catalog_services").unwrap_or(0);
            r.endpoints = gauge(&m, "strait_catalog_endpoints").unwrap_or(0);
            if r.services == want_s && r.endpoints == want_e {
                r.converged = Some(t0.elapsed().as_secs_f64());
                r.cpu = p.cpu_seconds()? - c0;
            }
        }
        pause(25);
    }
    let converge = rows
        .iter()
        .map(|r| r.converged)
        .try_fold(0.0_f64, |acc, c| c.map(|c| acc.max(c)));
    // Let the last rebuilds and sync messages settle, then read memory.
    pause(1000);
    for (p, r) in kids.0.iter().zip(&mut rows) {
        (r.rss, r.peak) = p.memory()?;
    }
    drop(kids);

    println!("machine: {}", machine());
    println!("exports published in {published:.3} s (all children)");
    println!(
        "{:<8} {:>11} {:>6} {:>9} {:>10} {:>8} {:>13}",
        "cluster", "converged_s", "cpu_s", "services", "endpoints", "rss_mib", "peak_rss_mib"
    );
    for r in &rows {
        let c = r
            .converged
            .map_or_else(|| "timeout".to_owned(), |c| format!("{c:.2}"));
        println!(
            "{:<8} {c:>11} {:>6.2} {:>9} {:>10} {:>8.1} {:>13.1}",
            r.name, r.cpu, r.services, r.endpoints, r.rss, r.peak
        );
    }
    let n = rows.len() as f64;
    let cpu_mean = rows.iter().map(|r| r.cpu).sum::<f64>() / n;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "CPU per controller until converged: mean {cpu_mean:.2} s ({} controllers on {cpus} cpus)",
        rows.len()
    );
    let max_peak = rows.iter().map(|r| r.peak).fold(0.0, f64::max);
    let mean_peak = rows.iter().map(|r| r.peak).sum::<f64>() / n;
    let max_rss = rows.iter().map(|r| r.rss).fold(0.0, f64::max);
    let mean_rss = rows.iter().map(|r| r.rss).sum::<f64>() / n;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    match converge {
        Some(c) => println!(
            "converged in {c:.2} s after publishing (target < {CONVERGE_TARGET_SECS} s: {})",
            verdict(c < CONVERGE_TARGET_SECS)
        ),
        None => println!("did not converge within {:?}", k.timeout),
    }
    println!(
        "RSS per controller: peak max {max_peak:.1} MiB, mean {mean_peak:.1} MiB; after converging max {max_rss:.1} MiB, mean {mean_rss:.1} MiB (target < {RSS_TARGET_MIB} MiB: {})",
        verdict(max_peak < RSS_TARGET_MIB)
    );
    let json = serde_json::json!({
        "bench": "federation_scale",
        "clusters": k.clusters,
        "services_per_cluster": k.services,
        "endpoints_per_service": k.endpoints,
        "links": links,
        "link_seconds": linked,
        "streams_up_seconds": streams,
        "converge_seconds": converge,
        "cpu_seconds_mean": cpu_mean,
        "peak_rss_mib_max": max_peak,
        "peak_rss_mib_mean": mean_peak,
        "rss_mib_max": max_rss,
        "rss_mib_mean": mean_rss,
        "machine": machine(),
    });
    println!("{json}");
    if converge.is_none() {
        return Err("not every controller converged".into());
    }
    Ok(())
}
