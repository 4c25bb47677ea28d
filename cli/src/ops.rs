//! Operator verbs on a running controller: `export`, `unexport`,
//! `policy set|show`, `peering token|establish|revoke|set`, `link`, `unlink`,
//! `service register`.
//!
//! They call the controller's admin API (`/v1/...` on its admin port,
//! see `strait_federation::controller::admin_api`), authenticated with the
//! admin token the controller writes to `<state_dir>/admin-token`: no
//! Kubernetes or API-server credentials are involved. A controller is found
//! by `--controller ADDR --state-dir DIR` (or `STRAIT_CONTROLLER` /
//! `STRAIT_STATE_DIR`), or by `--cluster NAME` in a mesh directory made by
//! `strait cluster up` or `strait demo` (`--dir` or `STRAIT_DIR`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strait_api::ClusterName;
use strait_federation::catalog::Registration;
use strait_federation::controller::Unlinked;
use strait_federation::controller::admin_api::{
    ADMIN_TOKEN_FILE, ApiError, ExportRequest, ExportState, ServiceRef, UnlinkRequest,
};
use strait_federation::peering::FailMode;

use crate::output::{Format, emit};

mod client;
mod link;
mod peering;
mod policy;

pub use client::{Controller, get_json};
pub use link::{LinkArgs, run as link_clusters};
pub use peering::{PeeringCommand, link_line, peering};
pub use policy::{PolicyCommand, policy};

/// How to reach one controller.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// The controller's admin address (host:port).
    #[arg(long, env = "STRAIT_CONTROLLER", conflicts_with = "cluster")]
    pub controller: Option<SocketAddr>,
    /// The controller's state directory (its `admin-token` authorizes changes).
    #[arg(long, env = "STRAIT_STATE_DIR", conflicts_with = "cluster")]
    pub state_dir: Option<PathBuf>,
    /// A cluster of the mesh directory (instead of --controller).
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub dir: crate::meshdir::DirFlag,
}

impl ConnArgs {
    pub fn resolve(&self) -> anyhow::Result<Controller> {
        if let Some(name) = &self.cluster {
            return Controller::from_demo(&self.dir.resolve(), name);
        }
        let Some(admin) = self.controller else {
            bail!(
                "which controller? pass --controller ADDR --state-dir DIR (or set STRAIT_CONTROLLER and STRAIT_STATE_DIR), or --cluster NAME for a running demo"
            );
        };
        Ok(Controller {
            admin,
            token_file: self.state_dir.as_ref().map(|d| d.join(ADMIN_TOKEN_FILE)),
        })
    }
}

