//! Errors of the certificate authority.

use std::path::PathBuf;

use strait_api::{IdentityError, NameError};

/// What went wrong while making, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{0} already exists; refusing to overwrite CA material (remove it first)")]
    Exists(PathBuf),
    #[error("invalid identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("certificate is not usable: {0}")]
    Certificate(String),
    #[error("the key does not belong to the certificate")]
    KeyMismatch,
    #[error("invalid lifetime: {0}")]
    Lifetime(String),
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
