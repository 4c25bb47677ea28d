//! The admin port: `/metrics` (Prometheus text), `/ready`, `/live`,
//! `/config` (the snapshot in use, as JSON), `/trust` (JSON: the roots the
//! sidecar trusts and the root its certificate chains to).

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::state::Shared;
use crate::transport::{Body, full};

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    strait_ca::admin_http::serve(listener, move |req| {
        let resp = handle(&shared, &req);
        async move { resp }
    })
    .await;
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
