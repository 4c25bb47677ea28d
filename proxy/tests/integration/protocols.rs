//! app -> sidecar -> sidecar -> app for HTTP/1.1, HTTP/2, gRPC and TCP, with
//! the source identity visible to the destination app.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_proxy::testing::{self, Behaviour, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const XFCC_CLIENT: &str =
    "By=spiffe://strait.local/ns/default/sa/web;URI=spiffe://strait.local/ns/default/sa/client";

#[tokio::test]
async fn http1_crosses_the_sidecar_pair_and_the_app_sees_the_caller_identity() {
    let mesh = Mesh::new();
    let app = testing::http(
        "127.0.0.1:0".parse().unwrap(),
        "web-1",
        false,
        Behaviour::default(),
    )
    .await
    .unwrap();
    let server = mesh
        .server("web", 8080, "http1", app.addr, &header(1))
        .await;
    let s = header(1)
        + &service(
            "web",
            "127.77.1.1",
            8080,
            "http1",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let client = mesh.client("client", &s).await;
    let vip = "127.77.1.1:8080".parse().unwrap();
    wait_listening(vip).await;

    // Through the VIP, with a client trying to claim another identity.
    let req = http::Request::get("/hello")
        .header("host", "web.default.svc.clusterset.local:8080")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://strait.local/ns/kube-system/sa/admin",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = http1(vip, req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.lines().next().unwrap(),
        format!("web-1 GET /hello peer={XFCC_CLIENT}")
    );

    // Through the explicit proxy port, absolute-form request target.
    let (status, body) = http1(
        client.outbound,
        get(
            "http://web.default.svc.clusterset.local:8080/p",
            "web.default.svc.clusterset.local:8080",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("web-1 GET /p "), "{body}");

    // POST bodies stream through, keep-alive works.
    let mut conn = Conn::open(vip).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/again", "web").await.0, 200);
    }
    let post = http::Request::post("/upload")
        .header("host", "web")
        .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
        .unwrap();
    let (status, body) = http1(vip, post).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 100_000 + body.lines().next().unwrap().len() + 1);

    // Unknown service through the proxy: a clear 404.
    let (status, body) = http1(
        client.outbound,
        get("http://nope.default:1/", "nope.default:1"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("no service nope.default"), "{body}");
    let metrics = client.metrics();
    assert!(
        metrics.contains("strait_requests_total{direction=\"outbound\",source_cluster=\"east\""),
        "{metrics}"
    );
    assert!(
        server
            .metrics()
            .contains("source_principal=\"spiffe://strait.local/ns/default/sa/client\"")
    );
}

#[tokio::test]
async fn http2_prior_knowledge_crosses_the_pair() {
    let mesh = Mesh::new();
    let app = testing::http(
        "127.0.0.1:0".parse().unwrap(),
        "h2-app",
        true,
        Behaviour::default(),
    )
    .await
    .unwrap();
    let server = mesh
        .server("web", 8081, "http2", app.addr, &header(1))
        .await;
    let s = header(1)
        + &service(
            "web",
            "127.77.2.1",
            8081,
            "http2",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let _client = mesh.client("client", &s).await;
    let vip = "127.77.2.1:8081".parse().unwrap();
    wait_listening(vip).await;
    let tcp = TcpStream::connect(vip).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut handles = Vec::new();
    for i in 0..20 {
        let mut send = send.clone();
        handles.push(tokio::spawn(async move {
            let req = http::Request::get(format!("http://web.default:8081/s{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let body = h.await.unwrap();
        assert!(
            body.starts_with(&format!("h2-app GET /s{i} peer={XFCC_CLIENT}")),
            "{body}"
        );
    }
    send.ready().await.unwrap();
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_cross_the_pair() {
    let mesh = Mesh::new();
    let app = testing::grpc("127.0.0.1:0".parse().unwrap(), "grpc-app")
        .await
        .unwrap();
    let server = mesh.server("web", 9090, "grpc", app.addr, &header(1)).await;
    let s = header(1)
        + &service(
            "web",
            "127.77.3.1",
            9090,
            "grpc",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let _client = mesh.client("client", &s).await;
    wait_listening("127.77.3.1:9090".parse().unwrap()).await;
    let mut c = pb::echo_client::EchoClient::connect("http://127.77.3.1:9090")
        .await
        .unwrap();
    let r = c
        .unary(pb::EchoRequest {
            message: "hi".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.message.as_str(), r.server.as_str(), r.peer.as_str()),
        ("hi", "grpc-app", XFCC_CLIENT)
    );
    let mut stream = c
        .stream(pb::EchoRequest {
            message: "s".into(),
            count: 50,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        seqs.push(item.seq);
    }
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn raw_tcp_crosses_the_pair_in_a_connect_stream() {
    let mesh = Mesh::new();
    let app = testing::tcp("127.0.0.1:0".parse().unwrap(), "tcp-app")
        .await
        .unwrap();
    let server = mesh.server("web", 7000, "tcp", app.addr, &header(1)).await;
    let s = header(1)
        + &service(
            "web",
            "127.77.4.1",
            7000,
            "tcp",
            &[(server.inbound, "us-east/a", "web")],
            "",
        );
    let client = mesh.client("client", &s).await;
    wait_listening("127.77.4.1:7000".parse().unwrap()).await;
    let mut tcp = TcpStream::connect("127.77.4.1:7000").await.unwrap();
    let mut greeting = [0u8; 8];
    tcp.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"tcp-app\n");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tcp.into_split();
    let p = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&p).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "bytes must arrive intact and in order");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = client.metrics();
    // (wait_listening opened one connection too.)
    assert!(m.contains("strait_tcp_connections_total{direction=\"outbound\",source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"east\"} 2"), "{m}");
    assert!(m.contains("strait_tcp_sent_bytes_total{direction=\"outbound\",source_cluster=\"east\",destination_service=\"web.default\",destination_cluster=\"east\"} 1000000"), "{m}");
}
