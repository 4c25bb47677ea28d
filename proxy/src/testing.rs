//! Fake workloads for tests and scenarios: echo servers over HTTP/1.1, h2c,
//! gRPC (unary and server streaming), raw TCP and HTTP/1.1 upgrades, with
//! configurable latency and failure rate. Each answers with its own name, so tests can
//! count which endpoint served a request, and with the peer identity it
//! saw in `x-forwarded-client-cert`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::transport::{Body, full};

/// Generated gRPC code of the echo API.
pub mod pb {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("strait.echo.v1");
}

/// How an echo server behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Added before every answer.
    pub latency: Duration,
    /// Share of requests answered with 503 (deterministic: every n-th).
    pub failure_rate: f64,
}

/// A running echo server. Dropping it (or [`Echo::stop`]) closes the
/// listener and every open connection, like a killed process.
#[derive(Debug)]
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests (or connections, for TCP) served.
    pub served: Arc<AtomicU64>,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    paused: watch::Sender<bool>,
}

impl Echo {
    fn unpausable(
        addr: SocketAddr,
        name: &str,
        served: Arc<AtomicU64>,
        task: JoinHandle<()>,
        stop: watch::Sender<bool>,
    ) -> Self {
        Self {
            addr,
            name: name.to_owned(),
            served,
            task,
            stop,
            paused: watch::channel(false).0,
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Pauses (or resumes) the HTTP echo like a stopped process (SIGSTOP):
    /// connections are accepted and requests read, but nothing is answered
    /// until it resumes. Other echo kinds ignore it.
    pub fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }

    pub fn stop(&self) {
        self.task.abort();
        self.stop.send_replace(true);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `fut` until it ends or the server is stopped.
async fn until_stopped<F: std::future::Future>(mut stop: watch::Receiver<bool>, fut: F) {
    tokio::select! {
        _ = fut => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

fn should_fail(n: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let every = (1.0 / rate.min(1.0)).round().max(1.0) as u64;
    n % every == every - 1
}

/// HTTP echo (HTTP/1.1 and, with `h2c`, HTTP/2 prior knowledge). The body
/// is `<name> <method> <path> peer=<xfcc>` then the request body.
pub async fn http(addr: SocketAddr, name: &str, h2c: bool, b: Behaviour) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let (paused, paused_rx) = watch::channel(false);
    let (name_c, served_c) = (name.to_owned(), served.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (name, served, b) = (name_c.clone(), served_c.clone(), b.clone());
            let paused = paused_rx.clone();
            tokio::spawn(until_stopped(stop_rx.clone(), async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (name, served, b) = (name.clone(), served.clone(), b.clone());
                    let mut paused = paused.clone();
                    async move {
                        let _ = paused.wait_for(|p| !*p).await;
                        Ok::<_, Infallible>(answer(req, &name, &served, &b).await)
                    }
                });
                let io = TokioIo::new(tcp);
                if h2c {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            }));
        }
    });
    Ok(Echo {
        addr,
        name: name.to_owned(),
        served,
        task,
        stop,
        paused,
    })
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    served: &AtomicU64,
    b: &Behaviour,
) -> Response<Body> {
    let n = served.fetch_add(1, Ordering::Relaxed);
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let peer = req
        .headers()
        .get(crate::headers::XFCC)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let head = format!("{name} {} {} peer={peer}\n", req.method(), req.uri().path());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    let mut resp = Response::new(full(out));
    resp.headers_mut().insert(
        "x-echo-server",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    if should_fail(n, b.failure_rate) {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

/// HTTP/1.1 server that takes upgrades. A request with `Connection:
/// upgrade` and `Upgrade: <p>` gets `101` with `Upgrade: <p>`, the identity
/// it saw in `x-echo-peer` and its `sec-websocket-key` in `x-echo-key`;
/// then every byte is echoed until the client ends its side, when the
/// server writes `<name> bye\n` and closes. Paths under `/decline` answer
/// 200 instead, like requests without an upgrade:
/// `<name> <method> <path> peer=<xfcc> upgrade=<p or ->`. Paths under
/// `/slow` wait two seconds first.
pub async fn upgrade_echo(addr: SocketAddr, name: &str) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let (name_c, served_c) = (name.to_owned(), served.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (name, served, stop_rx) = (name_c.clone(), served_c.clone(), stop_rx.clone());
            tokio::spawn(until_stopped(stop_rx.clone(), async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (name, served, stop_rx) = (name.clone(), served.clone(), stop_rx.clone());
                    async move {
                        served.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(switch_or_answer(req, name, stop_rx).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            }));
        }
    });
    Ok(Echo::unpausable(addr, name, served, task, stop))
}

async fn switch_or_answer(
    mut req: Request<Incoming>,
    name: String,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    let header = |req: &Request<Incoming>, h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let peer = header(&req, crate::headers::XFCC);
    let path = req.uri().path().to_owned();
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let proto = crate::headers::upgrade_of(req.version(), req.headers());
    let Some(proto) = proto.filter(|_| !path.starts_with("/decline")) else {
        let upgrade = header(&req, "upgrade");
        let text = format!(
            "{name} {} {path} peer={peer} upgrade={upgrade}\n",
            req.method()
        );
        return Response::new(full(text));
    };
    let key = header(&req, "sec-websocket-key");
    let on = hyper::upgrade::on(&mut req);
    let bye = format!("{name} bye\n");
    tokio::spawn(until_stopped(stop, async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) if io.write_all(&buf[..n]).await.is_ok() => {}
                _ => return,
            }
        }
        let _ = io.write_all(bye.as_bytes()).await;
        let _ = io.shutdown().await;
    }));
    let mut resp = Response::new(crate::transport::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    crate::headers::set_upgrade(h, proto);
    for (k, v) in [
        ("x-echo-server", name),
        ("x-echo-peer", peer),
        ("x-echo-key", key),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

/// TCP echo: writes `<name>\n` first, then echoes every byte.
pub async fn tcp(addr: SocketAddr, name: &str) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let (name_c, served_c) = (name.to_owned(), served.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            served_c.fetch_add(1, Ordering::Relaxed);
            let name = name_c.clone();
            tokio::spawn(until_stopped(stop_rx.clone(), async move {
                if tcp.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
    });
    Ok(Echo::unpausable(addr, name, served, task, stop))
}

struct GrpcEcho {
    name: String,
    served: Arc<AtomicU64>,
}

fn peer_of<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(crate::headers::XFCC)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

#[tonic::async_trait]
impl pb::echo_server::Echo for GrpcEcho {
    async fn unary(
        &self,
        req: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoReply>, tonic::Status> {
        self.served.fetch_add(1, Ordering::Relaxed);
        let peer = peer_of(&req);
        Ok(tonic::Response::new(pb::EchoReply {
            message: req.into_inner().message,
            server: self.name.clone(),
            peer,
            seq: 0,
        }))
    }

    type StreamStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::EchoReply, tonic::Status>> + Send>,
    >;

    async fn stream(
        &self,
        req: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        self.served.fetch_add(1, Ordering::Relaxed);
        let peer = peer_of(&req);
        let r = req.into_inner();
        let server = self.name.clone();
        let items = (0..r.count).map(move |seq| {
            Ok(pb::EchoReply {
                message: r.message.clone(),
                server: server.clone(),
                peer: peer.clone(),
                seq,
            })
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

/// gRPC echo over h2c.
pub async fn grpc(addr: SocketAddr, name: &str) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let svc = pb::echo_server::EchoServer::new(GrpcEcho {
        name: name.to_owned(),
        served: served.clone(),
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(Echo::unpausable(addr, name, served, task, stop))
}
