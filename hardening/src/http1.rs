//! The HTTP/1 request-head path of the sidecar's outbound listener: bytes
//! the sniffer calls HTTP/1 go to hyper's HTTP/1 server, built with the
//! proxy's [`Limits`] exactly as `strait_proxy::outbound` builds it, over an
//! in-process duplex stream; the service then applies the proxy's header
//! hygiene ([`headers::smuggling`], [`headers::strip_hop_by_hop`],
//! [`headers::strip_spoofable`]) and path canonicalization
//! ([`canonicalize`]).
//!
//! Invariants: the connection ends or answers within a bound (the head read
//! timeout is shortened to [`HEAD_TIMEOUT`] so a slow head costs
//! milliseconds, not the default 10 s); nothing panics; after hygiene no
//! identity, `strait-*` or hop-by-hop header is left (in any spelling); a
//! canonical path (default policy, or escaped slashes decoded) is absolute,
//! has no empty, `.` or `..` segment, no backslash or escaped slash, and
//! canonicalizes to itself.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_api::snapshot::{EscapedSlashes, PathPolicy};
use strait_proxy::config::Limits;
use strait_proxy::headers;
use strait_proxy::path::canonicalize;
use strait_proxy::sniff::{Detected, classify};
use strait_proxy::transport::{Body, full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The head read timeout used here instead of the default.
pub const HEAD_TIMEOUT: Duration = Duration::from_millis(50);
/// A connection that neither answers nor closes by then hangs.
pub const HANG: Duration = Duration::from_secs(3);

/// Identity headers no app may receive from a client (the proxy's list,
/// restated so that a shortened list fails here).
const IDENTITY: &[&str] = &[
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-forwarded-client-cert-chain",
    "x-spiffe-id",
    "x-peer-identity",
    "l5d-client-id",
    "x-envoy-peer-metadata",
];

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// Feeds `bytes` as the start of an outbound HTTP/1 connection.
///
/// When the sniffer would call the bytes HTTP/1 the client keeps the
/// connection open and the server must answer or close on its own (head
/// timeout); otherwise the client half-closes after writing.
pub fn check(bytes: &[u8]) {
    respond(bytes);
}

/// [`check`], returning what the server sent before it answered or closed
/// (empty: it closed without a response).
pub fn respond(bytes: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let keep_open = classify(bytes) == Some(Detected::Http1);
    rt.block_on(exchange(bytes.to_vec(), keep_open, false))
}

/// Like [`respond`], but keeps the connection open and reads until the
/// server closes it (pipelined and smuggled requests get their chance).
pub fn respond_all(bytes: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(exchange(bytes.to_vec(), true, true))
}

async fn exchange(bytes: Vec<u8>, keep_open: bool, until_eof: bool) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let limits = Limits {
        header_read_timeout: HEAD_TIMEOUT,
        ..Limits::default()
    };
    let server = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .serve_connection(
                TokioIo::new(server),
                service_fn(|req| async move { Ok::<_, Infallible>(hygiene(req)) }),
            )
            .await
    });
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let write = async {
        // The server may stop reading (bad head): a failed write is fine.
        if wr.write_all(&bytes).await.is_ok() && !keep_open {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if keep_open && !until_eof && got.windows(4).any(|w| w == b"\r\n\r\n") {
                return got; // answered
            }
        }
    };
    let outcome = tokio::time::timeout(HANG, async { tokio::join!(write, read).1 }).await;
    let Ok(got) = outcome else {
        panic!(
            "no answer and no close within {HANG:?} (keep_open={keep_open}): {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(256)])
        );
    };
    if !got.is_empty() {
        assert!(got.starts_with(b"HTTP/1."), "not an HTTP response: {got:?}");
    }
    drop(client);
    match tokio::time::timeout(HANG, server).await {
        Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Ok(_) => {}
        Err(_) => panic!("server task still running {HANG:?} after the client left"),
    }
    got
}

/// The proxy's request hygiene, with its invariants asserted.
fn hygiene(req: Request<Incoming>) -> Response<Body> {
    let (mut parts, _body) = req.into_parts();
    if let Some(why) = headers::smuggling(&parts.headers) {
        return headers::error(StatusCode::BAD_REQUEST, "bad_framing", why);
    }
    let named: Vec<String> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok())
        .collect();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_spoofable(&mut parts.headers);
    check_clean(&parts.headers, &named);
    for escaped_slashes in [EscapedSlashes::Reject, EscapedSlashes::Decode] {
        let mode = PathPolicy {
            escaped_slashes,
            ..PathPolicy::default()
        };
        if let Ok(p) = canonicalize(parts.uri.path(), mode) {
            check_path(&p);
            assert_eq!(canonicalize(&p, mode).as_ref(), Ok(&p), "not idempotent");
        }
    }
    Response::new(full("ok"))
}

fn check_clean(h: &HeaderMap, named: &[String]) {
    for k in h.keys() {
        let k = k.as_str();
        // `_` is `-` to CGI, WSGI, PHP and nginx.
        let folded = k.replace('_', "-");
        assert!(
            !IDENTITY.contains(&folded.as_str()),
            "identity header {k} reached the app"
        );
        assert!(!folded.starts_with("strait-"), "{k} reached the app");
        assert!(!HOP_BY_HOP.contains(&k), "hop-by-hop {k} forwarded");
        assert!(!named.iter().any(|n| n == k), "{k} was named in Connection");
    }
    for te in h.get_all(http::header::TE) {
        assert!(
            te.as_bytes().eq_ignore_ascii_case(b"trailers"),
            "te {te:?} forwarded"
        );
    }
}

/// A canonical path: what authorization policies are matched against.
pub fn check_path(p: &str) {
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.contains("//") && !p.contains('\\'), "{p:?}");
    let upper = p.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"),
        "{p:?}"
    );
    for seg in p.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "dot segment in {p:?}");
        assert!(!seg.contains(';'), "parameter left in {p:?}");
    }
    assert!(p.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{p:?}");
}
