//! The config files `strait cluster up` writes for a cluster's roles: the
//! controller, the east-west gateway, and the egress (a `strait proxy` with
//! the gateway's identity and `egress:`, serving clients without a sidecar
//! on the cluster's address).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

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

/// Where the written files are.
pub struct Written {
    pub controller: PathBuf,
    pub gateway: PathBuf,
    pub egress: PathBuf,
}

/// The egress sidecar's admin address (`/ready`).
pub fn egress_admin(info: &ClusterInfo) -> SocketAddr {
    SocketAddr::new(info.ip, EGRESS_ADMIN_PORT)
}

fn files_yaml(dir: &Path) -> String {
    format!(
        "{{ files: {{ chain: {:?}, key: {:?}, bundle: {:?} }} }}",
        dir.join("chain.pem"),
        dir.join("key.pem"),
        dir.join("bundle.pem")
    )
}

pub fn write(l: &Layout, info: &ClusterInfo) -> anyhow::Result<Written> {
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
        files_yaml(&l.certs("controller"))
    ));
    let gw = format!(
        "cluster: {}\ntrust_domain: {}\ncontroller: {{ address: \"{}\" }}\nidentity: {}\nlisteners: {{ public: \"{}\", admin: \"{}\" }}\n",
        info.name,
        info.trust_domain,
        info.controller,
        files_yaml(&l.certs("gateway-0")),
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
        id = files_yaml(&l.certs("gateway-0")),
        inbound = SocketAddr::new(ip, EGRESS_INBOUND_PORT),
        outbound = SocketAddr::new(ip, EGRESS_OUTBOUND_PORT),
        admin = egress_admin(info),
        ctl = info.controller,
    );
    let w = Written {
        controller: l.home().join("controller.yaml"),
        gateway: l.home().join("gateway.yaml"),
        egress: l.home().join("egress.yaml"),
    };
    for (path, text) in [(&w.controller, ctl), (&w.gateway, gw), (&w.egress, egress)] {
        std::fs::write(path, text).with_context(|| path.display().to_string())?;
    }
    Ok(w)
}
