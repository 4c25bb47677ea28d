//! The operator API on the admin port: what `strait export`, `policy`,
//! `peering`, `link`, `unlink` and `service register` call on a running
//! controller, without API-server credentials.
//!
//! Every mutating request (`POST /v1/...`) carries `Authorization: Bearer
//! <token>`, where the token is the random secret the controller writes to
//! `<state_dir>/admin-token` (mode 0600) each time it starts: whoever can
//! read the state directory may operate the controller. Reads
//! (`GET /v1/policy`, `/status`) need no token. The admin port listens on
//! loopback by default. Bodies are JSON; errors are `{"error": "..."}`
//! with 400 (invalid), 401 (token), 404 (unknown service, policy or peer),
//! 409 (read-only catalog), 502 (peer unreachable or refusing).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/v1/register` | `Registration` | `{service}` |
//! | POST | `/v1/deregister` | `{namespace, name}` | `{service}` |
//! | POST | `/v1/export` | `{namespace, name, to: []}` | `{service, export}` |
//! | POST | `/v1/unexport` | `{namespace, name}` | `{service, export}` |
//! | POST | `/v1/policy` | `PolicySpec` | the policy |
//! | GET | `/v1/policy?namespace=&name=` | | the policy |
//! | POST | `/v1/peering/token` | `{ttl_secs}` | `{token}` |
//! | POST | `/v1/peering/establish` | `{token, fail_mode}` | `Link` |
//! | POST | `/v1/peering/revoke` | `{token}` or `{all: true}` | `{revoked, pending}` |
//! | POST | `/v1/link/settings` | `{peer, fail_mode?, lease_secs?}` | `Link` |
//! | POST | `/v1/unlink` | `{peer}` | `{link, peer_error}` (this side, then the peer's) |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strait_api::ClusterName;

use super::handle::{TokenOptions, establish, peering_token, revoke_token, unlink_both};
use super::{ControllerError, Shared};
use crate::catalog::{CatalogError, Export, PolicySpec, Registration, ServiceKey};
use crate::peering::{FailMode, PeeringError};

/// The file in the state directory that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// `{namespace, name}` of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// `POST /v1/export`: to every linked peer (`to` empty) or those named.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub to: Vec<ClusterName>,
}

/// The answer of the export verbs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportState {
    pub service: String,
    pub export: Export,
}

/// `POST /v1/peering/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_ttl() -> u64 {
    15 * 60
}

/// The answer of `POST /v1/peering/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAnswer {
    pub token: String,
}

/// `POST /v1/peering/establish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstablishBody {
    pub token: String,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// This side's lease for the peer's data; absent: `sync.lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

/// `POST /v1/peering/revoke`: one token, or every unused one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub all: bool,
}

/// The answer of `POST /v1/peering/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeAnswer {
    /// Tokens that were still usable and no longer are.
    pub revoked: usize,
    /// Unused, unexpired tokens left.
    pub pending: usize,
}

/// `POST /v1/link/settings`: what to change of an existing link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    pub peer: ClusterName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<FailMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

/// `POST /v1/unlink`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlinkRequest {
    pub peer: ClusterName,
}

/// The error body of every failed call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// The secret mutating calls must present, written at start.
#[derive(Clone)]
pub(crate) struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A fresh random token, written to `<state_dir>/admin-token` (0600).
    pub(crate) fn create(state_dir: &Path) -> Result<Self, ControllerError> {
        let path = state_dir.join(ADMIN_TOKEN_FILE);
        let token = crate::peering::new_secret();
        let fail = |reason: String| ControllerError::AdminToken {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| fail(e.to_string()))?;
        strait_ca::store::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self(token.into()))
    }

    /// Constant-time check of an `Authorization` header value.
    fn accepts(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(given) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), self.0.as_bytes())
    }
}

/// Equal-length byte strings compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request path belongs to this API.
pub(crate) fn is_api(path: &str) -> bool {
    path.starts_with("/v1/")
}

type Reply = Response<Full<Bytes>>;

/// A failed call: its status and message (kept small; see [`error`]).
#[derive(Debug)]
struct Failure(StatusCode, String);

impl Failure {
    fn new(code: StatusCode, message: impl std::fmt::Display) -> Self {
        Self(code, message.to_string())
    }
}

fn json<T: Serialize>(code: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into_bytes()
    });
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = code;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Reply {
    json(
        code,
        &ApiError {
            error: message.to_string(),
        },
    )
}

