//! What the gateway refuses: CONNECTs to anything not exported, and clients
//! that are not mesh workloads of this trust bundle.

use strait_gateway::{Gateway, Limits};

use crate::support::*;

#[tokio::test]
async fn connect_to_anything_not_exported_is_refused_with_a_reason() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.31.1").await;
    let private = echo("127.0.31.2").await;
    let mut table = exports("reviews", 9080, &[ep]);
    table
        .services
        .push(serde_yaml_ng::from_str("{ name: empty, ports: [80], endpoints: [] }").unwrap());
    let gw = Gateway::start(pki.gateway("west", "127.0.31.10", Limits::default()), table)
        .await
        .unwrap();
    let mut send = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    let cases = [
        (private.to_string(), 403, "unknown_endpoint"),
        ("payments.default:443".to_owned(), 403, "not_exported"),
        ("reviews.default:22".to_owned(), 403, "unknown_port"),
        (gw.listener.to_string(), 403, "self_target"),
        (gw.admin.to_string(), 403, "self_target"),
        ("empty.default:80".to_owned(), 503, "no_healthy_endpoint"),
        ("reviews:9080".to_owned(), 400, "bad_authority"),
    ];
    for (authority, status, reason) in &cases {
        let a = connect(&mut send, authority).await.unwrap();
        assert_eq!(
            (a.status, a.reason.as_str()),
            (*status, *reason),
            "{authority}"
        );
        assert!(a.stream.is_none());
    }
    // A plain GET is not a tunnel.
    let req = http::Request::get("http://reviews.default:9080/")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 405);
    // Nothing reached the private endpoint; the connection is still usable.
    assert_eq!(
        connect(&mut send, &ep.to_string()).await.unwrap().status,
        200
    );
    let m = gw.metrics();
    for (label, reason) in [
        ("unknown", "unknown_endpoint"),
        ("payments.default", "not_exported"),
        ("reviews.default", "unknown_port"),
        ("unknown", "self_target"),
    ] {
        let line = format!(
            r#"strait_gateway_tunnels_total{{source_cluster="east",destination_service="{label}",destination_cluster="west",result="{reason}"}}"#
        );
        assert!(metric(&m, &line) >= 1.0, "{line}\n{m}");
    }
}

#[tokio::test]
async fn clients_without_a_mesh_certificate_cannot_open_tunnels() {
    let pki = Pki::new(TD);
    let other_root = Pki::new(TD);
    let other_domain = Pki::new("other.test");
    let ep = echo("127.0.31.3").await;
    let gw = Gateway::start(
        pki.gateway("west", "127.0.31.11", Limits::default()),
        exports("web", 80, &[ep]),
    )
    .await
    .unwrap();
    // The clients trust the gateway's root, so only their own certificate
    // is at stake.
    let clients = [
        ("no certificate", pki.client("east", None)),
        (
            "another root, same trust domain",
            pki.client_with(other_root.certs("east", "web")),
        ),
        (
            "another trust domain",
            pki.client_with(other_domain.certs("east", "web")),
        ),
    ];
    for (what, cfg) in clients {
        let result = match h2(gw.listener, cfg).await {
            Err(e) => Err(e),
            Ok(mut send) => connect(&mut send, &ep.to_string()).await.map(|a| a.status),
        };
        assert!(result.is_err(), "{what}: {result:?}");
    }
    // A mesh client on the same gateway is fine.
    let mut ok = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    assert_eq!(connect(&mut ok, &ep.to_string()).await.unwrap().status, 200);
    let m = gw.metrics();
    assert!(
        metric(
            &m,
            r#"strait_gateway_connections_refused_total{reason="tls_handshake"}"#
        ) >= 3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "strait_gateway_tunnels_total"), 1.0, "{m}");
}

#[tokio::test]
async fn a_service_exported_to_named_clusters_is_refused_to_the_others() {
    let pki = Pki::new(TD);
    let ep = echo("127.0.31.21").await;
    let mut table = exports("reviews", 9080, &[ep]);
    table.services[0].to = vec![strait_api::ClusterName::new("east").unwrap()];
    let gw = Gateway::start(pki.gateway("west", "127.0.31.30", Limits::default()), table)
        .await
        .unwrap();
    // east is named: both forms of CONNECT open a tunnel.
    let mut east = h2(gw.listener, pki.client("east", Some("web")))
        .await
        .unwrap();
    for authority in [ep.to_string(), "reviews.default:9080".to_owned()] {
        assert_eq!(connect(&mut east, &authority).await.unwrap().status, 200);
    }
    // central is linked (same root) but not named: 403 not_exported_to.
    let mut central = h2(gw.listener, pki.client("central", Some("web")))
        .await
        .unwrap();
    for authority in [ep.to_string(), "reviews.default:9080".to_owned()] {
        let a = connect(&mut central, &authority).await.unwrap();
        assert_eq!((a.status, a.reason.as_str()), (403, "not_exported_to"));
        assert!(a.stream.is_none());
    }
    assert!(gw.metrics().contains(
        r#"strait_gateway_tunnels_total{source_cluster="central",destination_service="reviews.default",destination_cluster="west",result="not_exported_to"} 2"#
    ));
}
