//! HTTP/2 client connections on the `h2` crate directly: to peer sidecars
//! (direct, or the inner session of a gateway tunnel) and to h2c apps.
//!
//! hyper's client sends each request through a channel to its connection
//! task and spawns a task per request to wait for the answer. Here the
//! request's own task opens the stream and waits on it, so a request costs
//! no channel, no spawn and one wake-up less. A request body that is not
//! empty is still copied into its stream by a task of its own (as hyper
//! does), so the answer can arrive while the body is still being sent.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{Method, Request, Response, Uri};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2stream::H2Stream;
use crate::transport::{Body, BoxError, boxed};

/// Flow-control and framing settings of one kind of connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub stream_window: u32,
    pub conn_window: u32,
    pub max_frame: u32,
    /// Ping the peer this often and give up on it when a ping is not
    /// answered within the second value.
    pub keep_alive: Option<(Duration, Duration)>,
}

/// A cloneable handle that opens streams on one HTTP/2 connection.
#[derive(Clone)]
pub struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent: the connection had closed (`head` comes back too,
    /// so the request can go on another connection as it was), or it
    /// refused the request's head (`head` is gone). The body comes back
    /// intact either way.
    #[error("request not sent: {source}")]
    NotSent {
        head: Option<Box<http::request::Parts>>,
        body: Option<Body>,
        #[source]
        source: h2::Error,
    },
    /// The stream was opened and then failed: the peer may have seen the
    /// request.
    #[error("request failed in flight: {0}")]
    Failed(#[source] h2::Error),
}

impl SendError {
    /// True when the peer cannot have processed the request, so it is safe
    /// to send again (RFC 9113 8.7): nothing was sent, or the peer refused
    /// the stream, or the stream was above the last one the peer's
    /// graceful GOAWAY said it would process.
    pub fn never_processed(&self) -> bool {
        match self {
            // Refused by the connection, not by our own request's faults
            // (a malformed head fails the same way on any connection).
            Self::NotSent { source, .. } => !is_ours(source),
            Self::Failed(e) => never_processed(Ended {
                remote: e.is_remote(),
                go_away: e.is_go_away(),
                reset: e.is_reset(),
                reason: e.reason(),
            }),
        }
    }

    /// The HTTP/2 error underneath.
    pub fn into_h2(self) -> h2::Error {
        match self {
            Self::NotSent { source, .. } | Self::Failed(source) => source,
        }
    }
}

/// How an opened stream ended, as [`never_processed`] reads it.
#[derive(Debug, Clone, Copy)]
struct Ended {
    remote: bool,
    go_away: bool,
    reset: bool,
    reason: Option<h2::Reason>,
}

/// A peer's `REFUSED_STREAM` reset, and the error h2 gives streams above
/// the last stream id of a GOAWAY with `NO_ERROR`, mean the stream was not
/// processed. A GOAWAY with an error code ends processed streams too.
fn never_processed(e: Ended) -> bool {
    use h2::Reason;
    e.remote
        && ((e.reset && e.reason == Some(Reason::REFUSED_STREAM))
            || (e.go_away && e.reason == Some(Reason::NO_ERROR)))
}

/// An error of our own making (h2's user errors: a malformed head, a
/// stream opened out of turn) rather than of the connection or the peer:
/// it carries no reason and is no I/O error.
fn is_ours(e: &h2::Error) -> bool {
    e.reason().is_none() && !e.is_io()
}

impl Sender {
    /// True once the connection has ended; the pool then makes a new one.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sends `req` (absolute URI, no connection-specific headers) and waits
    /// for the response head.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let (head, body) = req.into_parts();
        if let Err(source) = self.ready().await {
            return Err(SendError::NotSent {
                head: Some(Box::new(head)),
                body: Some(body),
                source,
            });
        }
        let end = body.is_end_stream();
        let (answer, stream) = match self.send.send_request(Request::from_parts(head, ()), end) {
            Ok(opened) => opened,
            Err(source) => {
                // The connection failed or is going away: no new streams
                // on it. A request it refused as malformed leaves it open.
                if !is_ours(&source) {
                    self.closed.store(true, Ordering::Relaxed);
                }
                return Err(SendError::NotSent {
                    head: None,
                    body: Some(body),
                    source,
                });
            }
        };
        if !end {
            tokio::spawn(pipe_body(body, stream));
        }
        let resp = answer.await.map_err(|e| {
            // The peer is going away: no new streams on this connection.
            if e.is_go_away() {
                self.closed.store(true, Ordering::Relaxed);
            }
            SendError::Failed(e)
        })?;
        let (parts, recv) = resp.into_parts();
        Ok(Response::from_parts(parts, boxed(RecvBody::new(recv))))
    }

    /// `CONNECT authority` (RFC 9113 8.5): on a 2xx answer, the stream as
    /// bytes both ways; `None` when the peer refused.
    pub(crate) async fn connect(&mut self, authority: Uri) -> Result<Option<H2Stream>, SendError> {
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = authority;
        let not_sent = |source| SendError::NotSent {
            head: None,
            body: None,
            source,
        };
        self.ready().await.map_err(not_sent)?;
        let (answer, stream) = self.send.send_request(req, false).map_err(not_sent)?;
        let resp = answer.await.map_err(SendError::Failed)?;
        Ok(resp
            .status()
            .is_success()
            .then(|| H2Stream::new(stream, resp.into_body())))
    }

    /// Waits until the connection takes another stream; an error means it
    /// has closed.
    async fn ready(&mut self) -> Result<(), h2::Error> {
        let ready = poll_fn(|cx| self.send.poll_ready(cx)).await;
        if ready.is_err() {
            self.closed.store(true, Ordering::Relaxed);
        }
        ready
    }
}

