//! The config files `strait cluster up` writes for a cluster's roles: the
//! controller, the east-west gateway, and the egress (a `strait proxy` with
//! the gateway's identity and `egress:`, serving clients without a sidecar
//! on the cluster's address), and the join tokens with which they (and
//! DNS) get their certificates from the cluster's CA service at start; they
//! renew them there, and follow a root rotation, by themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use strait_api::{ClusterName, SpiffeId};
use strait_ca::CaDir;
use strait_ca::token::TokenStore;

use super::layout::{ClusterInfo, Layout};

/// The egress sidecar's own ports on the cluster's address (its plaintext
/// egress listeners take the services' ports there).
pub const EGRESS_INBOUND_PORT: u16 = 15106;
pub const EGRESS_OUTBOUND_PORT: u16 = 15101;
pub const EGRESS_ADMIN_PORT: u16 = 15100;

/// The DNS server's admin port (`/metrics`, `/ready`, `/live`).
pub const DNS_ADMIN_PORT: u16 = 8654;

/// The cluster's CA signing service (`strait ca serve`): sidecars get and
/// renew their certificates there, with a join token the first time.
pub const CA_PORT: u16 = 8620;

/// The CA service's admin port (`/metrics`, `/ready`, `/live`).
pub const CA_ADMIN_PORT: u16 = 8621;

/// The CA signing service's address.
pub fn ca_addr(info: &ClusterInfo) -> SocketAddr {
    SocketAddr::new(info.ip, CA_PORT)
}

