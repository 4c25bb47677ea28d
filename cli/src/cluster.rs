//! `strait cluster up|down`: one cluster's controller, gateway and DNS as
//! background processes on this host (the `controller`, `gateway` and
//! `dns` roles of this same binary), with certificates from a root CA
//! shared by every cluster of the directory, so they can be linked.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use strait_api::{ClusterName, TrustDomain};
use strait_ca::CaDir;

use crate::output::{Format, emit};

pub(crate) mod configs;
pub mod layout;
pub(crate) mod procs;
mod start;

use start::start;

use layout::{ClusterInfo, Layout, Pids, RoleProc};
use procs::Ended;

const DEFAULT_DIR: &str = "strait-mesh";
/// How long each component gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster's controller, gateway and DNS in the background.
    ///
    /// The first cluster of a directory creates its root CA; every cluster
    /// gets an intermediate from it, so clusters of one directory can be
    /// linked. Addresses: 127.0.0.1 for the first cluster, 127.0.0.2 for
    /// the second, ... (or --ip), with controller 8610 (mTLS gRPC), admin
    /// 8611, gateway 15443 (admin 15021) and DNS 8653. Running `up` again
    /// on a running cluster changes nothing; on a stopped one it starts it
    /// with the same addresses and state (new certificates).
    ///
    ///   strait cluster up east --region us-east --zone us-east-1a
    ///   strait cluster up west --region us-west --zone us-west-1a
    ///   strait link --from east --to west --dir strait-mesh
    ///   strait check --dir strait-mesh
    ///   strait cluster up central --dir /tmp/mesh --ip 127.0.0.9
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Stop a cluster started by `strait cluster up` (SIGTERM, then SIGKILL
    /// after 10 s). Its state and addresses stay for the next `up`.
    ///
    ///   strait cluster down east
    ///   strait cluster down central --dir /tmp/mesh
    #[command(verbatim_doc_comment)]
    Down(DownArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The cluster name (lowercase letters, digits, '-').
    name: String,
    /// The mesh directory: CA, certificates, state, configs, logs, pids.
    #[arg(long, env = "STRAIT_DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// The address every component of this cluster listens on
    /// [default: the first of 127.0.0.1, 127.0.0.2, ... no other cluster of --dir uses].
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Region of the cluster's endpoints (locality-aware routing; with --zone).
    #[arg(long, requires = "zone")]
    region: Option<String>,
    /// Zone within --region.
    #[arg(long, requires = "region")]
    zone: Option<String>,
    /// Trust domain of a new root CA (ignored once the directory has one).
    #[arg(long, default_value = "strait.local")]
    trust_domain: String,
    /// Networks (CIDRs) of clients that run behind a Strait sidecar: DNS
    /// answers them the service VIP. Others get endpoints, or this
    /// cluster's egress for services served elsewhere.
    #[arg(long, value_delimiter = ',')]
    meshed_clients: Vec<strait_dns::IpNet>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The cluster name.
    name: String,
    /// The mesh directory given to `strait cluster up`.
    #[arg(long, env = "STRAIT_DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct UpReport {
    cluster: ClusterInfo,
    already_running: bool,
    processes: Vec<RoleProc>,
    /// Commands to try next.
    next: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Stopped {
    role: String,
    pid: u32,
    ended: Ended,
}

#[derive(Debug, Serialize)]
struct DownReport {
    cluster: String,
    was_running: bool,
    processes: Vec<Stopped>,
}

fn progress(line: &str) {
    eprintln!("==> {line}");
}

pub fn run(cmd: ClusterCommand, format: Format) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        ClusterCommand::Up(args) => {
            let report = rt.block_on(up(args))?;
            emit(format, &report, render_up)
        }
        ClusterCommand::Down(args) => {
            let report = rt.block_on(down(&args))?;
            emit(format, &report, render_down)?;
            if report
                .processes
                .iter()
                .any(|p| p.ended == Ended::StillRunning)
            {
                bail!(
                    "some processes survived SIGKILL; {} is kept",
                    Layout::new(&args.dir, &args.name).pid_file().display()
                );
            }
            Ok(())
        }
    }
}

