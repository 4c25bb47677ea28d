//! The CA directory on disk.
//!
//! ```text
//! DIR/ca.json                          trust domain
//! DIR/root.pem   DIR/root.key (0600)   the root (absent when only a bundle was imported)
//! DIR/bundle.pem                       every root the mesh trusts (two during rotation)
//! DIR/clusters/<name>/intermediate.pem, intermediate.key (0600)
//! DIR/clusters/<name>/tokens.json (0600) bootstrap tokens of that cluster's CA
//! ```
//! Every file is written atomically (temporary file, fsync, rename), so a
//! crash never leaves half a key behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_api::{ClusterName, SpiffeId, TrustDomain};

use crate::authority::{Authority, Issued, Pem};
use crate::verify::TrustBundle;
use crate::{CaError, pem};

const META: &str = "ca.json";
const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root.key";
const BUNDLE: &str = "bundle.pem";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    trust_domain: TrustDomain,
}

/// A CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
    trust_domain: TrustDomain,
}

/// What `ca issue` wrote.
#[derive(Debug)]
pub struct IssuedFiles {
    pub id: SpiffeId,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: PathBuf,
    pub bundle: PathBuf,
    pub not_after: time::OffsetDateTime,
}

impl CaDir {
    /// Creates a new root in `dir` (which may exist but must not hold a CA).
    pub fn init(dir: &Path, trust_domain: &TrustDomain, ttl: Duration) -> Result<Self, CaError> {
        let me = Self::create(dir, trust_domain)?;
        let (_root, pem) = Authority::new_root(trust_domain, ttl)?;
        me.write_root(&pem)?;
        Ok(me)
    }

    /// Takes an existing root (certificate and PKCS#8 key, PEM).
    pub fn import(
        dir: &Path,
        trust_domain: &TrustDomain,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        // Validate before anything is written.
        Authority::from_pem(trust_domain, cert_pem, key_pem)?;
        let me = Self::create(dir, trust_domain)?;
        me.write_root(&Pem {
            cert: cert_pem.to_owned(),
            key: key_pem.to_owned(),
        })?;
        Ok(me)
    }

