//! `strait sidecar add|ls|rm`: a workload joins a `strait cluster up`
//! cluster with one command. `add` creates a join token for the identity
//! `ns/<namespace>/sa/<name>` (the identity callers expect of the service)
//! at the cluster's CA service, which the sidecar uses once to get its
//! certificate (and renews it with that certificate from then on), writes
//! its config (listeners on free ports, the
//! cluster's controller, the app's ports, `service:` so the sidecar
//! registers itself), starts `strait proxy` in the background and waits
//! until the controller lists the endpoint. `rm` stops it with SIGTERM (it
//! deregisters at once) and removes its directory.
//!
//! ```text
//! DIR/clusters/<cluster>/sidecars/<namespace>.<name>/
//!     join-token  bundle.pem  identity/  sidecar.yaml  sidecar.json  sidecar.log
//! ```

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use strait_api::{ClusterName, TrustDomain};
use strait_ca::CaDir;

use crate::cluster::layout::{ClusterInfo, Layout};
use crate::cluster::procs;
use crate::output::{Format, emit};

/// How long a join token may be used (the sidecar uses it at once, and
/// renews with its certificate afterwards).
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// How long `add` waits for the controller to list the endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Subcommand)]
pub enum SidecarCommand {
    Add(AddArgs),
    Ls(LsArgs),
    Rm(RmArgs),
}

/// Which mesh directory (made by `strait cluster up`).
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// The mesh directory `strait cluster up` made.
    #[arg(long, env = "STRAIT_DIR", default_value = "strait-mesh")]
    pub dir: PathBuf,
}

/// Add a workload to a `cluster up` cluster: certificate, config, a
/// running sidecar that registers the app as an endpoint of its service.
///
///   strait sidecar add echo -n demo --cluster west --app 127.0.0.1:8080 --export all
///   strait sidecar add client -n demo --cluster east          # a client only: no app
///
/// Clients send requests through the printed explicit proxy, e.g.
///   curl -x http://127.0.0.1:40123 http://echo.demo.svc.clusterset.local:8080/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct AddArgs {
    /// The service (and service account) name.
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// The cluster (as named to `strait cluster up`).
    #[arg(long)]
    pub cluster: String,
    /// The app's address; without it the sidecar only makes calls.
    #[arg(long)]
    pub app: Option<SocketAddr>,
    /// A port of the service, PORT/PROTOCOL (http1, http2, grpc, tcp);
    /// repeatable [default: the app's port, http1].
    #[arg(long = "port", requires = "app")]
    pub ports: Vec<String>,
    /// Which linked clusters may call it: none, all, or west,central.
    #[arg(long, default_value = "none", requires = "app")]
    pub export: String,
    /// The IP the sidecar listens on [default: the cluster's].
    #[arg(long)]
    pub ip: Option<IpAddr>,
    #[command(flatten)]
    pub dir: DirArg,
}

/// List the sidecars `sidecar add` started.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this cluster's.
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub dir: DirArg,
}

/// Stop a sidecar (it deregisters its endpoint at once) and remove it.
///
///   strait sidecar rm echo -n demo --cluster west
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RmArgs {
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(long)]
    pub cluster: String,
    #[command(flatten)]
    pub dir: DirArg,
}

/// What `sidecar.json` records, and `ls` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub name: String,
    pub namespace: String,
    pub cluster: String,
    pub identity: String,
    pub inbound: SocketAddr,
    /// The explicit proxy clients send their requests through.
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub app: Option<SocketAddr>,
    pub export: String,
    pub pid: u32,
    pub config: PathBuf,
    pub log: PathBuf,
    #[serde(default)]
    pub running: bool,
}

fn home(dir: &Path, cluster: &str, namespace: &str, name: &str) -> PathBuf {
    Layout::new(dir, cluster)
        .home()
        .join("sidecars")
        .join(format!("{namespace}.{name}"))
}

