//! Hot reload of identity files (chain, key, bundle), for components that
//! use `identity: { files: ... }`.
//!
//! [`watch`] polls the files' modification times (every second by default).
//! When one changes it reads all three and checks them together: the key
//! belongs to the leaf, the chain verifies against the new bundle, and the
//! leaf is the expected identity. Only then are the [`CertStore`] and
//! [`SharedBundle`] the TLS configs share swapped: new handshakes use the
//! new certificate and roots, open connections keep theirs. Bad files are
//! refused with a log line and the current identity stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::UnixTime;
use strait_api::{SpiffeId, TrustDomain};

use crate::tls::CertStore;
use crate::verify::{SharedBundle, TrustBundle, Usage};

/// What to watch and what a new identity must be.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub trust_domain: TrustDomain,
    /// Refuse a certificate for any other SPIFFE ID (controllers, gateways).
    pub expected: Option<SpiffeId>,
    /// How often the modification times are polled.
    pub interval: Duration,
}

/// Why new identity files were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("{chain} does not verify against {bundle}: {reason}")]
    Untrusted {
        chain: PathBuf,
        bundle: PathBuf,
        reason: String,
    },
    #[error("{path} is for {got}; this component must present {expected}")]
    WrongIdentity {
        path: PathBuf,
        got: String,
        expected: SpiffeId,
    },
}

impl IdentityFiles {
    /// Watches `chain`, `key` and `bundle` every second.
    pub fn new(chain: PathBuf, key: PathBuf, bundle: PathBuf, trust_domain: TrustDomain) -> Self {
        Self {
            chain,
            key,
            bundle,
            trust_domain,
            expected: None,
            interval: Duration::from_secs(1),
        }
    }

    /// Also requires the certificate to be for `id`.
    pub fn expecting(mut self, id: SpiffeId) -> Self {
        self.expected = Some(id);
        self
    }

    /// Reads and checks the three files together.
    pub fn load(&self) -> Result<(Arc<CertifiedKey>, TrustBundle), ReloadError> {
        let chain_pem = read(&self.chain)?;
        let key_pem = read(&self.key)?;
        let bundle_pem = read(&self.bundle)?;
        let store = CertStore::from_pem(&chain_pem, &key_pem).map_err(|e| ReloadError::Bad {
            path: self.chain.clone(),
            reason: format!("with {}: {e}", self.key.display()),
        })?;
        let ck = store.current().ok_or_else(|| ReloadError::Bad {
            path: self.chain.clone(),
            reason: "no certificate".into(),
        })?;
        let bundle =
            TrustBundle::from_pem(self.trust_domain.clone(), &bundle_pem).map_err(|e| {
                ReloadError::Bad {
                    path: self.bundle.clone(),
                    reason: e.to_string(),
                }
            })?;
        let id = bundle
            .verify(&ck.cert, UnixTime::now(), Usage::Server)
            .map_err(|e| ReloadError::Untrusted {
                chain: self.chain.clone(),
                bundle: self.bundle.clone(),
                reason: e.to_string(),
            })?;
        if let Some(want) = &self.expected {
            if &id != want {
                return Err(ReloadError::WrongIdentity {
                    path: self.chain.clone(),
                    got: id.to_string(),
                    expected: want.clone(),
                });
            }
        }
        Ok((ck, bundle))
    }

    /// Loads the files once, with the checks every reload makes (the key
    /// matches, the chain verifies against the bundle, the expected
    /// identity), into a live store and bundle for a component to start
    /// with. Unless [`Self::expecting`] set one, the identity found is the
    /// only one later reloads accept. Returns `self` for [`watch`].
    pub fn start(mut self) -> Result<(CertStore, SharedBundle, Self), ReloadError> {
        let (ck, bundle) = self.load()?;
        if self.expected.is_none() {
            self.expected = ck
                .cert
                .first()
                .and_then(|c| crate::verify::spiffe_id_of(c).ok());
        }
        let certs = CertStore::empty();
        certs.set_certified(ck);
        Ok((certs, SharedBundle::new(bundle), self))
    }

