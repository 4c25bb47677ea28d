//! The admin HTTP port: `/metrics` (Prometheus text), `/ready`, `/live`,
//! `/status` (JSON of [`super::Status`]) and `/trust` (JSON: the roots the
//! controller trusts and the root its certificate chains to); `/v1/...`
//! goes to the operator API ([`super::admin_api`]).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;

use super::Shared;
use super::admin_api::AdminToken;

pub(crate) fn encode_metrics(shared: &Shared) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    text
}

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    res
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode_metrics(shared),
        ),
        // The first world is built before the ports open, so a serving
        // controller is ready.
        "/ready" | "/live" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/status" => match serde_json::to_vec_pretty(&super::status::status(shared)) {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/trust" => reply(
            StatusCode::OK,
            "application/json",
            strait_ca::trust::TrustReport::of(&shared.certs, &shared.bundle).to_json(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /ready, /status, /trust\n",
        ),
    }
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, token: AdminToken) {
    strait_ca::admin_http::serve(listener, move |req: Request<Incoming>| {
        let (shared, token) = (shared.clone(), token.clone());
        async move {
            if super::admin_api::is_api(req.uri().path()) {
                super::admin_api::handle(shared, &token, req).await
            } else {
                route(&shared, &req)
            }
        }
    })
    .await;
}
