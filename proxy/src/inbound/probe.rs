//! The controller's default health check, answered by the sidecar: may
//! this sidecar reach its app? A TCP connect to every app port's target;
//! never forwarded to the app.

use http::{Response, StatusCode};
use strait_api::SpiffeId;

use crate::headers::error;
use crate::state::Shared;
use crate::transport::Body;

/// The header of a controller's health probe.
pub(crate) const PROBE_HEADER: &str = "strait-probe";

/// Whether `id` is a cluster controller's (`ns/strait-system/sa/controller-*`).
pub(crate) fn is_controller(id: &SpiffeId) -> bool {
    id.namespace() == Some(strait_api::identity::SYSTEM_NAMESPACE)
        && id
            .service_account()
            .is_some_and(|sa| sa.starts_with("controller-"))
}

/// Answers a probe: 200 when every app port takes a connection, else 503
/// `app_unavailable` naming the port.
pub(crate) async fn probe_app(shared: &Shared) -> Response<Body> {
    for app in &shared.cfg.app {
        let target = app.target();
        let dial = tokio::time::timeout(
            std::time::Duration::from_millis(400),
            tokio::net::TcpStream::connect(target),
        )
        .await;
        match dial {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "app_unavailable",
                    format!("app port {} at {target}: {e}", app.port),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "app_unavailable",
                    format!(
                        "app port {} at {target}: no connection within 400ms",
                        app.port
                    ),
                );
            }
        }
    }
    let mut ok = Response::new(crate::transport::full("app reachable\n"));
    *ok.status_mut() = StatusCode::OK;
    ok
}