#[derive(Debug, Args)]
pub struct ServiceArg {
    /// The service name.
    pub service: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

/// Export a service to linked clusters (all of them, or those in --to).
///
///   strait export reviews -n default --controller 127.0.0.1:8611 --state-dir ./state/east
///   strait export reviews -n default --to west,central --cluster east    # in a demo
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    #[command(flatten)]
    svc: ServiceArg,
    /// Only these clusters (comma-separated); default: every linked cluster.
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Stop exporting a service (peers drop it at once).
///
///   strait unexport reviews -n default --cluster east
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct UnexportArgs {
    #[command(flatten)]
    svc: ServiceArg,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Remove the link to a peer, on both sides: its sync is refused and its
/// services dropped here, and its controller is told to remove its side
/// (so its gateways stop admitting this cluster's workloads).
///
///   strait unlink --peer west --cluster east
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct UnlinkArgs {
    /// The linked cluster to remove.
    #[arg(long)]
    peer: String,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Add or replace a service registration from a YAML file.
    ///
    ///   strait service register -f reviews.yaml --cluster east
    ///
    /// reviews.yaml:
    ///   name: reviews
    ///   namespace: default
    ///   ports: [{ port: 9080, protocol: http1 }]
    ///   endpoints: [{ address: 10.0.0.5:15006 }]
    ///   export: none            # or all, or {to: [west]}
    #[command(verbatim_doc_comment)]
    Register {
        /// The registration (YAML).
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a service's registration file (its endpoints leave every
    /// cluster's view; sidecars that registered themselves keep theirs
    /// while they run: stop them with `strait sidecar rm`).
    ///
    ///   strait service deregister reviews -n default --cluster east
    #[command(verbatim_doc_comment)]
    Deregister {
        #[command(flatten)]
        svc: ServiceArg,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Checks an export list: `none`, `all` or `a,b,c` (cluster names).
pub fn parse_export_list(s: &str) -> anyhow::Result<()> {
    match s.trim() {
        "" | "none" | "all" => Ok(()),
        list => clusters("--export", list).map(drop),
    }
}

pub fn parse_fail_mode(s: &str) -> Result<FailMode, String> {
    match s {
        "fail-static" => Ok(FailMode::FailStatic),
        "fail-closed" => Ok(FailMode::FailClosed),
        other => Err(format!(
            "{other:?} is not a fail mode; use fail-static or fail-closed"
        )),
    }
}

/// Parses `a,b,c` into cluster names, naming the flag and the bad entry.
pub fn clusters(flag: &str, list: &str) -> anyhow::Result<Vec<ClusterName>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| ClusterName::new(s).with_context(|| format!("{flag}: bad cluster name {s:?}")))
        .collect()
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn export_line(s: &ExportState) -> String {
    let to = serde_json::to_value(&s.export)
        .ok()
        .map(|v| match v {
            serde_json::Value::String(w) => w,
            other => other["to"]
                .as_array()
                .map(|a| {
                    let names: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
                    names.join(",")
                })
                .unwrap_or_default(),
        })
        .unwrap_or_default();
    format!("{}: export {to}\n", s.service)
}

pub fn export(args: ExportArgs, format: Format) -> anyhow::Result<()> {
    let to = match &args.to {
        Some(list) => clusters("--to", list)?,
        None => Vec::new(),
    };
    let ctl = args.conn.resolve()?;
    let req = ExportRequest {
        namespace: args.svc.namespace,
        name: args.svc.service,
        to,
    };
    let state: ExportState = block_on(ctl.post("/v1/export", &req))?;
    emit(format, &state, export_line)
}

pub fn unexport(args: UnexportArgs, format: Format) -> anyhow::Result<()> {
    let ctl = args.conn.resolve()?;
    let req = ServiceRef {
        namespace: args.svc.namespace,
        name: args.svc.service,
    };
    let state: ExportState = block_on(ctl.post("/v1/unexport", &req))?;
    emit(format, &state, export_line)
}

pub fn unlink(args: UnlinkArgs, format: Format) -> anyhow::Result<()> {
    let peer = ClusterName::new(&args.peer)
        .with_context(|| format!("--peer: bad cluster name {:?}", args.peer))?;
    let ctl = args.conn.resolve()?;
    let u: Unlinked = block_on(ctl.post("/v1/unlink", &UnlinkRequest { peer }))?;
    let told = u.peer_error.is_none();
    emit(format, &u, |u| match &u.peer_error {
        None => format!("unlinked {} (it removed its side too)\n", u.link.peer),
        Some(e) => format!(
            "unlinked {p} on this side; {p} could not be told ({e}): run `strait unlink` for this cluster there too, until then its gateways still admit this cluster\n",
            p = u.link.peer
        ),
    })?;
    if !told {
        // Half done: this side is unlinked, the peer still admits us.
        std::process::exit(1);
    }
    Ok(())
}

pub fn service(cmd: ServiceCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Register { file, conn } => {
            let reg = read_registration(&file)?;
            let ctl = conn.resolve()?;
            let out: serde_json::Value = block_on(ctl.post("/v1/register", &reg))?;
            emit(format, &out, |v| {
                format!(
                    "registered {} ({} endpoint(s))\n",
                    v["service"].as_str().unwrap_or("?"),
                    reg.endpoints.len()
                )
            })
        }
        ServiceCommand::Deregister { svc, conn } => {
            let ctl = conn.resolve()?;
            let req = ServiceRef {
                namespace: svc.namespace,
                name: svc.service,
            };
            let v: serde_json::Value = block_on(ctl.post("/v1/deregister", &req))?;
            emit(format, &v, |v| {
                let svc = v["service"].as_str().unwrap_or_default();
                match v["evicted"].as_u64() {
                    Some(n) => format!(
                        "evicted {n} self-registered endpoint(s) of {svc} (a sidecar that still runs registers again when it reconnects: `strait sidecar rm` stops it)\n"
                    ),
                    None => format!("deregistered {svc}\n"),
                }
            })
        }
    }
}

fn read_registration(file: &Path) -> anyhow::Result<Registration> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    strait_api::yaml::from_str(&text)
        .with_context(|| format!("{}: not a registration", file.display()))
}

/// The error text of a failed API call.
fn api_error(body: &[u8]) -> String {
    serde_json::from_slice::<ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).with_context(|| format!("unexpected answer to {what}"))
}

fn encode<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}
