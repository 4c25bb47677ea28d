//! Bidirectional byte copy for tunnels (opaque TCP, upgraded HTTP), closed
//! when nothing moves either way for the idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const BUF: usize = 64 * 1024;

/// Copies both ways until both directions finish (half-close is kept), an
/// I/O error ends it (logged at debug level), or no byte moved either way
/// for `idle`. Returns the bytes read from `a` and from `b`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last byte read, either way.
    let last = AtomicU64::new(0);
    let (from_a, from_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut a = Counted {
        inner: a,
        read: &from_a,
        last: &last,
        start,
    };
    let mut b = Counted {
        inner: b,
        read: &from_b,
        last: &last,
        start,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF);
    tokio::pin!(copy);
    loop {
        let due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(due) => {
                let now_due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if now_due <= Instant::now() {
                    tracing::debug!(?idle, "tunnel idle; closed");
                    break;
                }
            }
        }
    }
    (
        from_a.load(Ordering::Relaxed),
        from_b.load(Ordering::Relaxed),
    )
}

/// Counts the bytes read from `inner` and notes when.
struct Counted<'a, T: ?Sized> {
    inner: &'a mut T,
    read: &'a AtomicU64,
    last: &'a AtomicU64,
    start: Instant,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
            let ms = u64::try_from(this.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
        let (mut client, mut near) = tokio::io::duplex(1024);
        let (mut far, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(1);
        let started = Instant::now();
        let copy = tokio::spawn(async move { bidirectional(&mut near, &mut far, idle).await });
        // Traffic every 300 ms keeps it open past the idle period.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"pong!").await.unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.unwrap();
        }
        assert!(!copy.is_finished(), "a busy tunnel stays open");
        let busy_until = Instant::now();
        // Then silence: closed once the idle timeout passes.
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), copy)
            .await
            .expect("an idle tunnel must be closed")
            .unwrap();
        assert!(
            // (The last byte was read a moment before `busy_until`.)
            busy_until.elapsed() + Duration::from_millis(50) >= idle,
            "not closed before it was idle"
        );
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert_eq!((a, b), (20, 25), "bytes each way are still counted");
    }
}
