//! The cluster's CA material as Secrets: the intermediate, bundle and
//! `ca.json` (for the CA signing service, `install::ca`) and the identities
//! of the controller, gateway and DNS server, issued offline from the CA
//! dir (`strait ca issue` does the same): those roles do not bootstrap by
//! ServiceAccount token yet.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::CaDir;

use super::common::meta;
use super::{InstallError, Manifest};

/// Secret names the Deployments mount.
pub const CA_SECRET: &str = "strait-ca";
pub const CONTROLLER_IDENTITY: &str = "strait-controller-identity";
pub const GATEWAY_IDENTITY: &str = "strait-gateway-identity";
pub const DNS_IDENTITY: &str = "strait-dns-identity";

/// One issued identity: PEM chain (leaf + intermediate), key, bundle.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    pub secret: &'static str,
    pub id: SpiffeId,
    pub chain: String,
    pub key: String,
}

/// What `--ca-dir` contributes.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    pub trust_domain: TrustDomain,
    pub intermediate_cert: String,
    pub intermediate_key: String,
    pub bundle: String,
    /// The CA directory's `ca.json` (its trust domain), as it is.
    pub ca_json: String,
    pub identities: Vec<IssuedPem>,
}

/// The SPIFFE IDs of the roles (the controller's is what its peers and
/// sidecars expect; the others follow the same pattern).
pub fn role_ids(td: &TrustDomain, cluster: &ClusterName) -> Vec<(&'static str, SpiffeId)> {
    use strait_api::identity::Component;
    vec![
        (CONTROLLER_IDENTITY, td.controller_id(cluster)),
        (GATEWAY_IDENTITY, td.gateway_id(cluster)),
        (DNS_IDENTITY, td.component_id(Component::Dns, cluster)),
    ]
}

impl CaMaterial {
    /// Reads the intermediate of `cluster` and issues the roles'
    /// certificates, each valid for `ttl`.
    pub fn from_ca_dir(
        ca: &CaDir,
        cluster: &ClusterName,
        ttl: Duration,
    ) -> Result<Self, InstallError> {
        let authority = ca.intermediate(cluster)?;
        let dir = ca.cluster_dir(cluster);
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| InstallError::Invalid {
                field: "ca-dir",
                reason: format!("cannot read {}: {e}", p.display()),
            })
        };
        let intermediate_cert = read(dir.join("intermediate.pem"))?;
        let intermediate_key = read(dir.join("intermediate.key"))?;
        let bundle = read(ca.bundle_path())?;
        let ca_json = read(ca.path().join("ca.json"))?;
        let td = ca.trust_domain().clone();
        let mut identities = Vec::new();
        for (secret, id) in role_ids(&td, cluster) {
            let (issued, key) = authority.issue_with_new_key(&id, ttl)?;
            let chain = strait_ca::pem::encode_certs([&issued.cert, authority.cert()]);
            identities.push(IssuedPem {
                secret,
                id,
                chain,
                key,
            });
        }
        Ok(Self {
            trust_domain: td,
            intermediate_cert,
            intermediate_key,
            bundle,
            ca_json,
            identities,
        })
    }

    pub fn secrets(&self, ns: &str) -> Result<Vec<Manifest>, InstallError> {
        let mut out = vec![Manifest::new(&secret(
            CA_SECRET,
            ns,
            "strait-ca",
            [
                ("intermediate.pem", &self.intermediate_cert),
                ("intermediate.key", &self.intermediate_key),
                ("bundle.pem", &self.bundle),
                ("ca.json", &self.ca_json),
            ],
        ))?];
        for i in &self.identities {
            let mut s = secret(
                i.secret,
                ns,
                i.secret.trim_end_matches("-identity"),
                [
                    ("chain.pem", &i.chain),
                    ("key.pem", &i.key),
                    ("bundle.pem", &self.bundle),
                ],
            );
            s.metadata.annotations = Some(BTreeMap::from([(
                "strait.io/spiffe-id".to_owned(),
                i.id.to_string(),
            )]));
            out.push(Manifest::new(&s)?);
        }
        Ok(out)
    }
}

fn secret<'a>(
    name: &str,
    ns: &str,
    component: &str,
    data: impl IntoIterator<Item = (&'a str, &'a String)>,
) -> Secret {
    Secret {
        metadata: meta(name, Some(ns), component),
        type_: Some("Opaque".into()),
        string_data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        ),
        ..Default::default()
    }
}