/// The HTTP/2 client handshake over `io`; the connection's task (with its
/// keep-alive pings) is spawned and marks the [`Sender`] closed when it
/// ends. `what` names the connection in the debug line that says why.
pub async fn handshake<T>(
    io: T,
    settings: Settings,
    what: &'static str,
    addr: SocketAddr,
) -> Result<Sender, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.conn_window)
        .max_frame_size(settings.max_frame)
        .max_send_buffer_size(1 << 20)
        // hyper's client limit on a response's header block.
        .max_header_list_size(16 << 10)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let done = closed.clone();
    let pings = conn.ping_pong();
    tokio::spawn(async move {
        let ended = match (settings.keep_alive, pings) {
            (Some((every, within)), Some(pings)) => tokio::select! {
                r = &mut conn => r.map_err(|e| e.to_string()),
                why = keep_alive(pings, every, within) => Err(why),
            },
            _ => conn.await.map_err(|e| e.to_string()),
        };
        done.store(true, Ordering::Relaxed);
        if let Err(error) = ended {
            tracing::debug!(%addr, %error, "{what} closed");
        }
    });
    Ok(Sender { send, closed })
}

/// Pings every `every`; returns (ending the connection) when a ping goes
/// unanswered for `within`.
async fn keep_alive(mut pings: PingPong, every: Duration, within: Duration) -> String {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(within, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping: {e}"),
            Err(_) => return format!("keep-alive ping not answered within {within:?}"),
        }
    }
}

/// Copies a request body into its stream, within the stream's flow-control
/// window; a peer reset or a body error ends it (the latter with a reset).
async fn pipe_body(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reason) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reason.ok()));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            Err(_) => return,
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed; stream reset");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if send_data(&mut stream, data, body.is_end_stream())
                    .await
                    .is_err()
                {
                    return;
                }
                if body.is_end_stream() {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

/// Sends `data` as flow control allows, the last piece with `end`.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end {
            stream.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let room = poll_fn(|cx| stream.poll_capacity(cx)).await;
        let room = match room {
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        let piece = data.split_to(room.min(data.len()));
        stream.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// A response body read from its stream, giving the flow-control window
/// back as the data is taken.
struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl RecvBody {
    fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
        }
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests;
