//! HTTP/1 request heads through hyper (built like the outbound listener)
//! and the proxy's hygiene: smuggling shapes, bombs, identity headers,
//! hostile paths, then mutated and random heads.

use proptest::prelude::*;
use strait_api::snapshot::{EscapedSlashes, PathPolicy};
use strait_hardening::http1::{check, check_path, respond, respond_all};
use strait_proxy::path::canonicalize;

const DECODE: PathPolicy = PathPolicy {
    escaped_slashes: EscapedSlashes::Decode,
    parameters: strait_api::snapshot::PathParameters::Reject,
    case_insensitive: false,
};

use crate::support::{bytes_or_mutated, config};

const HEADS: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: web.default\r\n\r\n",
    "POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET /a/%2e%2e/admin HTTP/1.1\r\nHost: WEB.default:80\r\nConnection: x-secret, keep-alive\r\nx-secret: 1\r\nx-forwarded-client-cert: URI=spiffe://evil/ns/a/sa/b\r\nstrait-dst: admin.ops:1\r\nTE: gzip\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nx_forwarded_client_cert: URI=spiffe://evil/ns/a/sa/b\r\nX-SPIFFE_ID: x\r\nStrait_Dst: admin.ops:1\r\n\r\n",
    "CONNECT web.default:80 HTTP/1.1\r\nHost: web.default:80\r\n\r\n",
    "GET http://web.default/x HTTP/1.1\r\nHost: web.default\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n",
];

const DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b": ",
    b" ",
    b"\t",
    b"\r\n folded",
    b"Content-Length: 0\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"x-spiffe-id: spiffe://evil\r\n",
    b"X_Forwarded_Client_Cert: URI=spiffe://evil\r\n",
    b"strait_dst: admin.ops:1\r\n",
    b"Strait-Error: x\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"%2F",
    b"%5c",
    b"/..;/",
    b"//",
    b"%00",
    b"\x00",
    b"\xff",
    b"HTTP/1.1",
    b"HTTP/9.9",
    b"ffffffffffffffff\r\n",
];

fn seeds() -> Vec<Vec<u8>> {
    HEADS.iter().map(|h| h.as_bytes().to_vec()).collect()
}

/// The status code of the first response, or `None` when the server
/// closed without one.
fn status(head: &[u8]) -> Option<u16> {
    let got = respond(head);
    let line = got.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

#[test]
fn smuggling_shapes_and_bombs_are_refused() {
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let refused = [
        (
            "double CL",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .to_owned(),
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\n folded: yes\r\n\r\n".to_owned(),
        ),
        (
            "200 headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n"),
        ),
        (
            "70 KiB header",
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
        ),
        (
            "100 KiB target",
            format!(
                "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
                "a".repeat(100 * 1024)
            ),
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello".to_owned(),
        ),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_owned(),
        ),
    ];
    for (what, head) in &refused {
        let got = status(head.as_bytes());
        assert!(got.is_none_or(|s| s >= 400), "{what}: answered {got:?}");
    }
}

/// CL + TE: hyper frames by `Transfer-Encoding`, drops `Content-Length`
/// (so `headers::smuggling` never sees the pair) and closes after the
/// response: a request hidden behind the body is never answered. (Equal
/// duplicate `Content-Length`s are folded into one by hyper: unambiguous.)
#[test]
fn cl_te_is_framed_by_te_and_the_connection_closed() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for head in [
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ] {
        let got = respond_all(head.as_bytes());
        let responses = got
            .windows(9)
            .filter(|w| w.starts_with(b"HTTP/1.1 "))
            .count();
        assert!(responses <= 1, "{responses} responses to {head:?}");
    }
}

#[test]
fn slow_and_broken_heads_are_closed_and_good_ones_answered() {
    for head in [
        "GET / HTTP/1.1\r\nHost: a\r\n",
        "GET / HTTP/1.1\r\nHost:",
        "G",
        "GET ",
    ] {
        assert_eq!(status(head.as_bytes()), None, "{head:?}");
    }
    assert_eq!(status(HEADS[0].as_bytes()), Some(200));
    for head in HEADS {
        check(head.as_bytes());
    }
}

#[test]
fn deny_policy_bypass_paths_normalize_to_the_guarded_path() {
    for p in [
        "//admin",
        "/%2Fadmin",
        "/a/%2e%2e/admin",
        "/./admin",
        "/x/..;/admin",
        "/%61dmin",
        "/a/../../admin",
    ] {
        if let Ok(n) = canonicalize(p, DECODE) {
            check_path(&n);
            assert_eq!(n, "/admin", "{p}");
        }
    }
    assert!(canonicalize("/%2Fadmin", PathPolicy::default()).is_err());
}

proptest! {
    #![proptest_config(config(1000, 0x4771))]
    #[test]
    fn mutated_and_random_heads_answer_or_close(bytes in bytes_or_mutated(200, seeds(), DICT)) {
        check(&bytes);
    }

    #[test]
    fn any_path_normalizes_to_a_canonical_path(p in "[/a-z.;%25Ff2Ee\\\\?#]{0,24}") {
        for mode in [PathPolicy::default(), DECODE] {
            if let Ok(n) = canonicalize(&p, mode) {
                check_path(&n);
                prop_assert_eq!(canonicalize(&n, mode), Ok(n.clone()));
            }
        }
    }
}