fn cluster_info(dir: &Path, cluster: &str) -> anyhow::Result<ClusterInfo> {
    ClusterName::new(cluster).with_context(|| format!("--cluster: bad name {cluster:?}"))?;
    Layout::new(dir, cluster).read_info()?.with_context(|| {
        format!(
            "no cluster {cluster:?} in {}: start it with `strait cluster up {cluster} --dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

/// `8080/http1` (or `8080`: http1).
fn parse_port(s: &str) -> anyhow::Result<(u16, String)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "http1"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--port {s:?}: the port must be 1..65535"))?;
    if !matches!(proto, "http1" | "http2" | "grpc" | "tcp") {
        bail!("--port {s:?}: the protocol must be http1, http2, grpc or tcp");
    }
    Ok((port, proto.to_owned()))
}

/// Three ports free on `ip` now (bound, then released).
fn free_ports(ip: IpAddr) -> anyhow::Result<[u16; 3]> {
    let bind = || {
        TcpListener::bind((ip, 0))
            .with_context(|| format!("cannot bind a port on {ip} (is it a local address?)"))
    };
    let held = [bind()?, bind()?, bind()?];
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
    Ok([port(&held[0])?, port(&held[1])?, port(&held[2])?])
}

fn config_yaml(
    s: &Sidecar,
    td: &TrustDomain,
    info: &ClusterInfo,
    ports: &[(u16, String)],
) -> String {
    let h = s.config.parent().unwrap_or(Path::new("."));
    let h = h.display();
    let ca = crate::cluster::configs::ca_addr(info);
    let mut y = format!(
        "# Written by `strait sidecar add`; `strait proxy --help` lists every key.\n\
         trust_domain: {td}\n\
         # From the cluster's CA service: the join token once, then renewed with the certificate.\n\
         # `keep`: restarted by the same command, it starts from what it kept (no new token).\n\
         identity: {{ ca: {{ address: \"{ca}\", spiffe_id: \"{}\", token_file: {h}/join-token, bundle: {h}/bundle.pem, keep: {h}/identity }} }}\n\
         listeners: {{ inbound: \"{}\", outbound: \"{}\", admin: \"{}\", bind_vips: false }}\n\
         controller: {{ address: \"{}\", cluster: {}",
        s.identity, s.inbound, s.outbound, s.admin, info.controller, s.cluster
    );
    if let (Some(r), Some(z)) = (&info.region, &info.zone) {
        y.push_str(&format!(", locality: {r}/{z}"));
    }
    y.push_str(" }\n");
    if let Some(app) = s.app {
        y.push_str("app:\n");
        for (port, proto) in ports {
            y.push_str(&format!(
                "  - {{ port: {port}, protocol: {proto}, target: \"{}:{}\" }}\n",
                app.ip(),
                if ports.len() == 1 { app.port() } else { *port }
            ));
        }
        y.push_str(&format!(
            "service: {{ name: {}, namespace: {}, export: \"{}\" }}\n",
            s.name, s.namespace, s.export
        ));
    }
    y
}

/// Whether the controller's status lists `addr` as an endpoint of `name`.
async fn registered(admin: SocketAddr, namespace: &str, name: &str, addr: SocketAddr) -> bool {
    let Ok(status) = crate::ops::get_json::<serde_json::Value>(admin, "/status").await else {
        return false;
    };
    let addr = addr.to_string();
    status["services"].as_array().is_some_and(|svcs| {
        svcs.iter()
            .filter(|s| s["name"] == name && s["namespace"] == namespace)
            .flat_map(|s| s["clusters"].as_array().into_iter().flatten())
            .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
            .any(|e| e["address"] == addr.as_str())
    })
}

async fn add(a: AddArgs) -> anyhow::Result<Sidecar> {
    let dir = &a.dir.dir;
    let info = cluster_info(dir, &a.cluster)?;
    let td = TrustDomain::new(&info.trust_domain)?;
    let id = td
        .workload_id(&a.namespace, &a.name)
        .with_context(|| format!("{}/{}", a.namespace, a.name))?;
    let home = home(dir, &a.cluster, &a.namespace, &a.name);
    if let Some(old) = read(&home)? {
        if procs::is_ours(old.pid, "proxy", &a.cluster) {
            bail!(
                "sidecar {}/{} of cluster {} runs already (pid {}): `strait sidecar rm {} -n {} --cluster {}` first",
                a.namespace,
                a.name,
                a.cluster,
                old.pid,
                a.name,
                a.namespace,
                a.cluster
            );
        }
    }
    let ports: Vec<(u16, String)> = match (&a.app, a.ports.is_empty()) {
        (None, _) => Vec::new(),
        (Some(app), true) => vec![(app.port(), "http1".to_owned())],
        (Some(_), false) => a
            .ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<_, _>>()?,
    };
    crate::ops::parse_export_list(&a.export)?;
    // A join token for the cluster's CA service: the sidecar gets its
    // certificate there, and renews it, by itself.
    let ca =
        CaDir::open(&dir.join("ca")).with_context(|| format!("the CA of {}", dir.display()))?;
    let ca_addr = crate::cluster::configs::ca_addr(&info);
    if tokio::net::TcpStream::connect(ca_addr).await.is_err() {
        bail!(
            "the CA service of cluster {} ({ca_addr}) does not answer: `strait cluster up {} --dir {}` starts it",
            a.cluster,
            a.cluster,
            dir.display()
        );
    }
    crate::cluster::configs::write_join_token(
        &ca,
        &a.cluster,
        &a.namespace,
        &a.name,
        TOKEN_TTL,
        &home.join("join-token"),
    )?;
    std::fs::copy(ca.bundle_path(), home.join("bundle.pem")).context("copying the trust bundle")?;
    let ip = a.ip.unwrap_or(info.ip);
    let [pi, po, pa] = free_ports(ip)?;
    let mut s = Sidecar {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        cluster: a.cluster.clone(),
        identity: id.to_string(),
        inbound: SocketAddr::new(ip, pi),
        outbound: SocketAddr::new(ip, po),
        admin: SocketAddr::new(ip, pa),
        app: a.app,
        export: a.export.clone(),
        pid: 0,
        config: home.join("sidecar.yaml"),
        log: home.join("sidecar.log"),
        running: true,
    };
    std::fs::write(&s.config, config_yaml(&s, &td, &info, &ports))
        .with_context(|| s.config.display().to_string())?;
    let args = vec![
        "proxy".to_owned(),
        "--config".to_owned(),
        s.config.display().to_string(),
    ];
    let mut child = procs::spawn(&args, &s.log)?;
    s.pid = child.id();
    write(&home, &s)?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the sidecar exited ({status}) while starting; last lines of {}:\n{}",
                s.log.display(),
                procs::tail(&s.log, 10)
            );
        }
        let up = tokio::net::TcpStream::connect(s.outbound).await.is_ok();
        let listed = match s.app {
            None => true,
            Some(_) => registered(info.admin, &s.namespace, &s.name, s.inbound).await,
        };
        if up && listed {
            return Ok(s);
        }
        if started.elapsed() > READY_TIMEOUT {
            // Not left running half set up: a rerun starts clean.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the sidecar is not {} after {READY_TIMEOUT:?}; last lines of {}:\n{}",
                if up {
                    "listed by its controller"
                } else {
                    "listening"
                },
                s.log.display(),
                procs::tail(&s.log, 10)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read(home: &Path) -> anyhow::Result<Option<Sidecar>> {
    match std::fs::read(home.join("sidecar.json")) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("{} is damaged", home.join("sidecar.json").display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| home.display().to_string()),
    }
}

fn write(home: &Path, s: &Sidecar) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(s)?;
    strait_ca::store::write_atomic(&home.join("sidecar.json"), &json, 0o644)
        .with_context(|| home.display().to_string())
}

/// Every sidecar of `cluster` (or of every cluster) in `dir`.
pub fn list(dir: &Path, cluster: Option<&str>) -> anyhow::Result<Vec<Sidecar>> {
    let mut out = Vec::new();
    for c in crate::cluster::layout::clusters(dir)? {
        if cluster.is_some_and(|w| w != c.name) {
            continue;
        }
        let root = Layout::new(dir, &c.name).home().join("sidecars");
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(mut s) = read(&e.path())? {
                s.running = procs::is_ours(s.pid, "proxy", &s.cluster);
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.cluster, &a.namespace, &a.name).cmp(&(&b.cluster, &b.namespace, &b.name))
    });
    Ok(out)
}