/// The recorded processes with whether each is still ours and running.
fn liveness(l: &Layout, pids: &Pids) -> Vec<(u32, bool)> {
    pids.processes
        .iter()
        .map(|p| (p.pid, procs::is_ours(p.pid, &p.role, &l.name)))
        .collect()
}

async fn up(args: UpArgs) -> anyhow::Result<UpReport> {
    let name = ClusterName::new(&args.name)
        .with_context(|| format!("bad cluster name {:?}", args.name))?;
    std::fs::create_dir_all(&args.dir).with_context(|| args.dir.display().to_string())?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let l = Layout::new(&dir, name.as_str());
    if let Some(pids) = l.read_pids()? {
        let live = liveness(&l, &pids);
        if live.iter().all(|(_, ours)| *ours) {
            if let Some(info) = l.read_info()? {
                progress(&format!("cluster {name} is already running"));
                return Ok(UpReport {
                    next: next_steps(&dir, &info)?,
                    cluster: info,
                    already_running: true,
                    processes: pids.processes,
                });
            }
        }
        let gone: Vec<&str> = pids
            .processes
            .iter()
            .zip(&live)
            .filter(|(_, (_, ours))| !ours)
            .map(|(p, _)| p.role.as_str())
            .collect();
        // Only some components stopped: start those, leave the others
        // (and their connections) alone.
        if let (Some(info), false) = (l.read_info()?, gone.len() == live.len()) {
            progress(&format!(
                "cluster {name}: starting the stopped {} (the others keep running)",
                gone.join(", ")
            ));
            let gone: Vec<String> = gone.iter().map(|g| (*g).to_owned()).collect();
            let running = Pids {
                processes: pids
                    .processes
                    .iter()
                    .zip(&live)
                    .filter(|(_, (_, ours))| *ours)
                    .map(|(p, _)| p.clone())
                    .collect(),
            };
            let processes = start(&l, &info, Some(&gone), running).await?;
            return Ok(UpReport {
                next: next_steps(&dir, &info)?,
                cluster: info,
                already_running: false,
                processes,
            });
        }
        progress(&format!(
            "cluster {name} was partly running ({} exited); stopping the rest and starting again",
            gone.join(", ")
        ));
        procs::stop_all(&live, procs::GRACE).await;
        std::fs::remove_file(l.pid_file())?;
    }
    let info = plan(&args, &dir, &l)?;
    for (what, addr, udp) in info
        .listeners()
        .into_iter()
        .chain(configs::listeners(&info))
    {
        ensure_free(what, addr, udp)?;
    }
    let td = certificates(&args, &l, &name)?;
    let info = ClusterInfo {
        trust_domain: td.to_string(),
        ..info
    };
    l.write_info(&info)?;
    let started = start(&l, &info, None, Pids::default()).await?;
    Ok(UpReport {
        next: next_steps(&dir, &info)?,
        cluster: info,
        already_running: false,
        processes: started,
    })
}