fn catalog_error(e: &CatalogError) -> Failure {
    let code = match e {
        CatalogError::NotFound(_) | CatalogError::NoPolicy(_) => StatusCode::NOT_FOUND,
        CatalogError::ReadOnly => StatusCode::CONFLICT,
        CatalogError::Io { .. } | CatalogError::Write(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    Failure::new(code, e)
}

fn peering_error(e: &PeeringError) -> Failure {
    let code = match e {
        PeeringError::NotLinked(_) => StatusCode::NOT_FOUND,
        PeeringError::Unreachable { .. } | PeeringError::Refused { .. } => StatusCode::BAD_GATEWAY,
        PeeringError::Read { .. } | PeeringError::Write(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    Failure::new(code, e)
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Failure> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn query(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

fn store(shared: &Shared) -> Result<&crate::catalog::store::DirectoryStore, Failure> {
    shared
        .store
        .as_deref()
        .ok_or_else(|| catalog_error(&CatalogError::ReadOnly))
}

fn export_state(shared: &Shared, key: &ServiceKey) -> Result<Reply, Failure> {
    let reg = store(shared)?
        .get(key)
        .ok_or_else(|| catalog_error(&CatalogError::NotFound(key.clone())))?;
    Ok(json(
        StatusCode::OK,
        &ExportState {
            service: key.to_string(),
            export: reg.export,
        },
    ))
}

/// Answers one `/v1/...` request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    token: &AdminToken,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::GET && path == "/v1/policy" {
        return show_policy(&shared, &req);
    }
    if method != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path}: use POST (GET only for /v1/policy)"),
        );
    }
    if !token.accepts(req.headers().get(http::header::AUTHORIZATION)) {
        let mut res = error(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong admin token (see <state_dir>/{ADMIN_TOKEN_FILE})"),
        );
        res.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return res;
    }
    let result = match path.as_str() {
        "/v1/register" => register(&shared, req).await,
        "/v1/deregister" => deregister(&shared, req).await,
        "/v1/export" => export(&shared, req).await,
        "/v1/unexport" => unexport(&shared, req).await,
        "/v1/policy" => set_policy(&shared, req).await,
        "/v1/peering/token" => token_call(&shared, req).await,
        "/v1/peering/establish" => establish_call(&shared, req).await,
        "/v1/peering/revoke" => revoke_call(&shared, req).await,
        "/v1/link/settings" => link_settings(&shared, req).await,
        "/v1/unlink" => unlink(&shared, req).await,
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no such call: {path}"),
        )),
    };
    result.unwrap_or_else(|Failure(code, message)| error(code, message))
}

async fn register(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let reg: Registration = body(req).await?;
    let key = reg.key();
    store(shared)?
        .register(reg)
        .map_err(|e| catalog_error(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "service": key.to_string() }),
    ))
}

async fn deregister(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: ServiceRef = body(req).await?;
    let key = ServiceKey::new(&r.namespace, &r.name);
    // A service only sidecars registered: its live endpoints are evicted.
    if shared.live.serves_only_live(&key) {
        let evicted = shared.live.evict(&key);
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "service": key.to_string(), "evicted": evicted }),
        ));
    }
    store(shared)?
        .deregister(&key)
        .map_err(|e| catalog_error(&e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "service": key.to_string() }),
    ))
}

/// Sets the export of a service only sidecars registered (the operator's
/// word wins over their `service.export`, kept across restarts).
fn live_export(shared: &Shared, key: &ServiceKey, export: Export) -> Result<Reply, Failure> {
    shared
        .live
        .set_export(key, export.clone())
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(json(
        StatusCode::OK,
        &ExportState {
            service: key.to_string(),
            export,
        },
    ))
}

async fn export(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: ExportRequest = body(req).await?;
    let key = ServiceKey::new(&r.namespace, &r.name);
    if shared.live.serves_only_live(&key) {
        let mut seen = std::collections::HashSet::new();
        if let Some(bad) =
            r.to.iter()
                .find(|c| **c == shared.cluster || !seen.insert(*c))
        {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                format!("export.to: {bad} is this cluster or listed twice"),
            ));
        }
        let export = if r.to.is_empty() {
            Export::All
        } else {
            Export::To(r.to)
        };
        return live_export(shared, &key, export);
    }
    store(shared)?
        .export(&key, r.to)
        .map_err(|e| catalog_error(&e))?;
    export_state(shared, &key)
}

async fn unexport(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: ServiceRef = body(req).await?;
    let key = ServiceKey::new(&r.namespace, &r.name);
    if shared.live.serves_only_live(&key) {
        return live_export(shared, &key, Export::None);
    }
    store(shared)?
        .unexport(&key)
        .map_err(|e| catalog_error(&e))?;
    export_state(shared, &key)
}

