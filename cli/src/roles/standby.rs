//! A controller replica standing by for the leader-election Lease: its
//! admin port answers `/live` (200, so the kubelet keeps it) and `/ready`
//! (503 naming the leader, so the controller Service sends nobody to it)
//! and nothing else, until it leads.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use strait_federation::kube::leader::{Elector, LeaseConfig, Role};

/// Starts the election and returns once this replica leads.
pub(super) async fn until_leader(
    client: strait_federation::kube::Client,
    cfg: LeaseConfig,
    admin: Option<SocketAddr>,
) -> anyhow::Result<Elector> {
    let lease = format!("{}/{}", cfg.namespace, cfg.name);
    let me = cfg.identity.clone();
    let elector = Arc::new(Elector::start(client, cfg));
    let server = match admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin_listen {addr} (standby)"))?;
            let e = elector.clone();
            Some(tokio::spawn(strait_ca::admin_http::serve(
                listener,
                move |req: http::Request<_>| {
                    let role = e.role();
                    async move { answer(req.uri().path(), &role) }
                },
            )))
        }
        None => None,
    };
    eprintln!("leader election on lease {lease} as {me}: standing by");
    let led = elector.wait_leader().await;
    if let Some(s) = server {
        s.abort();
        let _ = s.await;
    }
    led.context("the leader election ended before this replica led")?;
    eprintln!("leader election on lease {lease}: leading as {me}");
    Arc::into_inner(elector).context("the standby server still holds the elector")
}

fn answer(path: &str, role: &Role) -> Response<Full<Bytes>> {
    let (code, body) = match (path, role) {
        ("/live", _) => (StatusCode::OK, "ok (standby)\n".to_owned()),
        ("/ready", Role::Standby { holder }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("standby: the leader is {holder}\n"),
        ),
        ("/ready", r) => (StatusCode::SERVICE_UNAVAILABLE, format!("standby: {r:?}\n")),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: this controller replica does not lead; ask the leader\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}
