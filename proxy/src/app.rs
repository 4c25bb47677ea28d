//! Connections from the sidecar to its local app: pooled HTTP/1.1
//! keep-alive, and multiplexed h2c.
//!
//! What it is: a small pool of `hyper` HTTP/1.1 client connections per app
//! address. A request takes an idle connection (newest first) or dials a
//! new one; the connection goes back to the pool when the response body has
//! been read to its end, so it is never handed out mid-message. A request
//! that a pooled connection could not send (the app closed it while it sat
//! idle) is sent once more on a fresh connection.
//!
//! Why not `hyper_util`'s legacy client: on the sidecar's inbound path it
//! cost a pool key, a lazy-connect future and a spawned idle-watcher task
//! per request, about 9% of the server sidecar's CPU under load; this pool
//! does the one thing the sidecar needs.
//!
//! For an app port that speaks HTTP/2 (h2c, gRPC), [`Http2Conns`] keeps
//! one multiplexed connection per app address instead; requests the app
//! never processed (past its GOAWAY, or refused) are sent again on a new
//! one when they have no body.
//!
//! What it is not: no upgrades (those dial their own connection), no idle
//! reaper: connections the app closes are dropped when next met.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::h2client::{self, SendError, Sender, Settings};
use crate::transport::{Body, BoxError, boxed, drive};

/// Idle connections kept per app address.
const MAX_IDLE: usize = 256;
/// How long a checkout waits for a pooled connection that is not ready yet.
const READY_WAIT: Duration = Duration::from_millis(2);

/// Why a request to the app got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("connect to the app at {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("connect to the app at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("request to the app at {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("HTTP/2 request to the app at {addr} failed: {source}")]
    H2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
}

/// Pooled HTTP/1.1 connections to local app addresses.
#[derive(Debug)]
pub struct Http1Pool {
    connect_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>,
}

