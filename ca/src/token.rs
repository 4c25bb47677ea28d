//! Bootstrap tokens: how a workload with no certificate yet proves which
//! identity it may ask for. A token is bound to one namespace and service
//! account, expires, can be revoked, and is good for one certificate: the
//! CA redeems it when it signs ([`TokenStore::redeem`]), so a token read
//! later from a file or a log is worth nothing. Only its SHA-256 is stored.
//! Writers in several processes (`strait ca token`, `cluster up`, `sidecar
//! add`, the CA service) take a lock file beside the table, re-read it and
//! write it whole, so none loses another's change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strait_api::SpiffeId;

use crate::CaError;
use crate::store::write_atomic;

const PREFIX: &str = "strait-bt-";
/// Expired tokens stay in the table this long (seconds), so a late caller
/// still learns "expired", then go.
const PRUNE_AFTER_EXPIRY: u64 = 86400;

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
    #[error(
        "bootstrap token was already used {0}s ago (a token is good for one certificate: create a new one)"
    )]
    Used(u64),
    #[error("the CA cannot record the token as used: {0}")]
    Storage(String),
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
            Self::Used(_) => "token_used",
            Self::Storage(_) => "token_storage",
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
    /// When the CA signed with it (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_unix: Option<u64>,
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
        st.1 = read_file(&self.path)?;
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
            used_unix: None,
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
        check(&st.1, token, requested, now_unix())
    }

    /// [`Self::authorize`], and marks the token used, in one step under
    /// the table's lock: of two callers with one token, one gets it.
    pub fn redeem(&self, token: &str, requested: &SpiffeId) -> Result<(), TokenError> {
        // Refusals need no write: a caller with made-up tokens never
        // takes the lock other writers wait for.
        self.authorize(token, requested)?;
        let mut verdict = Err(TokenError::Unknown);
        let res = self.update(|f| {
            let now = now_unix();
            verdict = check(f, token, requested, now);
            match f.tokens.get_mut(&digest(token)) {
                Some(g) if verdict.is_ok() => g.used_unix = Some(now),
                _ => {}
            }
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot record a bootstrap token as used; refusing it");
            return Err(TokenError::Storage(e.to_string()));
        }
        verdict
    }

    fn update(&self, f: impl FnOnce(&mut File)) -> Result<(), CaError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(CaError::io(dir))?;
        }
        let _lock = LockFile::take(self.path.with_extension("lock"))?;
        // Another process may have written since: start from the file.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = read_file(&self.path)?;
        f(&mut st.1);
        // Tokens a day past their expiry can do nothing: drop them.
        let now = now_unix();
        st.1.tokens
            .retain(|_, g| g.expires_unix.saturating_add(PRUNE_AFTER_EXPIRY) > now);
        let json = serde_json::to_vec_pretty(&st.1)
            .map_err(|e| CaError::bad_file(&self.path, e.to_string()))?;
        write_atomic(&self.path, &json, 0o600)?;
        st.0 = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        Ok(())
    }
}

/// An exclusive `flock(2)` on a lock file beside the table, held while one
/// writer re-reads and writes it. The kernel drops it when the holder
/// exits (even by SIGKILL), so there is no stale lock to take over; the
/// file itself stays.
struct LockFile {
    _held: std::fs::File,
}

impl LockFile {
    fn take(path: PathBuf) -> Result<Self, CaError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(CaError::io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| CaError::io(&path)(e.into()))?;
        Ok(Self { _held: file })
    }
}

/// Whether `token` allows `requested` at `now` in `f`.
fn check(f: &File, token: &str, requested: &SpiffeId, now: u64) -> Result<(), TokenError> {
    let grant = f.tokens.get(&digest(token)).ok_or(TokenError::Unknown)?;
    if grant.revoked {
        return Err(TokenError::Revoked);
    }
    if let Some(used) = grant.used_unix {
        return Err(TokenError::Used(now.saturating_sub(used)));
    }
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

/// The table in `path` (empty when there is none yet).
fn read_file(path: &Path) -> Result<File, CaError> {
    match std::fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw).map_err(|e| CaError::bad_file(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(CaError::io(path)(e)),
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

    #[test]
    fn a_token_is_good_for_one_certificate_and_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let ca = TokenStore::open(&path).unwrap();
        let web = id("spiffe://td/ns/default/sa/web");
        let t = ca
            .create("default", "web", Duration::from_secs(60))
            .unwrap();
        // A wrong identity does not use it up.
        assert!(matches!(
            ca.redeem(&t, &id("spiffe://td/ns/default/sa/db")),
            Err(TokenError::WrongIdentity { .. })
        ));
        ca.redeem(&t, &web).unwrap();
        let again = ca.redeem(&t, &web).unwrap_err();
        assert!(matches!(again, TokenError::Used(_)), "{again:?}");
        assert_eq!(again.reason(), "token_used");
        assert!(again.to_string().contains("create a new one"), "{again}");
        // Another process's handle sees it used, and tokens it creates
        // while this handle redeems are not lost (the table is re-read
        // under the lock before every write).
        let cli = TokenStore::open(&path).unwrap();
        assert!(matches!(cli.authorize(&t, &web), Err(TokenError::Used(_))));
        let made: Vec<String> = (0..20)
            .map(|_| {
                cli.create("default", "web", Duration::from_secs(60))
                    .unwrap()
            })
            .collect();
        for m in &made {
            ca.redeem(m, &web).unwrap();
        }
        let table = read_file(&path).unwrap();
        assert_eq!(table.tokens.len(), 21);
        assert!(table.tokens.values().all(|g| g.used_unix.is_some()));
        // Refusals write nothing (made-up tokens never take the lock).
        let before = std::fs::read(&path).unwrap();
        assert_eq!(ca.redeem("strait-bt-nope", &web), Err(TokenError::Unknown));
        assert!(matches!(ca.redeem(&t, &web), Err(TokenError::Used(_))));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A token a day past its expiry is dropped at the next write.
        let mut f = read_file(&path).unwrap();
        f.tokens.get_mut(&digest(&t)).unwrap().expires_unix = 1;
        std::fs::write(&path, serde_json::to_vec(&f).unwrap()).unwrap();
        cli.create("default", "web", Duration::from_secs(60))
            .unwrap();
        let table = read_file(&path).unwrap();
        assert_eq!(table.tokens.len(), 21);
        assert!(!table.tokens.contains_key(&digest(&t)));
    }
}
