//! Where `strait cluster up` keeps a cluster on disk, and how the other
//! verbs find it again.
//!
//! ```text
//! DIR/ca/                                   root CA and one intermediate per cluster
//! DIR/state/<name>/                         the controller's state (admin-token)
//! DIR/clusters/<name>/cluster.json          addresses (kept across down/up)
//! DIR/clusters/<name>/pids.json             running processes (removed by down)
//! DIR/clusters/<name>/{controller,gateway,egress}.yaml, *.log
//! DIR/clusters/<name>/join-tokens/<role>   the roles' one-time join tokens for the CA service (0600)
//! DIR/clusters/<name>/identity/<role>/      what each role keeps of its certificate (key 0600) for a restart
//! ```
//!
//! The certificate and state paths are the ones `strait demo` uses, so
//! `check` and `diagnose` read both kinds of directories the same way.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const CONTROLLER_PORT: u16 = 8610;
pub const ADMIN_PORT: u16 = 8611;
pub const GATEWAY_PORT: u16 = 15443;
pub const GATEWAY_ADMIN_PORT: u16 = 15021;
pub const DNS_PORT: u16 = 8653;

/// One cluster's addresses and settings (`cluster.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub trust_domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub ip: IpAddr,
    /// The controller's gRPC (mTLS) address: proxies, DNS and peers.
    pub controller: SocketAddr,
    /// The controller's admin address (`/status`, operator verbs).
    pub admin: SocketAddr,
    pub gateway: SocketAddr,
    pub gateway_admin: SocketAddr,
    pub dns: SocketAddr,
    pub state_dir: PathBuf,
    /// Networks of clients behind a sidecar: DNS answers them the VIP
    /// (everyone else: endpoints, or this cluster's egress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshed_clients: Vec<String>,
}

impl ClusterInfo {
    /// Every address of a cluster on `ip` with the default ports.
    pub fn on_ip(name: &str, trust_domain: &str, ip: IpAddr, state_dir: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            trust_domain: trust_domain.to_owned(),
            region: None,
            zone: None,
            ip,
            controller: SocketAddr::new(ip, CONTROLLER_PORT),
            admin: SocketAddr::new(ip, ADMIN_PORT),
            gateway: SocketAddr::new(ip, GATEWAY_PORT),
            gateway_admin: SocketAddr::new(ip, GATEWAY_ADMIN_PORT),
            dns: SocketAddr::new(ip, DNS_PORT),
            state_dir,
            meshed_clients: Vec::new(),
        }
    }

    /// The addresses `up` needs free: (what, address, also UDP).
    pub fn listeners(&self) -> [(&'static str, SocketAddr, bool); 5] {
        [
            ("controller", self.controller, false),
            ("controller admin", self.admin, false),
            ("gateway", self.gateway, false),
            ("gateway admin", self.gateway_admin, false),
            ("dns", self.dns, true),
        ]
    }
}

/// One started process (`pids.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleProc {
    pub role: String,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    pub processes: Vec<RoleProc>,
}

/// The paths of one cluster in a mesh directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub name: String,
}

impl Layout {
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state").join(&self.name)
    }
    pub fn home(&self) -> PathBuf {
        self.dir.join("clusters").join(&self.name)
    }
    pub fn info_file(&self) -> PathBuf {
        self.home().join("cluster.json")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.home().join("pids.json")
    }

    pub fn read_info(&self) -> anyhow::Result<Option<ClusterInfo>> {
        read_json(&self.info_file())
    }
    pub fn read_pids(&self) -> anyhow::Result<Option<Pids>> {
        read_json(&self.pid_file())
    }
    pub fn write_info(&self, info: &ClusterInfo) -> anyhow::Result<()> {
        write_json(&self.info_file(), info)
    }
    pub fn write_pids(&self, pids: &Pids) -> anyhow::Result<()> {
        write_json(&self.pid_file(), pids)
    }
}

/// `DIR/certs/<cluster>/<tag>`, as `strait demo` and `cluster up` write them.
pub fn certs_dir(dir: &Path, cluster: &str, tag: &str) -> PathBuf {
    dir.join("certs").join(cluster).join(tag)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    let json = serde_json::to_vec_pretty(value)?;
    strait_ca::store::write_atomic(path, &json, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Every cluster `cluster up` ever started in `dir`, sorted by name.
pub fn clusters(dir: &Path) -> anyhow::Result<Vec<ClusterInfo>> {
    let root = dir.join("clusters");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(info) = Layout::new(dir, &name).read_info()? {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The first of 127.0.0.1, 127.0.0.2, ... that no other cluster in `taken` uses.
pub fn free_ip(taken: &[ClusterInfo]) -> IpAddr {
    (1..=254u8)
        .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
        .find(|ip| taken.iter().all(|c| c.ip != *ip))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_found_again_and_get_distinct_default_addresses() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(clusters(d).unwrap().is_empty());
        let ip = free_ip(&[]);
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let east = ClusterInfo::on_ip("east", "strait.local", ip, d.join("state/east"));
        Layout::new(d, "east").write_info(&east).unwrap();
        let found = clusters(d).unwrap();
        assert_eq!(found, vec![east.clone()]);
        let next = free_ip(&found);
        assert_eq!(next, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(east.admin.to_string(), "127.0.0.1:8611");
        assert!(Layout::new(d, "east").read_pids().unwrap().is_none());
        std::fs::write(Layout::new(d, "east").pid_file(), "{nope").unwrap();
        let err = Layout::new(d, "east").read_pids().unwrap_err();
        assert!(
            format!("{err:#}").contains("pids.json is damaged"),
            "{err:#}"
        );
    }
}