    fn mtimes(&self) -> [Option<SystemTime>; 3] {
        [&self.chain, &self.key, &self.bundle].map(|p| mtime(p))
    }
}

fn read(path: &Path) -> Result<String, ReloadError> {
    std::fs::read_to_string(path).map_err(|source| ReloadError::Read {
        path: path.to_owned(),
        source,
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What [`apply`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub certificate: bool,
    pub bundle: bool,
}

/// Installs what `files` hold into `certs` and `bundle` when it passes the
/// checks, and says what changed.
pub fn apply(
    files: &IdentityFiles,
    certs: &CertStore,
    bundle: &SharedBundle,
) -> Result<Applied, ReloadError> {
    let (ck, b) = files.load()?;
    let changed = Applied {
        certificate: certs.current().is_none_or(|cur| cur.cert != ck.cert),
        bundle: bundle.get().roots() != b.roots(),
    };
    if changed.bundle {
        bundle.set(b);
    }
    if changed.certificate {
        certs.set_certified(ck);
    }
    Ok(changed)
}

/// Polls `files` forever and swaps `certs` and `bundle` on a good change.
/// The first poll always reads the files (they may have changed since the
/// component loaded them). Files are often rewritten one after another
/// (key, then chain), so a refused set is read once more after a short
/// pause before it is logged.
pub async fn watch(files: IdentityFiles, certs: CertStore, bundle: SharedBundle) {
    let mut seen = [None; 3];
    loop {
        tokio::time::sleep(files.interval).await;
        let now = files.mtimes();
        if now == seen {
            continue;
        }
        seen = now;
        let mut result = apply(&files, &certs, &bundle);
        if result.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = files.mtimes();
            result = apply(&files, &certs, &bundle);
        }
        match result {
            Ok(Applied {
                certificate: false,
                bundle: false,
            }) => {}
            Ok(changed) => tracing::info!(
                chain = %files.chain.display(),
                roots = bundle.get().roots().len(),
                certificate = changed.certificate,
                bundle = changed.bundle,
                "identity files reloaded"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "new identity files refused; keeping the current certificate and trust bundle"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaDir;
    use strait_api::ClusterName;

    fn setup() -> (tempfile::TempDir, CaDir, IdentityFiles, SpiffeId) {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("strait.local").unwrap();
        let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
        let east = ClusterName::new("east").unwrap();
        ca.new_intermediate(&east, Duration::from_secs(86400))
            .unwrap();
        let id = td.workload_id("strait-system", "gateway-east").unwrap();
        let out = tmp.path().join("gw");
        let f = ca
            .issue(&east, &id, Duration::from_secs(3600), &out)
            .unwrap();
        let files = IdentityFiles::new(f.chain, f.key, f.bundle, td).expecting(id.clone());
        (tmp, ca, files, id)
    }

    #[test]
    fn start_checks_like_a_reload_and_pins_the_identity_it_found() {
        let (tmp, _ca, files, id) = setup();
        let mut unpinned = files.clone();
        unpinned.expected = None;
        let (certs, bundle, watched) = unpinned.clone().start().unwrap();
        assert_eq!(certs.identity(), Some(id.clone()));
        assert_eq!(bundle.get().roots().len(), 1);
        assert_eq!(
            watched.expected,
            Some(id),
            "later reloads keep this identity"
        );
        // A bundle of another root: the chain does not verify, start refuses.
        let other = CaDir::init(
            &tmp.path().join("other"),
            &files.trust_domain,
            Duration::from_secs(86400),
        )
        .unwrap();
        std::fs::copy(other.bundle_path(), &files.bundle).unwrap();
        let e = unpinned.start().unwrap_err();
        assert!(matches!(e, ReloadError::Untrusted { .. }), "{e}");
    }

    #[test]
    fn good_files_swap_and_bad_files_leave_the_identity_alone() {
        let (tmp, ca, mut files, id) = setup();
        let (ck, b) = files.load().unwrap();
        let certs = CertStore::empty();
        certs.set_certified(ck);
        let bundle = SharedBundle::new(b);
        let first = certs.current().unwrap().cert.clone();
        assert_eq!(
            apply(&files, &certs, &bundle).unwrap(),
            Applied::default(),
            "nothing changed"
        );

        // A re-issued certificate is taken.
        let east = ClusterName::new("east").unwrap();
        ca.issue(
            &east,
            &id,
            Duration::from_secs(3600),
            &tmp.path().join("gw"),
        )
        .unwrap();
        assert!(apply(&files, &certs, &bundle).unwrap().certificate);
        let second = certs.current().unwrap().cert.clone();
        assert_ne!(first, second);

        // A key of another certificate: refused, nothing swapped.
        let other = tmp.path().join("other");
        ca.issue(&east, &id, Duration::from_secs(3600), &other)
            .unwrap();
        std::fs::copy(other.join("key.pem"), &files.key).unwrap();
        let err = apply(&files, &certs, &bundle).unwrap_err();
        assert!(matches!(err, ReloadError::Bad { .. }), "{err}");
        assert_eq!(certs.current().unwrap().cert, second);

        // Garbage in the bundle: refused.
        files.key = other.join("key.pem");
        files.chain = other.join("chain.pem");
        std::fs::write(&files.bundle, "not a bundle").unwrap();
        assert!(matches!(
            apply(&files, &certs, &bundle),
            Err(ReloadError::Bad { .. })
        ));
        assert_eq!(certs.current().unwrap().cert, second);

        // A bundle that does not cover the certificate: refused.
        let stranger = CaDir::init(
            &tmp.path().join("ca2"),
            &files.trust_domain,
            Duration::from_secs(86400),
        )
        .unwrap();
        std::fs::copy(stranger.bundle_path(), &files.bundle).unwrap();
        assert!(matches!(
            apply(&files, &certs, &bundle),
            Err(ReloadError::Untrusted { .. })
        ));
        assert_eq!(bundle.get().roots().len(), 1);
        assert_eq!(bundle.get().roots()[0], ca.bundle().unwrap().roots()[0]);

        // Another identity: refused.
        std::fs::copy(ca.bundle_path(), &files.bundle).unwrap();
        let web = files.trust_domain.workload_id("demo", "web").unwrap();
        let f = ca
            .issue(
                &east,
                &web,
                Duration::from_secs(3600),
                &tmp.path().join("web"),
            )
            .unwrap();
        files.chain = f.chain;
        files.key = f.key;
        assert!(matches!(
            apply(&files, &certs, &bundle),
            Err(ReloadError::WrongIdentity { .. })
        ));
        assert_eq!(certs.current().unwrap().cert, second);
    }

    #[tokio::test]
    async fn the_watcher_picks_up_a_two_root_bundle_and_refuses_garbage() {
        let (tmp, _ca, mut files, _) = setup();
        files.interval = Duration::from_millis(50);
        let (ck, b) = files.load().unwrap();
        let certs = CertStore::empty();
        certs.set_certified(ck);
        let bundle = SharedBundle::new(b);
        let task = tokio::spawn(watch(files.clone(), certs.clone(), bundle.clone()));
        let old = std::fs::read_to_string(&files.bundle).unwrap();
        let next = CaDir::init(
            &tmp.path().join("next"),
            &files.trust_domain,
            Duration::from_secs(86400),
        )
        .unwrap();
        let both = old.clone() + &std::fs::read_to_string(next.bundle_path()).unwrap();
        crate::store::write_atomic(&files.bundle, both.as_bytes(), 0o644).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bundle.get().roots().len() != 2 {
            assert!(std::time::Instant::now() < deadline, "bundle not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crate::store::write_atomic(&files.chain, b"garbage", 0o644).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(certs.current().is_some());
        assert_eq!(bundle.get().roots().len(), 2);
        task.abort();
    }
}
