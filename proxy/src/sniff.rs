//! Protocol detection on the first bytes a client sends.
//!
//! Reads (peeks) up to the HTTP/2 preface length with a short timeout and
//! classifies the stream. Server-first protocols, whose clients send nothing
//! first, are classified as opaque TCP when the timeout fires.

use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Tcp,
}

/// Classifies a prefix of a stream. `None` means "need more bytes".
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    // TLS record: handshake (22), version major 3.
    if prefix[0] == 0x16 {
        return match prefix.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Tcp),
        };
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    // HTTP/1: a method token (upper-case letters) then a space.
    for (i, b) in prefix.iter().enumerate() {
        match b {
            b'A'..=b'Z' if i < MAX_METHOD_LEN => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Tcp),
        }
    }
    // Up to MAX_METHOD_LEN letters could still be a method followed by a
    // space; only a longer run of letters is surely not HTTP.
    if prefix.len() > MAX_METHOD_LEN {
        Some(Detected::Tcp)
    } else {
        None
    }
}

/// Longest method Strait treats as HTTP (`OPTIONS`, `CONNECT`, `PROPFIND`...).
const MAX_METHOD_LEN: usize = 16;

/// Peeks at `stream` until [`classify`] decides or `timeout` passes
/// (then: opaque TCP). The bytes stay in the socket for the real reader.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Detected::Tcp),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(d) = classify(&buf[..n]) {
            return Ok(d);
        }
        // Not enough bytes yet; peek returns immediately with the same
        // bytes, so wait until the socket is readable with more.
        if tokio::time::timeout_at(deadline, wait_for_more(stream, n))
            .await
            .is_err()
        {
            return Ok(classify_final(&buf[..n]));
        }
    }
}

async fn wait_for_more(stream: &TcpStream, have: usize) {
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf).await {
            Ok(n) if n > have || n == 0 => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(_) => return,
        }
    }
}

/// What an undecided prefix is when no more bytes come.
fn classify_final(prefix: &[u8]) -> Detected {
    classify(prefix).unwrap_or(Detected::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads exactly the HTTP/2 preface (used by tests of the sniffer).
    async fn read_preface(stream: &mut TcpStream) -> std::io::Result<bool> {
        let mut buf = [0u8; 24];
        stream.read_exact(&mut buf).await?;
        Ok(buf == H2_PREFACE)
    }

    #[test]
    fn classifies_common_first_bytes() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST /x HTTP/1.1", Some(Detected::Http1)),
            (b"CONNECT a:1 HTTP/1.1", Some(Detected::Http1)),
            (H2_PREFACE, Some(Detected::Http2)),
            (b"PRI * HTTP/2", None),
            (b"PRI", None),
            (b"PRX ", Some(Detected::Http1)), // method-shaped
            (&[0x16, 0x03, 0x01, 0x02, 0x00], Some(Detected::Tls)),
            (&[0x16], None),
            (&[0x16, 0x09], Some(Detected::Tcp)),
            (b"\x00\x01binary", Some(Detected::Tcp)),
            (b"get / HTTP/1.1", Some(Detected::Tcp)),
            (b"G", None),
            (b"", None),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Detected::Tcp)),
            (b"AAAAAAAAAAAAAAAA", None),
            (b"AAAAAAAAAAAAAAAA ", Some(Detected::Http1)),
            (b"AAAAAAAAAAAAAAAAA", Some(Detected::Tcp)),
            (b" GET", Some(Detected::Tcp)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn server_first_protocols_fall_back_to_tcp_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let t = std::time::Instant::now();
        let d = detect(&server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(d, Detected::Tcp);
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn detects_split_preface_and_keeps_bytes_unread() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&H2_PREFACE[10..]).await.unwrap();
            client
        });
        assert_eq!(
            detect(&server, Duration::from_secs(2)).await.unwrap(),
            Detected::Http2
        );
        assert!(read_preface(&mut server).await.unwrap());
        drop(writer.await.unwrap());
    }
}
