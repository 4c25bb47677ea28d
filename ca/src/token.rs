//! Bootstrap tokens: how a workload with no certificate yet proves which
//! identity it may ask for. A token is bound to one namespace and service
//! account, expires, and can be revoked. Only its SHA-256 is stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strait_api::SpiffeId;

use crate::CaError;
use crate::store::write_atomic;

const PREFIX: &str = "strait-bt-";

/// Why a token does not let the caller have what it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("bootstrap token is not known to this CA")]
    Unknown,
    #[error("bootstrap token expired {0}s ago")]
    Expired(u64),
    #[error("bootstrap token was revoked")]
    Revoked,
    #[error("bootstrap token is for ns/{namespace}/sa/{service_account}, not for {requested}")]
    WrongIdentity {
        namespace: String,
        service_account: String,
        requested: String,
    },
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown => "token_unknown",
            Self::Expired(_) => "token_expired",
            Self::Revoked => "token_revoked",
            Self::WrongIdentity { .. } => "token_wrong_identity",
        }
    }
}

/// What one token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub namespace: String,
    pub service_account: String,
    /// Seconds since the Unix epoch.
    pub expires_unix: u64,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Keyed by the hex SHA-256 of the token.
    tokens: BTreeMap<String, Grant>,
}

/// The token table of one cluster's CA, persisted to a JSON file (0600).
/// The file is re-read when it changes, so `strait ca token` works while the
/// CA server runs.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, File)>,
}

impl TokenStore {
    pub fn open(path: &Path) -> Result<Self, CaError> {
        let me = Self {
            path: path.to_owned(),
            state: Mutex::new((None, File::default())),
        };
        me.reload()?;
        Ok(me)
    }

    fn reload(&self) -> Result<(), CaError> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if mtime.is_some() && st.0 == mtime {
            return Ok(());
        }
        st.1 = match std::fs::read(&self.path) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| CaError::bad_file(&self.path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(CaError::io(&self.path)(e)),
        };
        st.0 = mtime;
        Ok(())
    }

    /// Makes a new token for `namespace`/`service_account`, valid for `ttl`.
    /// Returns the token text (shown once; only its hash is stored).
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<String, CaError> {
        // Validate the pair by building the identity it allows.
        strait_api::TrustDomain::new("x")?.workload_id(namespace, service_account)?;
        self.reload()?;
        let secret: [u8; 32] = rand::random();
        let token = format!("{PREFIX}{}", hex(&secret));
        let grant = Grant {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            expires_unix: now_unix().saturating_add(ttl.as_secs()),
            revoked: false,
        };
        self.update(|f| {
            f.tokens.insert(digest(&token), grant);
        })?;
        Ok(token)
    }

    /// Revokes every token of `namespace`/`service_account`; returns how many.
    pub fn revoke(&self, namespace: &str, service_account: &str) -> Result<usize, CaError> {
        self.reload()?;
        let mut n = 0;
        self.update(|f| {
            for g in f.tokens.values_mut() {
                if g.namespace == namespace && g.service_account == service_account && !g.revoked {
                    g.revoked = true;
                    n += 1;
                }
            }
        })?;
        Ok(n)
    }

    /// Checks that `token` allows `requested` now.
    pub fn authorize(&self, token: &str, requested: &SpiffeId) -> Result<(), TokenError> {
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "cannot reload bootstrap tokens; using the last good table");
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let grant = st.1.tokens.get(&digest(token)).ok_or(TokenError::Unknown)?;
        if grant.revoked {
            return Err(TokenError::Revoked);
        }
        let now = now_unix();
        if now >= grant.expires_unix {
            return Err(TokenError::Expired(now - grant.expires_unix));
        }
        if requested.namespace() != Some(grant.namespace.as_str())
            || requested.service_account() != Some(grant.service_account.as_str())
        {
            return Err(TokenError::WrongIdentity {
                namespace: grant.namespace.clone(),
                service_account: grant.service_account.clone(),
                requested: requested.to_string(),
            });
        }
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut File)) -> Result<(), CaError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st.1);
        let json = serde_json::to_vec_pretty(&st.1)
            .map_err(|e| CaError::bad_file(&self.path, e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(CaError::io(dir))?;
        }
        write_atomic(&self.path, &json, 0o600)?;
        st.0 = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        Ok(())
    }
}

fn digest(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn token_allows_only_its_identity_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        let t = store
            .create("default", "web", Duration::from_secs(60))
            .unwrap();
        assert!(t.starts_with(PREFIX));
        store
            .authorize(&t, &id("spiffe://td/ns/default/sa/web"))
            .unwrap();
        assert!(matches!(
            store.authorize(&t, &id("spiffe://td/ns/default/sa/db")),
            Err(TokenError::WrongIdentity { .. })
        ));
        assert_eq!(
            store.authorize("strait-bt-nope", &id("spiffe://td/ns/default/sa/web")),
            Err(TokenError::Unknown)
        );
        // A second handle (another process) sees the revocation.
        let other = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        assert_eq!(other.revoke("default", "web").unwrap(), 1);
        // Force a reload regardless of mtime granularity.
        store.state.lock().unwrap().0 = None;
        assert_eq!(
            store.authorize(&t, &id("spiffe://td/ns/default/sa/web")),
            Err(TokenError::Revoked)
        );
        let raw = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!raw.contains(&t), "the token itself must never be stored");
    }

    #[test]
    fn expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        let t = store.create("default", "web", Duration::ZERO).unwrap();
        assert!(matches!(
            store.authorize(&t, &id("spiffe://td/ns/default/sa/web")),
            Err(TokenError::Expired(_))
        ));
    }
}