    fn create(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let meta = dir.join(META);
        if meta.exists() {
            return Err(CaError::Exists(meta));
        }
        fs::create_dir_all(dir).map_err(CaError::io(dir))?;
        let json = serde_json::to_vec_pretty(&Meta {
            trust_domain: trust_domain.clone(),
        })
        .map_err(|e| CaError::bad_file(&meta, e.to_string()))?;
        write_atomic(&meta, &json, 0o644)?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain: trust_domain.clone(),
        })
    }

    fn write_root(&self, pem: &Pem) -> Result<(), CaError> {
        write_atomic(&self.dir.join(ROOT_KEY), pem.key.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(ROOT_CERT), pem.cert.as_bytes(), 0o644)?;
        write_atomic(&self.dir.join(BUNDLE), pem.cert.as_bytes(), 0o644)
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let meta_path = dir.join(META);
        let raw = fs::read(&meta_path).map_err(CaError::io(&meta_path))?;
        let meta: Meta = serde_json::from_slice(&raw)
            .map_err(|e| CaError::bad_file(&meta_path, e.to_string()))?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain: meta.trust_domain,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn root(&self) -> Result<Authority, CaError> {
        self.load_authority(&self.dir.join(ROOT_CERT), &self.dir.join(ROOT_KEY))
    }

    /// The trust bundle (every root in `bundle.pem`).
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        let path = self.dir.join(BUNDLE);
        let text = read_text(&path)?;
        TrustBundle::from_pem(self.trust_domain.clone(), &text)
            .map_err(|e| CaError::bad_file(&path, e.to_string()))
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(BUNDLE)
    }

    pub fn cluster_dir(&self, cluster: &ClusterName) -> PathBuf {
        self.dir.join("clusters").join(cluster.as_str())
    }

    /// Signs and stores an intermediate for `cluster`.
    pub fn new_intermediate(
        &self,
        cluster: &ClusterName,
        ttl: Duration,
    ) -> Result<PathBuf, CaError> {
        let dir = self.cluster_dir(cluster);
        let cert_path = dir.join("intermediate.pem");
        if cert_path.exists() {
            return Err(CaError::Exists(cert_path));
        }
        let (_int, pem) = self.root()?.new_intermediate(cluster, ttl)?;
        fs::create_dir_all(&dir).map_err(CaError::io(&dir))?;
        write_atomic(&dir.join("intermediate.key"), pem.key.as_bytes(), 0o600)?;
        write_atomic(&cert_path, pem.cert.as_bytes(), 0o644)?;
        Ok(cert_path)
    }

    /// The intermediate of `cluster`.
    pub fn intermediate(&self, cluster: &ClusterName) -> Result<Authority, CaError> {
        let dir = self.cluster_dir(cluster);
        let cert = dir.join("intermediate.pem");
        if !cert.exists() {
            return Err(CaError::bad_file(
                &cert,
                format!(
                    "cluster {cluster} has no intermediate; run `strait ca intermediate --cluster {cluster}` first"
                ),
            ));
        }
        let authority = self.load_authority(&cert, &dir.join("intermediate.key"))?;
        crate::authority::check_intermediate(authority.cert(), cluster)
            .map_err(|reason| CaError::bad_file(&cert, reason))?;
        Ok(authority)
    }

    /// Issues a workload certificate offline and writes `cert.pem`,
    /// `key.pem` (0600), `chain.pem` (leaf + intermediate) and `bundle.pem`.
    pub fn issue(
        &self,
        cluster: &ClusterName,
        id: &SpiffeId,
        ttl: Duration,
        out: &Path,
    ) -> Result<IssuedFiles, CaError> {
        let ca = self.intermediate(cluster)?;
        let (
            Issued {
                cert, not_after, ..
            },
            key_pem,
        ) = ca.issue_with_new_key(id, ttl)?;
        fs::create_dir_all(out).map_err(CaError::io(out))?;
        let files = IssuedFiles {
            id: id.clone(),
            cert: out.join("cert.pem"),
            key: out.join("key.pem"),
            chain: out.join("chain.pem"),
            bundle: out.join("bundle.pem"),
            not_after,
        };
        write_atomic(&files.key, key_pem.as_bytes(), 0o600)?;
        write_atomic(&files.cert, pem::encode_certs([&cert]).as_bytes(), 0o644)?;
        write_atomic(
            &files.chain,
            pem::encode_certs([&cert, ca.cert()]).as_bytes(),
            0o644,
        )?;
        // Atomic, like every other file: components watch their bundle.
        let bundle = fs::read(self.bundle_path()).map_err(CaError::io(self.bundle_path()))?;
        write_atomic(&files.bundle, &bundle, 0o644)?;
        Ok(files)
    }

    /// The root certificate (`root.pem`) and key (`root.key`).
    pub fn root_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join(ROOT_CERT), self.dir.join(ROOT_KEY))
    }

    pub(crate) fn load_authority(&self, cert: &Path, key: &Path) -> Result<Authority, CaError> {
        let cert_pem = read_text(cert)?;
        let key_pem = read_text(key)?;
        check_key_mode(key)?;
        Authority::from_pem(&self.trust_domain, &cert_pem, &key_pem).map_err(|e| match e {
            CaError::Certificate(reason) => CaError::bad_file(cert, reason),
            other => other,
        })
    }
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(CaError::io(path))
}

/// Refuses private keys that others can read.
fn check_key_mode(path: &Path) -> Result<(), CaError> {
    let mode = fs::metadata(path)
        .map_err(CaError::io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CaError::bad_file(
            path,
            format!(
                "private key has mode {:o}; it must be 0600 (chmod 600 it)",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with permissions `mode`: a
/// temporary file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` applies only at creation; a stale temp file keeps its own.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(CaError::io(path))
}
