//! Routes (timeouts, retries) set by an operator through the admin API
//! reach the calling proxies of that cluster, for imported services too.

use std::time::Duration;

use strait_api::snapshot::{RetryOn, Route, Snapshot};
use strait_federation::catalog::Export;

use crate::authz::{call, token};
use crate::cluster::TestCluster;
use crate::fixture::{Mesh, eventually};

const API_ROUTE: &str = r#"{"name": "reviews", "namespace": "default",
  "routes": [{"path_prefix": "/api", "timeout": "2s",
    "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure"]}}]}"#;

fn routes(s: Option<std::sync::Arc<Snapshot>>) -> Option<Vec<Route>> {
    s.as_ref()
        .and_then(|s| s.service("default", "reviews"))
        .map(|s| s.routes.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_posted_to_the_calling_cluster_reaches_its_proxies_for_an_imported_service() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    west.link_to(&east).await;
    east.serve("reviews", 1, 2, Export::All);
    let pw = west.proxy(&mesh, "w");
    let pe = east.proxy(&mesh, "reviews-1");
    eventually(5.0, "west imports reviews", || {
        routes(pw.current()).is_some()
    })
    .await;
    assert_eq!(
        routes(pw.current()),
        Some(Vec::new()),
        "no policy, no routes"
    );

    // West calls reviews (served by east): the policy is set in west.
    let admin = west.h().admin_addr().unwrap();
    let tok = token(&west);
    let (code, body) = call(admin, "POST", "/v1/policy", Some(&tok), API_ROUTE).await;
    assert_eq!(code, 200, "{body}");
    eventually(5.0, "the route pushed to west's proxy", || {
        routes(pw.current()).is_some_and(|r| !r.is_empty())
    })
    .await;
    let snap = pw.current().unwrap();
    let svc = snap.service("default", "reviews").unwrap();
    let r = svc.route_for("/api/items");
    assert_eq!(r.timeout, Duration::from_secs(2));
    assert_eq!(r.retry.attempts, 3);
    assert_eq!(
        r.retry.retry_on,
        [RetryOn::ServerError, RetryOn::ConnectFailure]
    );
    assert_eq!(svc.route_for("/"), Route::default());
    // The proxy accepted it (a snapshot it refused would show a NACK).
    let version = snap.version;
    eventually(5.0, "the proxy acks the snapshot", || {
        west.h()
            .status()
            .proxies
            .iter()
            .any(|p| p.node_id == "w" && p.acked_version >= version && p.last_nack.is_none())
    })
    .await;
    // East's proxies have no policy of their own: routes are not synced.
    assert_eq!(routes(pe.current()), Some(Vec::new()));

    // Bad routes are refused naming the field; the good one stays.
    for (bad, field) in [
        (
            API_ROUTE.replace(r#""attempts": 3"#, r#""attempts": 11"#),
            "routes[0].retry.attempts",
        ),
        (API_ROUTE.replace(r#""2s""#, r#""0s""#), "routes[0].timeout"),
        (API_ROUTE.replace("/api", "api"), "routes[0].path_prefix"),
    ] {
        let (code, body) = call(admin, "POST", "/v1/policy", Some(&tok), &bad).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains(field), "{field}: {body}");
    }
    let (code, body) = call(admin, "GET", "/v1/policy?name=reviews", None, "").await;
    assert_eq!(code, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["routes"][0]["timeout"], "2s", "{shown:#}");
    assert_eq!(
        routes(Some(std::sync::Arc::new(west.h().snapshot(None)))),
        Some(svc.routes.clone())
    );
}
