//! What a running demo leaves in its directory for the operator verbs:
//! `demo.json`, the addresses of each cluster's controller admin port, DNS,
//! client sidecar and gateways. `strait demo` writes it; `strait status`,
//! `link`, `check`, `ca rotate` and the other verbs read it when given
//! `--dir` instead of addresses.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The file name inside the demo directory.
pub const DEMO_STATE_FILE: &str = "demo.json";

/// What the operator verbs need to find a running demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoState {
    pub pid: u32,
    pub clusters: Vec<DemoCluster>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoCluster {
    pub name: String,
    pub admin: Option<SocketAddr>,
    pub dns: SocketAddr,
    pub outbound_proxy: SocketAddr,
    pub gateways: Vec<SocketAddr>,
}
