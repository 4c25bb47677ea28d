//! Header hygiene shared by both directions: hop-by-hop headers, the
//! headers only Strait may set (in headers and in trailers, in every
//! spelling a server treats as the same name), smuggling checks and error
//! responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::transport::{Body, full};

/// Where the outbound sidecar tells the inbound one which service port a
/// request is for (`name.namespace:port`). Set only by Strait.
pub const DST: &str = "strait-dst";
/// The peer identity as forwarded to the app (Envoy's header, so apps and
/// libraries already understand it).
pub const XFCC: &str = "x-forwarded-client-cert";
/// The reason Strait itself answered with an error.
pub const ERROR: &str = "strait-error";
/// [`DST`], [`XFCC`] and [`ERROR`] as header names, for the per-request
/// paths (a `&str` name is parsed again at every lookup).
pub const DST_NAME: HeaderName = HeaderName::from_static(DST);
pub const XFCC_NAME: HeaderName = HeaderName::from_static(XFCC);
pub const ERROR_NAME: HeaderName = HeaderName::from_static(ERROR);

/// Headers a client may try to use to claim an identity or steer routing.
/// They are removed from everything an app sends.
const SPOOFABLE: &[&str] = &[
    XFCC,
    "x-client-cert",
    "x-ssl-client-cert",
    "x-forwarded-client-cert-chain",
    "x-spiffe-id",
    "x-peer-identity",
    "l5d-client-id",
    "x-envoy-peer-metadata",
];

/// RFC 9110 7.6.1 connection-specific headers, plus those named in
/// `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a handful), not a lookup per
    // listed header: this runs on every request and response.
    let mut hop: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let drop = if name == header::CONNECTION {
            let named = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
            hop.extend(named.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
            true
        } else if name == header::TE {
            // `te: trailers` is the only TE value HTTP/2 allows (gRPC needs it).
            !value
                .to_str()
                .is_ok_and(|v| v.eq_ignore_ascii_case("trailers"))
        } else {
            name == header::TRANSFER_ENCODING
                || name == header::UPGRADE
                || name == header::PROXY_AUTHORIZATION
                || name == header::PROXY_AUTHENTICATE
                || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        };
        if drop {
            hop.push(name.clone());
        }
    }
    for n in hop {
        headers.remove(n);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: `Upgrade: <proto>`
/// together with the `upgrade` token in `Connection` (RFC 9110 7.8).
/// `None` for anything else, including HTTP/1.0 (whose `Upgrade` a server
/// must ignore) and HTTP/2 (where both headers make a request malformed;
/// the HTTP/2 layer resets such streams before they get here).
pub fn upgrade_of(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = headers.get(header::UPGRADE)?;
    (asked && !proto.is_empty()).then(|| proto.clone())
}

/// Puts `Connection: upgrade` and `Upgrade: <proto>` back (after
/// [`strip_hop_by_hop`]) on a message that carries an upgrade.
pub fn set_upgrade(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, proto);
}

/// A bounded metric label for an upgrade protocol (the header value is
/// client-supplied, so it is not used as a label itself).
pub fn upgrade_label(proto: &HeaderValue) -> &'static str {
    let first = proto
        .to_str()
        .ok()
        .and_then(|v| v.split(',').next())
        .map(|p| p.split('/').next().unwrap_or(p).trim().to_ascii_lowercase());
    match first.as_deref() {
        Some("websocket") => "websocket",
        Some("h2c") => "h2c",
        _ => "other",
    }
}

/// True when `name` is, to a common server, a header only Strait may set.
/// Names arrive lower-cased (`http` folds case); CGI, WSGI, PHP, Rack and
/// nginx's `$http_*` map `-` and `_` to the same variable
/// (`HTTP_X_FORWARDED_CLIENT_CERT`), so `_` counts as `-`.
pub fn is_spoofable(name: &str) -> bool {
    let folded: std::borrow::Cow<'_, str> = if name.contains('_') {
        name.replace('_', "-").into()
    } else {
        name.into()
    };
    SPOOFABLE.contains(&&*folded) || folded.starts_with("strait-")
}

/// Removes every header that only Strait may set, in any spelling
/// ([`is_spoofable`]). Used on headers and on trailers.
pub fn strip_spoofable(headers: &mut HeaderMap) {
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_spoofable(k.as_str()))
        .cloned()
        .collect();
    for k in claimed {
        headers.remove(k);
    }
}

/// A body whose trailers (HTTP/1.1 chunked trailer section, HTTP/2
/// trailing HEADERS) pass [`strip_spoofable`]; data frames stream through
/// untouched, nothing is buffered.
#[derive(Debug)]
pub struct StripTrailers<B> {
    inner: B,
}