/// The addresses of the CA service, DNS admin and egress sidecar, which
/// `up` needs free beside [`ClusterInfo::listeners`].
pub fn listeners(info: &ClusterInfo) -> [(&'static str, SocketAddr, bool); 6] {
    let at = |port| SocketAddr::new(info.ip, port);
    [
        ("ca service", ca_addr(info), false),
        ("ca admin", at(CA_ADMIN_PORT), false),
        ("dns admin", at(DNS_ADMIN_PORT), false),
        ("egress inbound", at(EGRESS_INBOUND_PORT), false),
        ("egress outbound", at(EGRESS_OUTBOUND_PORT), false),
        ("egress admin", egress_admin(info), false),
    ]
}

/// How long a role's join token is good for: it is used once (the CA
/// refuses it afterwards), when the role starts right after `up` wrote it.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Where the written files are.
pub struct Written {
    pub controller: PathBuf,
    pub gateway: PathBuf,
    pub egress: PathBuf,
    /// DNS takes flags: its identity at the CA service.
    pub dns: CaIdentity,
}

/// An identity got from the cluster's CA service with a join token.
pub struct CaIdentity {
    pub ca: SocketAddr,
    pub spiffe_id: SpiffeId,
    pub token_file: PathBuf,
    pub bundle: PathBuf,
    /// Where the role keeps its certificate between runs: restarted by its
    /// own command, it needs no new token.
    pub keep: PathBuf,
}

/// Creates a join token for `namespace`/`service_account` at `cluster`'s
/// CA (good for one certificate, for `ttl`) and writes it owner-only to
/// `path` (its directory is made). `cluster up`'s roles and `sidecar add`
/// start this way.
pub fn write_join_token(
    ca: &CaDir,
    cluster: &str,
    namespace: &str,
    service_account: &str,
    ttl: Duration,
    path: &Path,
) -> anyhow::Result<()> {
    let cluster = ClusterName::new(cluster)?;
    let tokens = TokenStore::open(&ca.cluster_dir(&cluster).join("tokens.json"))?;
    let token = tokens.create(namespace, service_account, ttl)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    strait_ca::store::write_atomic(path, token.as_bytes(), 0o600)
        .with_context(|| format!("writing the join token {}", path.display()))
}

impl CaIdentity {
    /// A fresh join token for `sa` (namespace `strait-system`), written
    /// owner-only to `join-tokens/<file>` under the cluster's home.
    fn create(
        l: &Layout,
        info: &ClusterInfo,
        ca: &CaDir,
        sa: &str,
        file: &str,
    ) -> anyhow::Result<Self> {
        let dir = l.home().join("join-tokens");
        let token_file = dir.join(file);
        write_join_token(
            ca,
            &info.name,
            "strait-system",
            sa,
            JOIN_TOKEN_TTL,
            &token_file,
        )?;
        Ok(Self {
            ca: ca_addr(info),
            spiffe_id: ca.trust_domain().workload_id("strait-system", sa)?,
            token_file,
            bundle: ca.bundle_path(),
            keep: l.home().join("identity").join(file),
        })
    }

    fn yaml(&self) -> String {
        format!(
            "{{ ca: {{ address: \"{}\", spiffe_id: \"{}\", token_file: {:?}, bundle: {:?}, keep: {:?} }} }}",
            self.ca, self.spiffe_id, self.token_file, self.bundle, self.keep
        )
    }

    /// `strait dns`'s flags for this identity.
    pub fn dns_flags(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            self.ca.to_string(),
            "--spiffe-id".into(),
            self.spiffe_id.to_string(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--keep".into(),
            self.keep.display().to_string(),
        ]
    }
}

/// The egress sidecar's admin address (`/ready`).
pub fn egress_admin(info: &ClusterInfo) -> SocketAddr {
    SocketAddr::new(info.ip, EGRESS_ADMIN_PORT)
}

pub fn write(l: &Layout, info: &ClusterInfo) -> anyhow::Result<Written> {
    let ca =
        CaDir::open(&l.ca_dir()).with_context(|| format!("the CA in {}", l.ca_dir().display()))?;
    let name = &info.name;
    // A token is good for one certificate: one per process.
    let id = |sa: String, file: &str| CaIdentity::create(l, info, &ca, &sa, file);
    let controller_id = id(format!("controller-{name}"), "controller")?;
    let gateway_id = id(format!("gateway-{name}"), "gateway")?;
    // The egress presents the gateway's identity (callers' clusters admit it).
    let egress_id = id(format!("gateway-{name}"), "egress")?;
    let dns = id(format!("dns-{name}"), "dns")?;
    let mut ctl = format!("cluster: {}\n", info.name);
    if let Some(r) = &info.region {
        ctl.push_str(&format!("region: {r}\n"));
    }
    if let Some(z) = &info.zone {
        ctl.push_str(&format!("zone: {z}\n"));
    }
    ctl.push_str(&format!(
        "trust_domain: {}\nstate_dir: {:?}\nlisten: \"{}\"\nadmin_listen: \"{}\"\ngateways: [\"{}\"]\nidentity: {}\n",
        info.trust_domain,
        info.state_dir,
        info.controller,
        info.admin,
        info.gateway,
        controller_id.yaml()
    ));
    let gw = format!(
        "cluster: {}\ntrust_domain: {}\ncontroller: {{ address: \"{}\" }}\nidentity: {}\nlisteners: {{ public: \"{}\", admin: \"{}\" }}\n",
        info.name,
        info.trust_domain,
        info.controller,
        gateway_id.yaml(),
        info.gateway,
        info.gateway_admin
    );
    let ip = info.ip;
    let egress = format!(
        "# The cluster's egress: clients without a sidecar reach other clusters'\n\
         # services here (strait dns answers this address), as gateway-{name}.\n\
         trust_domain: {td}\nidentity: {id}\n\
         listeners: {{ inbound: \"{inbound}\", outbound: \"{outbound}\", admin: \"{admin}\", bind_vips: false }}\n\
         controller: {{ address: \"{ctl}\", cluster: {name} }}\n\
         egress: {{ address: \"{ip}\" }}\n",
        name = info.name,
        td = info.trust_domain,
        id = egress_id.yaml(),
        inbound = SocketAddr::new(ip, EGRESS_INBOUND_PORT),
        outbound = SocketAddr::new(ip, EGRESS_OUTBOUND_PORT),
        admin = egress_admin(info),
        ctl = info.controller,
    );
    let w = Written {
        controller: l.home().join("controller.yaml"),
        gateway: l.home().join("gateway.yaml"),
        egress: l.home().join("egress.yaml"),
        dns,
    };
    for (path, text) in [(&w.controller, ctl), (&w.gateway, gw), (&w.egress, egress)] {
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
    }
    Ok(w)
}