/// Stops `s` (SIGTERM: it deregisters) and removes its directory.
async fn remove(dir: &Path, s: &Sidecar) -> anyhow::Result<procs::Ended> {
    let ours = procs::is_ours(s.pid, "proxy", &s.cluster);
    let ended = procs::stop_all(&[(s.pid, ours)], procs::GRACE).await;
    let home = home(dir, &s.cluster, &s.namespace, &s.name);
    std::fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    Ok(ended[0])
}

/// Stops every sidecar of `cluster` (for `cluster down`); their
/// directories stay, so `sidecar ls` shows them stopped.
pub async fn stop_all_of(dir: &Path, cluster: &str) -> anyhow::Result<usize> {
    let running: Vec<(u32, bool)> = list(dir, Some(cluster))?
        .into_iter()
        .filter(|s| s.running)
        .map(|s| (s.pid, true))
        .collect();
    procs::stop_all(&running, procs::GRACE).await;
    Ok(running.len())
}

fn line(s: &Sidecar) -> String {
    format!(
        "{:<8} {:<24} {:<8} inbound {:<21} proxy http://{:<21} app {}\n",
        s.cluster,
        format!("{}/{}", s.namespace, s.name),
        if s.running { "running" } else { "stopped" },
        s.inbound,
        s.outbound,
        s.app.map_or_else(|| "-".to_owned(), |a| a.to_string()),
    )
}