/// The cluster's addresses: as recorded, with --ip/--region/--zone applied.
fn plan(args: &UpArgs, dir: &Path, l: &Layout) -> anyhow::Result<ClusterInfo> {
    let others: Vec<ClusterInfo> = layout::clusters(dir)?
        .into_iter()
        .filter(|c| c.name != l.name)
        .collect();
    let old = l.read_info()?;
    let ip = args
        .ip
        .or(old.as_ref().map(|o| o.ip))
        .unwrap_or_else(|| layout::free_ip(&others));
    if let Some(o) = others.iter().find(|o| o.ip == ip) {
        bail!(
            "{ip} is the address of cluster {} in {}; pass another --ip",
            o.name,
            dir.display()
        );
    }
    let mut info = ClusterInfo::on_ip(&l.name, &args.trust_domain, ip, l.state_dir());
    info.region = args
        .region
        .clone()
        .or(old.as_ref().and_then(|o| o.region.clone()));
    info.meshed_clients = if args.meshed_clients.is_empty() {
        old.as_ref()
            .map(|o| o.meshed_clients.clone())
            .unwrap_or_default()
    } else {
        args.meshed_clients
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    info.zone = args.zone.clone().or(old.and_then(|o| o.zone));
    if let Some(r) = &info.region {
        strait_api::Locality::new(r, info.zone.as_deref().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("--region/--zone {r:?}/{:?}: {e}", info.zone))?;
    }
    Ok(info)
}

fn ensure_free(what: &str, addr: SocketAddr, udp: bool) -> anyhow::Result<()> {
    let taken = |e: std::io::Error| {
        anyhow::anyhow!(
            "{addr} ({what}) is not free: {e}; another cluster or program listens there (pass --ip to use another address)"
        )
    };
    std::net::TcpListener::bind(addr).map_err(taken)?;
    if udp {
        std::net::UdpSocket::bind(addr).map_err(taken)?;
    }
    Ok(())
}

/// Creates the CA and the cluster's intermediate when missing. The roles
/// get their certificates from the cluster's CA service when they start
/// (`configs::write` makes their join tokens).
fn certificates(args: &UpArgs, l: &Layout, name: &ClusterName) -> anyhow::Result<TrustDomain> {
    let ca_dir = l.ca_dir();
    let ca = if ca_dir.join("ca.json").exists() {
        CaDir::open(&ca_dir).with_context(|| format!("the CA in {}", ca_dir.display()))?
    } else {
        let td = TrustDomain::new(&args.trust_domain).context("--trust-domain")?;
        progress(&format!(
            "creating the root CA for trust domain {td} in {}",
            ca_dir.display()
        ));
        CaDir::init(&ca_dir, &td, Duration::from_secs(3650 * 86400))?
    };
    let td = ca.trust_domain().clone();
    if ca.intermediate(name).is_err() {
        progress(&format!("signing the intermediate CA of {name}"));
        ca.new_intermediate(name, Duration::from_secs(365 * 86400))?;
    }
    Ok(td)
}

fn next_steps(dir: &Path, info: &ClusterInfo) -> anyhow::Result<Vec<String>> {
    let d = dir.display();
    let n = &info.name;
    let mut out = Vec::new();
    let others: Vec<ClusterInfo> = layout::clusters(dir)?
        .into_iter()
        .filter(|c| &c.name != n && Layout::new(dir, &c.name).pid_file().exists())
        .collect();
    if others.is_empty() {
        out.push(format!(
            "strait cluster up <another> --dir {d}      # a second cluster, same root CA"
        ));
    }
    for o in &others {
        out.push(format!("strait link --from {n} --to {} --dir {d}", o.name));
    }
    out.push(format!(
        "strait sidecar add <app> -n <namespace> --cluster {n} --app <ip:port> --dir {d}"
    ));
    out.push(format!(
        "strait service register -f svc.yaml --cluster {n} --dir {d}   # endpoints without a sidecar"
    ));
    out.push(format!("strait check --dir {d} --cluster {n}"));
    out.push(format!("strait status --controller {}", info.admin));
    out.push(format!(
        "dig @{} -p {} clusterset.local SOA",
        info.dns.ip(),
        info.dns.port()
    ));
    out.push(format!("strait cluster down {n} --dir {d}"));
    Ok(out)
}

fn render_up(r: &UpReport) -> String {
    let c = &r.cluster;
    let pid = |role: &str| {
        r.processes
            .iter()
            .find(|p| p.role == role)
            .map_or_else(|| "-".to_owned(), |p| p.pid.to_string())
    };
    let locality = c
        .region
        .as_ref()
        .map(|reg| format!(", {reg}/{}", c.zone.as_deref().unwrap_or("*")))
        .unwrap_or_default();
    let mut out = format!(
        "cluster {} is {} (trust domain {}{locality})\n",
        c.name,
        if r.already_running {
            "already running"
        } else {
            "up"
        },
        c.trust_domain
    );
    out.push_str(&format!(
        "  ca          {:<28} admin http://{}/metrics  pid {}  (signs the roles' and sidecars' certificates)\n",
        format!("{} (TLS)", configs::ca_addr(c)),
        SocketAddr::new(c.ip, configs::CA_ADMIN_PORT),
        pid("ca")
    ));
    out.push_str(&format!(
        "  controller  {:<28} admin http://{}/status   pid {}\n",
        format!("{} (mTLS)", c.controller),
        c.admin,
        pid("controller")
    ));
    out.push_str(&format!(
        "  gateway     {:<28} admin http://{}/metrics  pid {}\n",
        format!("{} (mTLS)", c.gateway),
        c.gateway_admin,
        pid("gateway")
    ));
    out.push_str(&format!(
        "  dns         {:<28} admin http://{}/metrics  pid {}\n",
        format!("{} (udp, tcp)", c.dns),
        SocketAddr::new(c.ip, configs::DNS_ADMIN_PORT),
        pid("dns")
    ));
    out.push_str(&format!(
        "  egress      {:<28} admin http://{}/ready    pid {}  (clients without a sidecar)\n",
        format!("{} (plain)", c.ip),
        configs::egress_admin(c),
        pid("egress")
    ));
    out.push_str(&format!(
        "  state       {} (admin-token)\n",
        c.state_dir.display()
    ));
    if let Some(p) = r.processes.first() {
        if let Some(logs) = p.log.parent() {
            out.push_str(&format!("  logs        {}/*.log\n", logs.display()));
        }
    }
    out.push_str("\nnext:\n");
    for n in &r.next {
        out.push_str(&format!("  {n}\n"));
    }
    out
}

async fn down(args: &DownArgs) -> anyhow::Result<DownReport> {
    let l = Layout::new(&args.dir, &args.name);
    let Some(pids) = l.read_pids()? else {
        progress(&format!("cluster {} is not running", args.name));
        return Ok(DownReport {
            cluster: args.name.clone(),
            was_running: false,
            processes: Vec::new(),
        });
    };
    // The cluster's sidecars first (they deregister from the controller).
    let sidecars = crate::sidecar::stop_all_of(&args.dir, &args.name).await?;
    if sidecars > 0 {
        progress(&format!(
            "stopped {sidecars} sidecar(s) of cluster {}",
            args.name
        ));
    }
    // Stop DNS and the gateway before the controller they depend on.
    let mut list = pids.processes.clone();
    list.reverse();
    let live: Vec<(u32, bool)> = list
        .iter()
        .map(|p| (p.pid, procs::is_ours(p.pid, &p.role, &args.name)))
        .collect();
    progress(&format!(
        "stopping cluster {} ({} running process(es))",
        args.name,
        live.iter().filter(|(_, o)| *o).count()
    ));
    let ended = procs::stop_all(&live, procs::GRACE).await;
    let processes: Vec<Stopped> = list
        .iter()
        .zip(ended)
        .map(|(p, ended)| Stopped {
            role: p.role.clone(),
            pid: p.pid,
            ended,
        })
        .collect();
    if processes.iter().all(|p| p.ended != Ended::StillRunning) {
        std::fs::remove_file(l.pid_file())
            .with_context(|| format!("cannot remove {}", l.pid_file().display()))?;
    }
    Ok(DownReport {
        cluster: args.name.clone(),
        was_running: true,
        processes,
    })
}

fn render_down(r: &DownReport) -> String {
    if !r.was_running {
        return format!("cluster {} is not running\n", r.cluster);
    }
    let mut out = format!("cluster {} is down\n", r.cluster);
    for p in &r.processes {
        let how = match p.ended {
            Ended::Stopped => "stopped",
            Ended::Killed => "killed after 10 s",
            Ended::NotRunning => "was not running",
            Ended::StillRunning => "STILL RUNNING",
        };
        out.push_str(&format!("  {:<11} pid {:<8} {how}\n", p.role, p.pid));
    }
    out
}
