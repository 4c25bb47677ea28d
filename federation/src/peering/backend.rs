//! Where a [`LinkStore`](super::LinkStore) keeps its links and pending
//! token secrets: the seam between the store's rules (one-time secrets,
//! write lock, published link map) and the medium. [`DirectoryBackend`]
//! writes files under the controller's state directory; the Kubernetes
//! backend (`crate::kube::links`) writes `StraitLink` objects and a
//! Secret.
//!
//! Backends are synchronous: the store calls them under its write lock,
//! and a change is published only after the backend accepted it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use strait_api::ClusterName;

use super::{Link, PeeringError, PendingSecrets};

/// What a backend holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub links: BTreeMap<ClusterName, Link>,
    pub secrets: PendingSecrets,
}

/// A medium for links and pending token secrets.
pub trait LinkBackend: Send + Sync + fmt::Debug {
    /// Where, for logs (`directory /var/lib/strait`, `kubernetes strait-system`).
    fn describe(&self) -> String;
    /// Everything stored, read once when the store opens.
    fn load(&self) -> Result<Stored, PeeringError>;
    /// Creates or replaces the link to `link.peer`.
    fn put_link(&self, link: &Link) -> Result<(), PeeringError>;
    /// Removes the link to `peer`; absent is not an error.
    fn delete_link(&self, peer: &ClusterName) -> Result<(), PeeringError>;
    /// Replaces the pending secrets.
    fn put_secrets(&self, secrets: &PendingSecrets) -> Result<(), PeeringError>;
}

/// Files under the state directory (see [`super`]).
#[derive(Debug, Clone)]
pub struct DirectoryBackend {
    dir: PathBuf,
    secrets_path: PathBuf,
}

impl DirectoryBackend {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("links"),
            secrets_path: state_dir.join("peering-secrets.json"),
        }
    }
}

fn read_err(path: &Path, reason: String) -> PeeringError {
    PeeringError::Read {
        path: path.to_owned(),
        reason,
    }
}

impl LinkBackend for DirectoryBackend {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn load(&self) -> Result<Stored, PeeringError> {
        let dir = &self.dir;
        fs::create_dir_all(dir).map_err(|e| read_err(dir, e.to_string()))?;
        let mut links = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|e| read_err(dir, e.to_string()))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let raw = fs::read(&path).map_err(|e| read_err(&path, e.to_string()))?;
            let link: Link =
                serde_json::from_slice(&raw).map_err(|e| read_err(&path, e.to_string()))?;
            links.insert(link.peer.clone(), link);
        }
        let path = &self.secrets_path;
        let secrets = match fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| read_err(path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PendingSecrets::default(),
            Err(e) => return Err(read_err(path, e.to_string())),
        };
        Ok(Stored { links, secrets })
    }

    fn put_link(&self, link: &Link) -> Result<(), PeeringError> {
        let path = self.dir.join(format!("{}.json", link.peer));
        let json = serde_json::to_vec_pretty(link).unwrap_or_default();
        strait_ca::store::write_atomic(&path, &json, 0o600).map_err(PeeringError::Write)
    }

    fn delete_link(&self, peer: &ClusterName) -> Result<(), PeeringError> {
        let path = self.dir.join(format!("{peer}.json"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_err(&path, e.to_string())),
        }
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn put_secrets(&self, secrets: &PendingSecrets) -> Result<(), PeeringError> {
        let json = serde_json::to_vec_pretty(secrets).unwrap_or_default();
        strait_ca::store::write_atomic(&self.secrets_path, &json, 0o600)
            .map_err(PeeringError::Write)
    }
}