pub fn run(cmd: SidecarCommand, format: Format) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        SidecarCommand::Add(a) => {
            let s = rt.block_on(add(a))?;
            emit(format, &s, |s| {
                let app = match s.app {
                    Some(app) => format!(
                        "\n  serves {}.{} (app {app}, export {}); its controller lists endpoint {}",
                        s.name, s.namespace, s.export, s.inbound
                    ),
                    None => String::new(),
                };
                format!(
                    "sidecar {}/{} of cluster {} is up (pid {}, identity {}){app}\n  \
                     clients: curl -x http://{} http://<service>.<namespace>.svc.clusterset.local:<port>/\n  \
                     config {}, log {}\n",
                    s.namespace,
                    s.name,
                    s.cluster,
                    s.pid,
                    s.identity,
                    s.outbound,
                    s.config.display(),
                    s.log.display()
                )
            })
        }
        SidecarCommand::Ls(a) => {
            let all = list(&a.dir.dir, a.cluster.as_deref())?;
            emit(format, &all, |all| {
                if all.is_empty() {
                    return "no sidecars (add one with `strait sidecar add`)\n".to_owned();
                }
                all.iter().map(line).collect()
            })
        }
        SidecarCommand::Rm(a) => {
            let dir = &a.dir.dir;
            cluster_info(dir, &a.cluster)?;
            let home = home(dir, &a.cluster, &a.namespace, &a.name);
            let Some(mut s) = read(&home)? else {
                bail!(
                    "no sidecar {}/{} in cluster {} (see `strait sidecar ls`)",
                    a.namespace,
                    a.name,
                    a.cluster
                );
            };
            let ended = rt.block_on(remove(dir, &s))?;
            s.running = false;
            emit(format, &s, |s| {
                format!(
                    "sidecar {}/{} of cluster {} removed ({})\n",
                    s.namespace,
                    s.name,
                    s.cluster,
                    serde_json::to_value(ended)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            })
        }
    }
}
