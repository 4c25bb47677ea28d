//! The gateway's admin port: `/metrics` (Prometheus text), `/ready` (a
//! certificate is loaded and the gateway is not draining), `/live`, and
//! `/trust` (JSON: trusted roots and the root its certificate chains to).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::shared::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    strait_ca::admin_http::serve(listener, move |req| {
        let resp = handle(&shared, &req);
        async move { resp }
    })
    .await;
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/exports" => {
            let index = shared.exports();
            let mut linked: Option<Vec<&String>> = index.linked().map(|l| l.iter().collect());
            if let Some(l) = linked.as_mut() {
                l.sort();
            }
            let body = serde_json::json!({
                "linked": linked,
                "services": index.table().services,
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        "/trust" => text(
            StatusCode::OK,
            "application/json",
            strait_ca::trust::TrustReport::of(&shared.certs, &shared.bundle).to_json(),
        ),
        "/ready" => {
            let why = if shared.certs.current().is_none() {
                Some("no certificate yet\n")
            } else if shared.is_draining() {
                Some("draining\n")
            } else {
                None
            };
            match why {
                None => text(StatusCode::OK, "text/plain", "ready\n".into()),
                Some(w) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", w.into()),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /ready, /live, /trust or /exports\n".into(),
        ),
    }
}
