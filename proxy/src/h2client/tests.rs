use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::*;
use crate::transport::boxed;

const SMALL_WINDOW: u32 = 16 * 1024;

/// An in-memory h2 server with a small stream window: it reads each
/// request body to the end (releasing window as it goes), then answers
/// with the byte count in the body and the request's trailers as its own.
async fn server() -> (Sender, tokio::task::JoinHandle<()>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(SMALL_WINDOW)
            .handshake::<_, Bytes>(server_io)
            .await
            .unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let mut body = req.into_body();
                let mut n = 0usize;
                while let Some(data) = body.data().await {
                    let data = data.unwrap();
                    n += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                let trailers = body.trailers().await.unwrap();
                let mut send = respond.send_response(Response::new(()), false).unwrap();
                send.send_data(Bytes::from(n.to_string()), trailers.is_none())
                    .unwrap();
                if let Some(t) = trailers {
                    send.send_trailers(t).unwrap();
                }
            });
        }
    });
    let settings = Settings {
        stream_window: 1 << 20,
        conn_window: 1 << 20,
        max_frame: 16 * 1024,
        keep_alive: None,
    };
    let addr = "127.0.0.1:1".parse().unwrap();
    let sender = handshake(client_io, settings, "test connection", addr)
        .await
        .unwrap();
    (sender, task)
}

fn request(body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static("http://echo.test/");
    req
}

#[tokio::test]
async fn a_body_larger_than_the_window_and_its_trailers_get_through() {
    let (mut send, _server) = server().await;
    // 40 chunks of 8 KiB: 20 stream windows' worth, then trailers.
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..40)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 8192]))))
        .collect();
    frames.push(Ok(Frame::trailers(trailers)));
    let body = boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let resp = send.send(request(body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let got = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), Bytes::from((40 * 8192).to_string()));
    assert_eq!(
        got.and_then(|t| t.get("grpc-status").cloned()),
        Some(HeaderValue::from_static("0")),
        "trailers come back"
    );
}

#[tokio::test]
async fn many_requests_share_the_connection() {
    let (send, _server) = server().await;
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let body = boxed(http_body_util::Full::new(Bytes::from(vec![1u8; i])));
            let resp = send.send(request(body)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, Bytes::from(i.to_string()));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!send.is_closed());
}

#[tokio::test]
async fn a_closed_connection_gives_the_body_back_unsent() {
    let (mut send, server) = server().await;
    server.abort();
    let _ = server.await;
    // The connection task notices the end of the in-memory stream.
    for _ in 0..100 {
        if send.is_closed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(send.is_closed(), "the sender sees the connection end");
    let body = boxed(http_body_util::Full::new(Bytes::from_static(b"keep me")));
    match send.send(request(body)).await {
        Err(SendError::NotSent {
            head: Some(head),
            body: Some(body),
            ..
        }) => {
            assert_eq!(head.uri, "http://echo.test/", "the head comes back too");
            let back = body.collect().await.unwrap().to_bytes();
            assert_eq!(back, Bytes::from_static(b"keep me"));
        }
        other => panic!("expected NotSent with the body, got {other:?}"),
    }
}

#[test]
fn only_streams_the_peer_never_processed_may_be_sent_again() {
    use h2::Reason;
    let ended = |remote, go_away, reset, reason| Ended {
        remote,
        go_away,
        reset,
        reason: Some(reason),
    };
    let rows = [
        // remote, go_away, reset, reason -> never processed
        (ended(true, true, false, Reason::NO_ERROR), true),
        (ended(true, false, true, Reason::REFUSED_STREAM), true),
        // A GOAWAY with an error ends streams the peer was processing.
        (ended(true, true, false, Reason::INTERNAL_ERROR), false),
        (ended(true, true, false, Reason::PROTOCOL_ERROR), false),
        // Any other reset may come after the app acted on the request.
        (ended(true, false, true, Reason::CANCEL), false),
        (ended(true, false, true, Reason::NO_ERROR), false),
        // Our own side's errors say nothing of what the peer did.
        (ended(false, true, false, Reason::NO_ERROR), false),
        (ended(false, false, true, Reason::REFUSED_STREAM), false),
    ];
    for (e, want) in rows {
        assert_eq!(never_processed(e), want, "{e:?}");
    }
    let io = Ended {
        remote: false,
        go_away: false,
        reset: false,
        reason: None,
    };
    assert!(!never_processed(io));
}

#[tokio::test]
async fn our_own_errors_are_told_from_the_connections() {
    // A malformed head (h2 refuses connection-specific headers) is ours:
    // sending it again, or on a new connection, would fail the same way.
    let (client_io, _server_io) = tokio::io::duplex(64 * 1024);
    let (mut send, _conn) = h2::client::handshake(client_io).await.unwrap();
    let mut req = Request::new(());
    *req.uri_mut() = "http://app/".parse().unwrap();
    req.headers_mut()
        .insert("connection", HeaderValue::from_static("close"));
    let ours = send.send_request(req, true).unwrap_err();
    assert!(is_ours(&ours), "{ours:?}");
    let failed = SendError::NotSent {
        head: None,
        body: None,
        source: ours,
    };
    assert!(!failed.never_processed());
    // The peer's errors are not.
    assert!(!is_ours(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
}
