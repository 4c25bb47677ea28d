//! The admin port: `/metrics` (Prometheus text), `/ready`, `/live`,
//! `/config` (the snapshot in use, as JSON), `/trust` (JSON: the roots the
//! sidecar trusts and the root its certificate chains to).

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::state::Shared;
use crate::transport::{Body, full};

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            // Heads within 5 s, and a minute per connection at most (a
            // slow but steady client, or a body that never ends).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            if shared.identity.certs.current().is_some() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no workload certificate yet\n".into(),
                )
            }
        }
        "/config" => match serde_json::to_string_pretty(&*shared.snapshot()) {
            Ok(json) => text(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        "/trust" => text(
            StatusCode::OK,
            "application/json",
            strait_ca::trust::TrustReport::of(&shared.identity.certs, &shared.identity.bundle)
                .to_json(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /ready, /live, /config or /trust\n".into(),
        ),
    }
}