impl Http1Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connect_timeout,
            idle: Mutex::new(HashMap::default()),
        })
    }

    /// Idle connections to `addr` now.
    #[cfg(test)]
    fn idle(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<SendRequest<Body>>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` to the app at `addr`; the response body returns the
    /// connection to the pool when it ends.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        let (mut send, pooled) = match self.checkout(addr).await {
            Some(send) => (send, true),
            None => (Box::pin(self.connect(addr)).await?, false),
        };
        let resp = match send.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Never written: the pooled connection had been closed by
                // the app. One more try on a new connection.
                Some(req) if pooled => {
                    send = Box::pin(self.connect(addr)).await?;
                    send.send_request(req)
                        .await
                        .map_err(|source| AppError::Http { addr, source })?
                }
                _ => {
                    return Err(AppError::Http {
                        addr,
                        source: e.into_error(),
                    });
                }
            },
        };
        let (parts, body) = resp.into_parts();
        let body = Returning {
            inner: body,
            back: Some((send, self.clone(), addr)),
        };
        Ok(Response::from_parts(parts, boxed(body.finish_if_empty())))
    }

    /// The newest idle connection to `addr` that is still open and ready.
    async fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        loop {
            let mut send = self.lock().get_mut(&addr)?.pop()?;
            if send.is_closed() {
                continue;
            }
            // Returned only after its response ended, so it is ready at
            // once, or as soon as its connection task has run. One still
            // sending a request body after an early response is left to
            // finish and close rather than waited for.
            match std::future::poll_fn(|cx| Poll::Ready(send.poll_ready(cx))).await {
                Poll::Ready(Ok(())) => return Some(send),
                Poll::Ready(Err(_)) => continue,
                Poll::Pending => {}
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, send.ready()).await {
                return Some(send);
            }
        }
    }

    fn checkin(&self, addr: SocketAddr, send: SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(send);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, AppError> {
        let tcp = dial(addr, self.connect_timeout).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| AppError::Http { addr, source })?;
        drive(conn, "app connection", addr);
        Ok(send)
    }
}

/// TCP to the app at `addr`, within `timeout`.
async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, AppError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| AppError::ConnectTimeout { addr })?
        .map_err(|source| AppError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

type H2Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;

/// Settings of h2c connections to apps (hyper's client defaults).
const APP_H2: Settings = Settings {
    stream_window: 2 << 20,
    conn_window: 5 << 20,
    max_frame: 16 << 10,
    keep_alive: None,
};

/// How many times a request the app never processed is sent: a
/// connection that goes away under many streams can refuse the retries
/// of the one before it too.
const SENDS: usize = 3;

/// One multiplexed HTTP/2 prior-knowledge (h2c) connection per app
/// address; concurrent requests that find none wait for one connect.
#[derive(Debug)]
pub struct Http2Conns {
    connect_timeout: Duration,
    slots: Mutex<HashMap<SocketAddr, H2Slot>>,
}

impl Http2Conns {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            slots: Mutex::new(HashMap::default()),
        }
    }

    /// Sends `req` (an absolute URI) to the app at `addr`. A request the
    /// app never processed is sent again, up to [`SENDS`] times in all:
    /// one the connection could not send (the app had closed it), and one
    /// without a body that the app refused (`REFUSED_STREAM`) or that went
    /// out after the app's GOAWAY (nginx closes each h2c connection after
    /// `http2_max_requests`); after a GOAWAY, on a new connection. A
    /// request whose body was being sent when it failed is not sent
    /// again: that body is gone.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(addr).or_default().clone()
        };
        let h2 = |e: SendError| AppError::H2 {
            addr,
            source: e.into_h2(),
        };
        let mut req = req;
        for _ in 1..SENDS {
            let again = head_only_copy(&req);
            req = match self.sender(&slot, addr).await?.send(req).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::NotSent {
                    head: Some(head),
                    body: Some(body),
                    ..
                }) => Request::from_parts(*head, body),
                Err(e) if e.never_processed() => match again {
                    Some(req) => req,
                    None => return Err(h2(e)),
                },
                Err(e) => return Err(h2(e)),
            };
            // The failed connection is marked closed: the next try takes a
            // new one (or the one another request has made meanwhile).
        }
        self.sender(&slot, addr).await?.send(req).await.map_err(h2)
    }

    /// The slot's open connection, or a new one.
    async fn sender(&self, slot: &H2Slot, addr: SocketAddr) -> Result<Sender, AppError> {
        let mut guard = slot.lock().await;
        if let Some(send) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(send.clone());
        }
        *guard = None;
        // Boxed: connecting is rare and its future is large.
        let send = Box::pin(self.connect(addr)).await?;
        *guard = Some(send.clone());
        Ok(send)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, AppError> {
        let tcp = dial(addr, self.connect_timeout).await?;
        h2client::handshake(tcp, APP_H2, "app h2c connection", addr)
            .await
            .map_err(|source| AppError::H2 { addr, source })
    }
}

/// A copy of a request without a body (its method, URI, version and
/// headers), to send again if the app did not process it; `None` when the
/// request has a body.
fn head_only_copy(req: &Request<Body>) -> Option<Request<Body>> {
    if !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(crate::transport::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// A response body that hands its connection back to the pool once the
/// body has been read to the end (dropped early, it closes instead).
struct Returning {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Http1Pool>, SocketAddr)>,
}

impl Returning {
    /// A response without a body (204, 304, `Content-Length: 0`) frees its
    /// connection at once.
    fn finish_if_empty(mut self) -> Self {
        if self.inner.is_end_stream() {
            self.release();
        }
        self
    }

    fn release(&mut self) {
        if let Some((send, pool, addr)) = self.back.take() {
            pool.checkin(addr, send);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::transport::empty;

    /// An HTTP/1.1 app that answers `body` to every request and counts the
    /// connections it accepted; with `close_after`, it closes each
    /// connection after that many responses.
    async fn app(body: &'static str, close_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..close_after {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::builder()
            .uri(format!("http://{addr}/"))
            .header("host", "app")
            .body(empty())
            .unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = app("hello", usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        for _ in 0..20 {
            let resp = pool.send(addr, get(addr)).await.unwrap();
            assert_eq!(text(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_is_not_reused_before_its_body_is_read() {
        let (addr, accepted) = app("first", usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        let unread = pool.send(addr, get(addr)).await.unwrap();
        assert_eq!(pool.idle(addr), 0);
        let second = pool.send(addr, get(addr)).await.unwrap();
        assert_eq!(text(second).await, "first");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Dropped unread: that connection is closed, not pooled.
        drop(unread);
        assert_eq!(pool.idle(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced() {
        let (addr, accepted) = app("ok", 1).await;
        let pool = Http1Pool::new(Duration::from_secs(1));
        for _ in 0..5 {
            let resp = pool.send(addr, get(addr)).await.unwrap();
            assert_eq!(text(resp).await, "ok");
            // Let the app's close reach the idle pooled connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    /// An h2c app answering `ok`; counts connections; `close` drops every
    /// connection it holds (the task of each ends).
    async fn h2c_app() -> (
        SocketAddr,
        Arc<AtomicUsize>,
        tokio::sync::watch::Sender<u32>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let (close, closed) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut closed = closed.clone();
                closed.mark_unchanged();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(crate::transport::full(
                            "ok",
                        )))
                    });
                    let conn = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = closed.changed() => {}
                    }
                });
            }
        });
        (addr, accepted, close)
    }

    #[tokio::test]
    async fn h2c_requests_share_one_connection_and_reconnect_after_a_close() {
        let (addr, accepted, close) = h2c_app().await;
        let conns = Http2Conns::new(Duration::from_secs(1));
        let h2_get = || {
            Request::builder()
                .uri(format!("http://{addr}/"))
                .body(empty())
                .unwrap()
        };
        for _ in 0..10 {
            let resp = conns.send(addr, h2_get()).await.unwrap();
            assert_eq!(text(resp.map(boxed)).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        close.send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resp = conns.send(addr, h2_get()).await.unwrap();
        assert_eq!(text(resp.map(boxed)).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An h2c app that, like nginx with `http2_max_requests`, says GOAWAY
    /// after `per_conn` requests on a connection: streams the caller
    /// opened past the GOAWAY's last stream id were never processed.
    async fn h2c_app_going_away(per_conn: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let mut served = 0;
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        served += 1;
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            let mut send = respond.send_response(Response::new(()), false)?;
                            send.send_data(Bytes::from_static(b"ok"), true)
                        });
                        if served == per_conn {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn h2c_streams_past_an_apps_goaway_are_sent_again_on_a_new_connection() {
        let addr = h2c_app_going_away(20).await;
        let conns = Arc::new(Http2Conns::new(Duration::from_secs(1)));
        let mut requests = tokio::task::JoinSet::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(100));
        for _ in 0..400 {
            let conns = conns.clone();
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            requests.spawn(async move {
                let _permit = permit;
                let req = Request::builder()
                    .uri(format!("http://{addr}/"))
                    .body(empty())
                    .unwrap();
                match conns.send(addr, req).await {
                    Ok(resp) => Ok(text(resp.map(boxed)).await),
                    Err(e) => Err(e.to_string()),
                }
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = requests.join_next().await {
            match done.unwrap() {
                Ok(body) => assert_eq!(body, "ok"),
                Err(e) => failed.push(e),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of 400 failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }

    #[tokio::test]
    async fn an_app_that_is_down_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let pool = Http1Pool::new(Duration::from_secs(1));
        let err = pool.send(addr, get(addr)).await.unwrap_err();
        assert!(matches!(err, AppError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