impl<B> StripTrailers<B> {
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B: HttpBody + Unpin> HttpBody for StripTrailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|r| {
                r.map(|f| match f.into_trailers() {
                    Ok(mut trailers) => {
                        strip_spoofable(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(f) => f,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request-smuggling shape that must be refused (RFC 9112 6.3): both
/// `Transfer-Encoding` and `Content-Length`, or several `Content-Length`
/// values.
pub fn smuggling(headers: &HeaderMap) -> Option<&'static str> {
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if headers.contains_key(header::TRANSFER_ENCODING) && cl > 0 {
        return Some("both transfer-encoding and content-length");
    }
    if cl > 1 {
        return Some("several content-length headers");
    }
    None
}

/// An error answered by Strait itself, with a reason header and body.
pub fn error(
    status: StatusCode,
    reason: &'static str,
    message: impl Into<String>,
) -> Response<Body> {
    let mut msg = message.into();
    msg.push('\n');
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR, HeaderValue::from_static(reason));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Parses `name.namespace:port` (canonical form only, see
/// [`strait_api::parse_service_authority`]).
pub fn parse_dst(v: &str) -> Option<(&str, &str, u16)> {
    strait_api::parse_service_authority(v)
}

/// The host a request names: its URI's authority, else its `Host` header.
pub fn host_of<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    authority_of(uri, headers.get(http::header::HOST))
}

/// [`host_of`] given the `Host` header's value (for a caller that keeps
/// only that header).
pub fn authority_of<'a>(uri: &'a http::Uri, host: Option<&'a HeaderValue>) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|h| h.to_str().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_connection_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        let mut g = HeaderMap::new();
        g.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut g);
        assert!(g.contains_key("te"));
    }

    #[test]
    fn strips_identity_claims_and_strait_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/y"),
        );
        h.insert("strait-dst", HeaderValue::from_static("admin.ops:1"));
        h.insert("l5d-client-id", HeaderValue::from_static("x"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_spoofable(&mut h);
        assert_eq!(h.len(), 1);
    }

    /// Every spelling a CGI/WSGI/PHP/nginx app reads as the same variable.
    #[test]
    fn strips_identity_claims_in_every_spelling() {
        for name in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "x_forwarded_client_cert",
            "X_FORWARDED_CLIENT_CERT",
            "x-forwarded_client-cert",
            "x_spiffe_id",
            "l5d_client_id",
            "strait_dst",
            "Strait_Anything",
            "x-envoy-peer_metadata",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
            h.insert("x-keep_me", HeaderValue::from_static("1"));
            strip_spoofable(&mut h);
            assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep_me"], "{name}");
        }
        for name in [
            "x-forwarded-client-certs",
            "xforwarded-client-cert",
            "x-strait-dst",
        ] {
            assert!(!is_spoofable(name), "{name}");
        }
    }

    #[tokio::test]
    async fn strips_identity_claims_from_trailers_and_keeps_data() {
        use http_body_util::{BodyExt, StreamBody};
        let mut forged = HeaderMap::new();
        forged.insert("x_forwarded_client_cert", HeaderValue::from_static("URI=x"));
        forged.insert("strait-dst", HeaderValue::from_static("admin.ops:1"));
        forged.insert("x-checksum", HeaderValue::from_static("abc"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"he"))),
            Ok(Frame::data(bytes::Bytes::from_static(b"llo"))),
            Ok(Frame::trailers(forged)),
        ];
        let body = StripTrailers::new(StreamBody::new(futures_util::stream::iter(frames)));
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(&collected.to_bytes()[..], b"hello");
    }

    #[test]
    fn recognizes_upgrade_requests_only_with_both_headers_on_http11() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let v11 = http::Version::HTTP_11;
        let ws = h(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            upgrade_of(v11, &ws),
            Some(HeaderValue::from_static("websocket"))
        );
        // Connection split over two header lines.
        let split = h(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "x"),
        ]);
        assert!(upgrade_of(v11, &split).is_some());
        assert_eq!(upgrade_of(v11, &h(&[("upgrade", "websocket")])), None);
        assert_eq!(upgrade_of(v11, &h(&[("connection", "upgrade")])), None);
        assert_eq!(
            upgrade_of(v11, &h(&[("connection", "upgrades"), ("upgrade", "x")])),
            None
        );
        assert_eq!(upgrade_of(http::Version::HTTP_10, &ws), None);
        assert_eq!(upgrade_of(http::Version::HTTP_2, &ws), None);
        let mut stripped = ws.clone();
        strip_hop_by_hop(&mut stripped);
        assert!(stripped.is_empty());
        set_upgrade(&mut stripped, HeaderValue::from_static("websocket"));
        assert_eq!(
            upgrade_of(v11, &stripped),
            Some(HeaderValue::from_static("websocket"))
        );
    }

    #[test]
    fn upgrade_labels_are_bounded() {
        for (v, want) in [
            ("websocket", "websocket"),
            ("WebSocket", "websocket"),
            ("h2c", "h2c"),
            ("strait-echo/1, websocket", "other"),
            ("anything-a-client-sends", "other"),
        ] {
            assert_eq!(upgrade_label(&HeaderValue::from_static(v)), want, "{v}");
        }
    }

    #[test]
    fn detects_smuggling_shapes() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(smuggling(&h), None);
        h.append("content-length", HeaderValue::from_static("6"));
        assert!(smuggling(&h).is_some());
        let mut t = HeaderMap::new();
        t.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(smuggling(&t), None);
        t.insert("content-length", HeaderValue::from_static("5"));
        assert!(smuggling(&t).is_some());
    }

    #[test]
    fn parses_destinations() {
        assert_eq!(
            parse_dst("web.default:8080"),
            Some(("web", "default", 8080))
        );
        assert_eq!(parse_dst("web:8080"), None);
        assert_eq!(parse_dst("web.default"), None);
        assert_eq!(parse_dst("web.a.b:1"), None);
        assert_eq!(parse_dst("web.default:99999"), None);
    }
}
