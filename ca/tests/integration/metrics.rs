//! The signing service's metrics over real sockets: signings and refusals
//! by reason as callers meet them over gRPC, the issuer's expiry, and the
//! admin port's answers.

use std::io::{Read, Write};
use std::time::Duration;

use strait_ca::CertStore;
use strait_ca::client::CaClient;
use strait_ca::metrics::CaMetrics;

use crate::fixture::{csr, uri};

const WEB: &str = "spiffe://strait.local/ns/default/sa/web";

/// `GET path` on the admin port: (status line, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn signings_and_refusals_by_reason_reach_the_admin_port() {
    let metrics = CaMetrics::new();
    let ca = crate::grpc::start_ca_with(Some(metrics.clone())).await;
    let not_after = ca
        .fx
        .ca
        .intermediate(&ca.fx.cluster)
        .unwrap()
        .not_after()
        .unix_timestamp();
    let (bound, bundle, tokens) = (&ca.bound, &ca.bundle, &ca.tokens);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let admin_task = tokio::spawn(strait_ca::metrics::serve_admin(admin, metrics));

    let good = tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    let expired = tokens.create("default", "web", Duration::ZERO).unwrap();
    let mut client = CaClient::connect(bound.addr, bundle, &CertStore::empty())
        .await
        .unwrap();
    client
        .sign(csr(vec![uri(WEB)], vec![]), &good, None)
        .await
        .unwrap();
    // A token is good for one certificate: the second signing needs another.
    let second = tokens
        .create("default", "web", Duration::from_secs(600))
        .unwrap();
    client
        .sign(csr(vec![uri(WEB)], vec![]), &second, None)
        .await
        .unwrap();
    for (token, n) in [
        ("no-such-token", 3),
        (expired.as_str(), 1),
        ("", 2),
        (good.as_str(), 1),
    ] {
        for _ in 0..n {
            client
                .sign(csr(vec![uri(WEB)], vec![]), token, None)
                .await
                .unwrap_err();
        }
    }
    client
        .sign(b"garbage".to_vec(), &good, None)
        .await
        .unwrap_err();

    let text = tokio::task::spawn_blocking(move || {
        let (status, body) = get(admin_addr, "/metrics");
        assert!(status.contains(" 200 "), "{status}");
        for path in ["/ready", "/live"] {
            assert!(get(admin_addr, path).0.contains(" 200 "), "{path}");
        }
        let (status, body404) = get(admin_addr, "/keys");
        assert!(
            status.contains(" 404 ") && body404.contains("/metrics"),
            "{status} {body404}"
        );
        body
    })
    .await
    .unwrap();
    for line in [
        "strait_ca_signings_total 2".to_owned(),
        "strait_ca_refusals_total{reason=\"token_unknown\"} 3".to_owned(),
        "strait_ca_refusals_total{reason=\"token_expired\"} 1".to_owned(),
        "strait_ca_refusals_total{reason=\"no_credentials\"} 2".to_owned(),
        "strait_ca_refusals_total{reason=\"token_used\"} 1".to_owned(),
        "strait_ca_refusals_total{reason=\"csr_malformed\"} 1".to_owned(),
        format!("strait_ca_issuer_expiry_timestamp_seconds {not_after}"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    admin_task.abort();
    drop(ca);
}
