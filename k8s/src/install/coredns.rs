//! The CoreDNS stub domain: a server block forwarding `clusterset.local`
//! to Strait's DNS Service, as a ConfigMap in `kube-system` under the key
//! `strait.server` (CoreDNS set-ups that `import /etc/coredns/custom/*.server`
//! read it as it is, e.g. k3s's and AKS's `coredns-custom`; elsewhere paste
//! the block into the `coredns` ConfigMap's Corefile).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ConfigMap;

use super::common::meta;
use super::{InstallError, Manifest};

/// The Corefile server block.
pub fn server_block(dns_ip: IpAddr) -> String {
    format!("clusterset.local:53 {{\n    errors\n    cache 5\n    forward . {dns_ip}\n}}\n")
}

/// The ConfigMap carrying [`server_block`]; `name` is the ConfigMap the
/// cluster's CoreDNS imports (`coredns-custom` on k3s and AKS).
pub fn config_map(name: &str, dns_ip: Option<IpAddr>) -> Result<Manifest, InstallError> {
    let ip = dns_ip.ok_or(InstallError::Invalid {
        field: "dns-ip",
        reason: "--coredns needs --dns-ip: CoreDNS forwards to an address, so the strait-dns Service gets that fixed ClusterIP (pick a free one in the cluster's service range)".into(),
    })?;
    Manifest::new(&ConfigMap {
        metadata: meta(name, Some("kube-system"), "strait-dns"),
        data: Some(BTreeMap::from([(
            "strait.server".to_owned(),
            server_block(ip),
        )])),
        ..Default::default()
    })
}
