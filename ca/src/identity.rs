//! The identity section of component configs: certificate files, or the
//! cluster CA's signing service.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use strait_api::{SpiffeId, TrustDomain};
use tokio::task::JoinHandle;

use crate::reload::{IdentityFiles, ReloadError};
use crate::{CertStore, SharedBundle, TrustBundle};

/// Why a component could not start with its identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file the identity names could not be read.
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// A file was read but is not usable.
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    /// The certificate files failed the checks every reload makes.
    #[error(transparent)]
    Files(#[from] ReloadError),
    #[error("the CA at {address} did not issue a certificate: {reason}")]
    Ca { address: SocketAddr, reason: String },
}

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
    /// ([`crate::manager::bootstrap`]). The token is used once: give `keep`
    /// so the component can be restarted by the same command.
    Ca {
        address: SocketAddr,
        spiffe_id: SpiffeId,
        token_file: PathBuf,
        bundle: PathBuf,
        /// Where the certificate, key and roots are kept, so a restart by
        /// the same command needs no new token ([`crate::manager::keep`]).
        keep: Option<PathBuf>,
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
    #[serde(default)]
    keep: Option<PathBuf>,
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
                keep: c.keep,
            }),
            _ => Err("identity needs exactly one of `files:` or `ca:`".into()),
        }
    }
}

fn read(path: &std::path::Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl IdentitySource {
    /// Loads the certificate and trust bundle a sidecar or gateway starts
    /// with, and the task that keeps them current: with files, a watcher
    /// that swaps in new files passing the same checks as this first load
    /// (key matches, chain verifies against the bundle, same identity);
    /// with the CA, renewal at 2/3 of the certificate's life.
    pub async fn start(
        &self,
        td: &TrustDomain,
    ) -> Result<(CertStore, SharedBundle, JoinHandle<()>), IdentityError> {
        match self {
            Self::Files { chain, key, bundle } => {
                let (certs, bundle, files) =
                    IdentityFiles::new(chain.clone(), key.clone(), bundle.clone(), td.clone())
                        .start()?;
                let task = tokio::spawn(crate::reload::watch(files, certs.clone(), bundle.clone()));
                Ok((certs, bundle, task))
            }
            Self::Ca {
                address,
                spiffe_id,
                token_file,
                bundle,
                keep,
            } => {
                let roots = TrustBundle::from_pem(td.clone(), &read(bundle)?).map_err(|e| {
                    IdentityError::Bad {
                        path: bundle.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let bundle = SharedBundle::new(roots);
                let token = read(token_file)?.trim().to_owned();
                let (certs, renew) = crate::manager::bootstrap(
                    *address,
                    spiffe_id.clone(),
                    token,
                    bundle.clone(),
                    keep.clone(),
                )
                .await
                .map_err(|e| IdentityError::Ca {
                    address: *address,
                    reason: e.to_string(),
                })?;
                Ok((certs, bundle, renew))
            }
        }
    }
}
