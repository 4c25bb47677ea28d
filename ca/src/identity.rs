//! The identity section of component configs: certificate files, or the
//! cluster CA's signing service.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use strait_api::SpiffeId;

/// Where a component's certificate comes from (sidecars and gateways).
/// In YAML: a map with exactly one of `files:` or `ca:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "IdentityYaml")]
pub enum IdentitySource {
    /// PEM files (chain leaf first, PKCS#8 key, bundle of roots).
    Files {
        chain: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    },
    /// The cluster CA's signing service; renewed at 2/3 of life
    /// ([`crate::manager::bootstrap`]).
    Ca {
        address: SocketAddr,
        spiffe_id: SpiffeId,
        token_file: PathBuf,
        bundle: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesYaml {
    chain: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaYaml {
    address: SocketAddr,
    spiffe_id: SpiffeId,
    token_file: PathBuf,
    bundle: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityYaml {
    files: Option<FilesYaml>,
    ca: Option<CaYaml>,
}

impl TryFrom<IdentityYaml> for IdentitySource {
    type Error = String;
    fn try_from(y: IdentityYaml) -> Result<Self, String> {
        match (y.files, y.ca) {
            (Some(f), None) => Ok(Self::Files {
                chain: f.chain,
                key: f.key,
                bundle: f.bundle,
            }),
            (None, Some(c)) => Ok(Self::Ca {
                address: c.address,
                spiffe_id: c.spiffe_id,
                token_file: c.token_file,
                bundle: c.bundle,
            }),
            _ => Err("identity needs exactly one of `files:` or `ca:`".into()),
        }
    }
}
