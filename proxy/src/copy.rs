//! Bidirectional byte copy for tunnels.

use tokio::io::{AsyncRead, AsyncWrite};

const BUF: usize = 64 * 1024;

/// Copies both ways until both directions finish (half-close is kept);
/// returns (a->b, b->a) bytes. On an I/O error the counts are unknown and
/// reported as zero (the error is logged at debug level).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel ended with an error");
            (0, 0)
        }
    }
}
