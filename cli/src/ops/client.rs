//! A small HTTP/1.1 client for a controller's admin port, with errors
//! that name the address and, on 401, the token file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::meshdir as demo;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strait_federation::controller::admin_api::ADMIN_TOKEN_FILE;

use super::{api_error, decode, encode};

/// Establishing a link may take the peer up to 15 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One controller: its admin address and where its admin token is.
#[derive(Debug, Clone)]
pub struct Controller {
    pub admin: SocketAddr,
    pub token_file: Option<PathBuf>,
}

impl Controller {
    /// The controller of `cluster` in a running `strait demo`, or of a
    /// cluster `strait cluster up --dir` started.
    pub fn from_demo(dir: &Path, cluster: &str) -> anyhow::Result<Self> {
        if let Some(c) = crate::cluster::layout::Layout::new(dir, cluster).read_info()? {
            return Ok(Self {
                admin: c.admin,
                token_file: Some(c.state_dir.join(ADMIN_TOKEN_FILE)),
            });
        }
        let state = demo::read_state(dir, "--controller ADDR --state-dir DIR")?;
        let Some(c) = state.clusters.iter().find(|c| c.name == cluster) else {
            let names: Vec<&str> = state.clusters.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "no cluster {cluster:?} in the demo at {} (clusters: {})",
                dir.display(),
                names.join(", ")
            );
        };
        let Some(admin) = c.admin else {
            bail!("cluster {cluster} of the demo has no controller admin address");
        };
        Ok(Self {
            admin,
            token_file: Some(dir.join("state").join(cluster).join(ADMIN_TOKEN_FILE)),
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        let Some(path) = &self.token_file else {
            bail!(
                "changing controller {} needs its admin token: pass --state-dir DIR (or STRAIT_STATE_DIR) of that controller",
                self.admin
            );
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the admin token {} (is it the state directory of the controller at {}?)",
                path.display(),
                self.admin
            )
        })?;
        Ok(text.trim().to_owned())
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let token = self.token()?;
        let (code, bytes) = call(self.admin, "POST", path, Some(&token), encode(body)?).await?;
        self.check(code, path, &bytes)?;
        decode(path, &bytes)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        get_json(self.admin, path).await
    }

    /// `GET path`, or `None` when the controller answers 404 (not found).
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        let (code, bytes) = call(self.admin, "GET", path, None, Vec::new()).await?;
        if code == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !code.is_success() {
            bail!("controller {}: {path}: {}", self.admin, api_error(&bytes));
        }
        decode(path, &bytes).map(Some)
    }

    fn check(&self, code: http::StatusCode, path: &str, body: &[u8]) -> anyhow::Result<()> {
        if code == http::StatusCode::UNAUTHORIZED {
            let from = self
                .token_file
                .as_ref()
                .map_or_else(|| "nowhere".to_owned(), |p| p.display().to_string());
            bail!(
                "controller {}: wrong or missing admin token (read from {from}); the controller writes a new one to <state_dir>/{ADMIN_TOKEN_FILE} each time it starts",
                self.admin
            );
        }
        if !code.is_success() {
            bail!(
                "controller {} refused {path}: {}",
                self.admin,
                api_error(body)
            );
        }
        Ok(())
    }
}

/// `GET path` on an admin port, decoded from JSON.
pub async fn get_json<T: DeserializeOwned>(addr: SocketAddr, path: &str) -> anyhow::Result<T> {
    let (code, bytes) = call(addr, "GET", path, None, Vec::new()).await?;
    if !code.is_success() {
        bail!("controller {addr}: {path}: {}", api_error(&bytes));
    }
    decode(path, &bytes)
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| {
            format!("cannot reach the controller admin port at {addr} (is `strait controller` running there?)")
        })?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let code = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, bytes))
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .with_context(|| {
            format!("controller {addr}: no answer to {path} within {CALL_TIMEOUT:?}")
        })?
}