async fn set_policy(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let p: PolicySpec = body(req).await?;
    store(shared)?
        .set_policy(p.clone())
        .map_err(|e| catalog_error(&e))?;
    Ok(json(StatusCode::OK, &p))
}

fn show_policy(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let Some(name) = query(req.uri(), "name") else {
        return error(StatusCode::BAD_REQUEST, "GET /v1/policy needs ?name=");
    };
    let ns = query(req.uri(), "namespace").unwrap_or_else(default_namespace);
    let key = ServiceKey::new(&ns, &name);
    let policy = shared.source.watch().borrow().policies.get(&key).cloned();
    match policy {
        Some(p) => json(StatusCode::OK, &p),
        None => {
            let Failure(code, message) = catalog_error(&CatalogError::NoPolicy(key));
            error(code, message)
        }
    }
}

async fn token_call(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: TokenRequest = body(req).await?;
    if r.ttl_secs == 0 || r.ttl_secs > 7 * 86400 {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!(
                "ttl_secs {} must be between 1 and 604800 (7 days)",
                r.ttl_secs
            ),
        ));
    }
    let opts = TokenOptions {
        ttl: Duration::from_secs(r.ttl_secs),
        controller: None,
    };
    let token = peering_token(shared, opts).map_err(|e| peering_error(&e))?;
    Ok(json(StatusCode::OK, &TokenAnswer { token }))
}

async fn establish_call(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: EstablishBody = body(req).await?;
    let lease = r.lease_secs.map(Duration::from_secs);
    let link = establish(shared, r.token.trim(), r.fail_mode, lease)
        .await
        .map_err(|e| peering_error(&e))?;
    Ok(json(StatusCode::OK, &link))
}

async fn revoke_call(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: RevokeRequest = body(req).await?;
    let revoked = match (r.token, r.all) {
        (Some(t), false) => {
            usize::from(revoke_token(shared, t.trim()).map_err(|e| peering_error(&e))?)
        }
        (None, true) => shared
            .links
            .revoke_all_secrets()
            .map_err(|e| peering_error(&e))?,
        _ => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "give either a token or all: true",
            ));
        }
    };
    let pending = shared.links.pending_secrets();
    Ok(json(StatusCode::OK, &RevokeAnswer { revoked, pending }))
}

async fn link_settings(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: LinkSettings = body(req).await?;
    if r.fail_mode.is_none() && r.lease_secs.is_none() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "nothing to change: give fail_mode or lease_secs",
        ));
    }
    let link = shared
        .links
        .update(&r.peer, |l| {
            if let Some(m) = r.fail_mode {
                l.fail_mode = m;
            }
            if r.lease_secs.is_some() {
                l.lease_secs = r.lease_secs;
            }
        })
        .map_err(|e| peering_error(&e))?;
    Ok(json(StatusCode::OK, &link))
}

async fn unlink(shared: &Shared, req: Request<Incoming>) -> Result<Reply, Failure> {
    let r: UnlinkRequest = body(req).await?;
    let unlinked = unlink_both(shared, &r.peer)
        .await
        .map_err(|e| peering_error(&e))?;
    Ok(json(StatusCode::OK, &unlinked))
}

/// Where the admin token of a state directory is.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(ADMIN_TOKEN_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_needs_the_exact_bearer_value() {
        let t = AdminToken("s3cret".into());
        let h = |v: &'static str| http::HeaderValue::from_static(v);
        assert!(t.accepts(Some(&h("Bearer s3cret"))));
        assert!(!t.accepts(Some(&h("Bearer s3cre"))));
        assert!(!t.accepts(Some(&h("Bearer s3cretx"))));
        assert!(!t.accepts(Some(&h("Basic s3cret"))));
        assert!(!t.accepts(None));
    }

    #[test]
    fn created_token_file_is_private_and_fresh_each_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = AdminToken::create(dir.path()).unwrap();
        let path = token_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), &*a.0);
        let b = AdminToken::create(dir.path()).unwrap();
        assert_ne!(a.0, b.0);
    }

    #[test]
    fn query_values_are_found_by_name() {
        let uri: http::Uri = "/v1/policy?namespace=demo&name=echo&x=".parse().unwrap();
        assert_eq!(query(&uri, "name").as_deref(), Some("echo"));
        assert_eq!(query(&uri, "namespace").as_deref(), Some("demo"));
        assert_eq!(query(&uri, "x"), None);
        assert_eq!(query(&uri, "missing"), None);
    }
}
