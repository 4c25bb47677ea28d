//! An HTTP/2 `CONNECT` stream as a byte stream: a sidecar's TCP tunnel to
//! a peer sidecar, on the pooled connection (`h2client::Sender::connect`).
//!
//! Writes gather in one buffer and leave as one DATA frame (about 64 KiB,
//! or what waits at a flush), handed to h2 without
//! another copy (hyper's upgraded stream copied every write and passed it
//! through a task of its own). Reads hand out the received frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A DATA frame leaves once this much waits.
const BATCH: usize = 64 * 1024;

/// Both halves of one `CONNECT` stream.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received, not yet read.
    rbuf: Bytes,
    /// Written, not yet sent.
    wbuf: BytesMut,
    ended: bool,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            rbuf: Bytes::new(),
            wbuf: BytesMut::new(),
            ended: false,
        }
    }

    /// Sends what waits as one DATA frame once the stream has room.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.send.reserve_capacity(self.wbuf.len());
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let frame = self.wbuf.split().freeze();
        self.send.send_data(frame, false).map_err(h2_io)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.rbuf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.rbuf = data,
                // The far end closed the stream without an error.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
        let n = buf.remaining().min(this.rbuf.len());
        buf.put_slice(&this.rbuf[..n]);
        this.rbuf.advance(n);
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.wbuf.len() >= BATCH {
            ready!(this.poll_send(cx))?;
        }
        this.wbuf.extend_from_slice(buf);
        if this.wbuf.len() >= BATCH {
            // Taken either way; a stream without room wakes us later.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What h2 has taken, its connection task writes out.
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if !this.ended {
            this.ended = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A `CONNECT` stream over an in-memory HTTP/2 connection; the server
    /// side records the size of each DATA frame, then answers "pong".
    async fn connected() -> (H2Stream, tokio::task::JoinHandle<Vec<usize>>) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .max_frame_size(1 << 16)
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 22)
                .handshake::<_, Bytes>(server_io)
                .await
                .unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
            assert_eq!(req.method(), http::Method::CONNECT);
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut body = req.into_body();
            let mut frames = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                frames.push(data.len());
            }
            send.send_data(Bytes::from_static(b"pong"), true).unwrap();
            let _ = driver.await;
            frames
        });
        let (send, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("127.0.0.1:1")
            .body(())
            .unwrap();
        let (resp, stream) = send.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        (H2Stream::new(stream, resp.into_body()), server)
    }

    #[tokio::test]
    async fn writes_leave_at_a_flush_or_in_batches_and_the_end_is_passed_on() {
        let (mut s, server) = connected().await;
        // A small write leaves at the flush after it.
        for _ in 0..3 {
            s.write_all(&[1; 100]).await.unwrap();
            s.flush().await.unwrap();
        }
        for _ in 0..200 {
            s.write_all(&[2; 1024]).await.unwrap();
        }
        s.flush().await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong", "reads see the answer, then the end");
        drop(s);
        let frames = server.await.unwrap();
        let total: usize = frames.iter().sum();
        assert_eq!(total, 300 + 200 * 1024, "nothing lost");
        assert_eq!(&frames[..3], &[100, 100, 100]);
        // Batches, what waited at the flush, then the END_STREAM frame.
        assert_eq!(
            &frames[3..],
            &[BATCH, BATCH, BATCH, 200 * 1024 - 3 * BATCH, 0]
        );
    }
}
