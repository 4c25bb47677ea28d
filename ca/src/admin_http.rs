//! The admin port's HTTP/1.1 server skeleton, shared by the sidecar, the
//! gateway and the controller: each connection must send its request head
//! within 5 s and may live a minute at most (operator and scrape calls take
//! milliseconds), so a slow client cannot hold the port; connections end
//! with the serving task.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Time a client has to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one admin connection.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Serves `handle` on `listener` until the task is dropped.
pub async fn serve<F, Fut, B>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let handle = handle.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let fut = handle(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEAD_TIMEOUT)
                        .serve_connection(TokioIo::new(tcp), svc);
                    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
