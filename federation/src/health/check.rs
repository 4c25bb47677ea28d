//! One active health check: `GET path` expecting 2xx, or a TCP connect.

use std::net::SocketAddr;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::catalog::{CheckKind, HealthCheck};

/// Runs one check against `target` within the check's timeout. The error
/// says what failed, for status.
pub async fn run_check(hc: &HealthCheck, target: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(hc.timeout, attempt(hc, target)).await {
        Ok(res) => res,
        Err(_) => Err(format!(
            "no answer from {target} within {}ms",
            hc.timeout.as_millis()
        )),
    }
}

async fn attempt(hc: &HealthCheck, target: SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    if hc.kind == CheckKind::Tcp {
        return Ok(());
    }
    let path = hc.path.as_deref().unwrap_or("/");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("http handshake with {target} failed: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, target.to_string())
        .header(http::header::USER_AGENT, "strait-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad health check request for {path}: {e}"))?;
    let res = sender.send_request(req).await;
    conn.abort();
    let res = res.map_err(|e| format!("GET {path} on {target} failed: {e}"))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} on {target} answered {}", res.status()))
    }
}
