//! Bidirectional byte copy for tunnels (opaque TCP, upgraded HTTP), closed
//! when nothing moves either way for the idle timeout: the shared pump of
//! [`strait_ca::pipe`], with the way it ended logged at debug level.

use std::time::Duration;

use strait_ca::pipe::{self, End};
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies both ways until both directions finish (half-close is kept), an
/// I/O error ends it, or no byte moved either way for `idle`. Returns the
/// bytes read from `a` and from `b`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let pumped = pipe::bidirectional(a, b, idle, |_, _| {}).await;
    match pumped.end {
        End::Done => {}
        End::Idle => tracing::debug!(?idle, "tunnel idle; closed"),
        End::Error(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
    }
    (pumped.from_a, pumped.from_b)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

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
