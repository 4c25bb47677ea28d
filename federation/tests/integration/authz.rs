//! Authorization set by an operator through the admin API reaches the
//! proxies of the owning cluster, and only those.

use std::net::SocketAddr;

use strait_api::snapshot::AuthorizationPolicy;
use strait_federation::catalog::Export;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::TestCluster;
use crate::fixture::{Mesh, eventually};

/// One HTTP/1.1 call on the admin port: (status, body).
pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

pub(crate) fn token(c: &TestCluster) -> String {
    let path = strait_federation::controller::admin_api::token_path(&c.config.state_dir);
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

const DENY_GUESTS: &str = r#"{"name": "reviews", "namespace": "default",
  "failover": ["west"],
  "authorization": [{"name": "no-guests",
    "deny": [{"from": ["spiffe://strait.local/ns/guest/*"], "paths": ["/admin"]}]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_rule_posted_to_the_admin_api_reaches_local_proxies_only() {
    let mesh = Mesh::new(&["east", "west"]);
    let east = TestCluster::start(&mesh, "east", 1).await;
    let west = TestCluster::start(&mesh, "west", 2).await;
    west.link_to(&east).await;
    east.serve("reviews", 1, 2, Export::All);
    let admin = east.h().admin_addr().unwrap();
    let pe = east.proxy(&mesh, "reviews-1");
    let pw = west.proxy(&mesh, "w");

    let (code, _) = call(admin, "POST", "/v1/policy", None, DENY_GUESTS).await;
    assert_eq!(code, 401, "changing a policy needs the admin token");
    let (code, body) = call(
        admin,
        "POST",
        "/v1/policy",
        Some(&token(&east)),
        DENY_GUESTS,
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let authz = |s: &Option<std::sync::Arc<strait_api::snapshot::Snapshot>>| {
        s.as_ref()
            .and_then(|s| s.service("default", "reviews"))
            .map(|s| s.authorization.clone())
    };
    eventually(5.0, "the deny rule pushed to east's proxy", || {
        authz(&pe.current()).is_some_and(|a| !a.is_empty())
    })
    .await;
    let got: Vec<AuthorizationPolicy> = authz(&pe.current()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "no-guests");
    assert_eq!(
        got[0].deny[0].from[0].to_string(),
        "spiffe://strait.local/ns/guest/*"
    );
    assert_eq!(got[0].deny[0].paths, ["/admin"]);
    // The proxy accepted it (a snapshot it refused would show a NACK).
    let version = pe.current().unwrap().version;
    eventually(5.0, "the proxy acks the snapshot", || {
        east.h().status().proxies.iter().any(|p| {
            p.node_id == "reviews-1" && p.acked_version >= version && p.last_nack.is_none()
        })
    })
    .await;
    // The peer imports the service with its endpoints but not east's rules:
    // east's sidecars enforce them.
    eventually(5.0, "west imports reviews", || {
        authz(&pw.current()).is_some()
    })
    .await;
    assert_eq!(authz(&pw.current()), Some(Vec::new()));

    // GET shows it; a policy naming a port reviews does not have is refused
    // with the field named, and the good one stays.
    let (code, body) = call(admin, "GET", "/v1/policy?name=reviews", None, "").await;
    assert_eq!(code, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        shown["authorization"][0]["deny"][0]["paths"][0], "/admin",
        "{shown:#}"
    );
    let bad = DENY_GUESTS.replace(
        r#""name": "no-guests","#,
        r#""name": "no-guests", "ports": [81],"#,
    );
    let (code, body) = call(admin, "POST", "/v1/policy", Some(&token(&east)), &bad).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("authorization[0].ports[0]") && body.contains("81"),
        "{body}"
    );
    let bad = DENY_GUESTS.replace("/admin", "/a/../admin");
    let (code, body) = call(admin, "POST", "/v1/policy", Some(&token(&east)), &bad).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("authorization[0].deny[0].paths[0]"), "{body}");
    assert_eq!(
        east.h()
            .snapshot(None)
            .service("default", "reviews")
            .unwrap()
            .authorization,
        got
    );
}
