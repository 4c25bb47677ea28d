//! The default health check: ask an endpoint's sidecar, over mTLS with the
//! controller's identity, whether it reaches its app. The sidecar answers
//! `GET` with `strait-probe: app` itself (200, or 503 `app_unavailable`
//! naming what failed) and never forwards it to the app, so the check sees
//! a dead sidecar (no connection), a dead app (503) and a wrong identity
//! (the handshake fails) without knowing anything about the app.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use strait_api::{SpiffeId, TrustDomain};
use strait_ca::tls::{self, ExpectedServer};
use strait_ca::{CertStore, SharedBundle};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::catalog::HealthCheck;

/// The header a sidecar answers itself.
pub const PROBE_HEADER: &str = "strait-probe";

/// The controller's identity, to ask sidecars with.
#[derive(Debug, Clone)]
pub struct SidecarProbe {
    pub certs: CertStore,
    pub bundle: SharedBundle,
    pub td: TrustDomain,
}

impl SidecarProbe {
    /// One probe of the sidecar at `target`, which must present
    /// `identity`, within the check's timeout.
    pub async fn check(
        &self,
        hc: &HealthCheck,
        target: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<(), String> {
        match tokio::time::timeout(hc.timeout, self.ask(target, identity)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the sidecar at {target} did not answer within {}ms",
                hc.timeout.as_millis()
            )),
        }
    }

    async fn ask(&self, target: SocketAddr, identity: &SpiffeId) -> Result<(), String> {
        let cfg = tls::client_config(
            &self.certs,
            &self.bundle,
            ExpectedServer::Id(identity.clone()),
            &[b"h2"],
        )
        .map_err(|e| format!("tls config: {e}"))?;
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("cannot connect to the sidecar at {target}: {e}"))?;
        let name = ServerName::try_from("sidecar.strait.invalid").map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                format!(
                    "mTLS with the sidecar at {target} (expected {identity}) failed: {}",
                    tls::explain_io(&e)
                )
            })?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 with the sidecar at {target} failed: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{target}/"))
            .header(PROBE_HEADER, "app")
            .header(http::header::USER_AGENT, "strait-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = send.send_request(req).await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(format!("the sidecar at {target} failed the probe: {e}"));
            }
        };
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        conn.abort();
        if status.is_success() {
            return Ok(());
        }
        let text = body
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        Err(format!("the sidecar at {target} answered {status}: {text}"))
    }
}
