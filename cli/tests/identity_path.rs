//! Identity never comes from the caller, and authorization decides on what
//! is forwarded: two real `strait proxy` processes (a client sidecar and the
//! echo service's sidecar, routing from `snapshot_file:`, certificates from
//! `strait ca`) in front of a raw TCP app that records every byte it gets.
//!
//! - Forged identity headers and trailers, in every spelling (`_` for `-`,
//!   any case), sent over HTTP/1.1 (chunked trailers) and HTTP/2 (h2c to the
//!   client sidecar, trailing HEADERS), and straight to the echo sidecar's
//!   mTLS port with `curl` (a caller without a sidecar), never reach the
//!   app; only the sidecar's `x-forwarded-client-cert` does, and legitimate
//!   trailers still pass.
//! - Path forms that canonicalize onto a denied `/admin` are denied or
//!   refused (`400`, `strait-error` naming the reason), `/ADMIN` too on a
//!   port whose policy is case-insensitive, and an allowed path reaches the
//!   app in canonical form with its query untouched.
//!
//! Each test runs a legitimate client beside it that must keep succeeding.
//! Addresses: 127.161.<test>.0/24 (fixed ports; one /24 per test).

mod support;

use support::sidecars::{CLIENT_ID, ECHO_ID, HOST, Mesh, get, http1, logs};

/// The identity stamp the echo sidecar must set, and nothing else.
fn assert_only_the_sidecar_identity(req: &str, what: &str) {
    let lower = req.to_ascii_lowercase();
    assert!(
        !lower.contains("forged"),
        "{what}: a forged value reached the app:\n{req}"
    );
    let stamps: Vec<&str> = req
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
            name.replace('_', "-") == "x-forwarded-client-cert"
        })
        .collect();
    assert_eq!(
        stamps,
        [format!("x-forwarded-client-cert: By={ECHO_ID};URI={CLIENT_ID}").as_str()],
        "{what}: the app must see exactly the sidecar's identity:\n{req}"
    );
    for claim in [
        "x-spiffe-id",
        "x_spiffe_id",
        "strait-dst",
        "strait_dst",
        "l5d_client_id",
    ] {
        assert!(
            !lower.lines().any(|l| l.starts_with(&format!("{claim}:"))),
            "{what}: {claim} reached the app:\n{req}"
        );
    }
}

/// The forged identity claims, in the spellings a CGI/WSGI/PHP/nginx app
/// reads as the same variable.
const FORGED: &[&str] = &[
    "x-forwarded-client-cert",
    "x_forwarded_client_cert",
    "X_Forwarded_Client-Cert",
    "x-spiffe-id",
    "x_spiffe_id",
    "l5d_client_id",
    "strait_dst",
];

#[test]
fn forged_identity_headers_and_trailers_never_reach_the_app_over_http1() {
    let mesh = Mesh::start(1, "");
    let forged_headers: String = FORGED
        .iter()
        .map(|h| format!("{h}: forged-header\r\n"))
        .collect();
    let forged_trailers: String = FORGED
        .iter()
        .map(|h| format!("{h}: forged-trailer\r\n"))
        .collect();
    let declared: Vec<&str> = FORGED.iter().copied().chain(["x-legit-trailer"]).collect();
    let raw = format!(
        "POST http://{HOST}:8080/forge-h1?x=1 HTTP/1.1\r\nhost: {HOST}:8080\r\n\
         transfer-encoding: chunked\r\nte: trailers\r\ntrailer: {}\r\n{forged_headers}\r\n\
         5\r\nhello\r\n0\r\n{forged_trailers}x-legit-trailer: kept\r\n\r\n",
        declared.join(", ")
    );
    let (status, head, _) = http1(mesh.proxy, &raw);
    assert_eq!(status, 200, "{head}\n{}", logs(mesh.dir.path()));
    let req = mesh.app.wait("/forge-h1");
    assert_only_the_sidecar_identity(&req, "HTTP/1.1");
    assert!(req.contains("hello"), "body lost:\n{req}");
    assert!(
        req.to_ascii_lowercase().contains("x-legit-trailer: kept"),
        "legitimate trailers must still pass:\n{req}"
    );
    // A caller without a sidecar, straight to the echo sidecar's mTLS port.
    direct_with_curl(&mesh);
    mesh.legit_client_kept_succeeding();
}

/// `curl` with the client's certificate, HTTP/2 over mTLS to the echo
/// sidecar: the forged headers are stripped there, not only by the
/// caller's sidecar.
fn direct_with_curl(mesh: &Mesh) {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped the direct mTLS check: curl is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    let d = mesh.dir.path();
    let mut cmd = std::process::Command::new("curl");
    cmd.current_dir(d).args([
        "-sS",
        "-k",
        "--http2",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cert",
        "client/chain.pem",
        "--key",
        "client/key.pem",
        "-H",
        "strait-dst: echo.demo:8080",
    ]);
    for h in FORGED
        .iter()
        .filter(|h| !h.eq_ignore_ascii_case("strait_dst"))
    {
        cmd.args(["-H", &format!("{h}: forged-direct")]);
    }
    cmd.arg(format!("https://{}/forge-direct", mesh.inbound));
    let out = cmd.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = mesh.app.wait("/forge-direct");
    assert_only_the_sidecar_identity(&req, "direct HTTP/2 over mTLS");
}

#[test]
fn forged_identity_headers_and_trailers_never_reach_the_app_over_http2() {
    use http_body_util::BodyExt;
    use hyper::body::Frame;

    let mesh = Mesh::start(2, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vip = mesh.vip;
    let (status, denied_status) = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(vip).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut trailers = http::HeaderMap::new();
        for h in FORGED {
            let name = http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).unwrap();
            trailers.append(name, http::HeaderValue::from_static("forged-trailer"));
        }
        trailers.insert("x-legit-trailer", http::HeaderValue::from_static("kept"));
        let declared = FORGED.join(", ") + ", x-legit-trailer";
        let body = Frames(
            [
                Frame::data(bytes::Bytes::from_static(b"hello")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let mut req = http::Request::post(format!("http://{HOST}:8080/forge-h2?x=1"))
            .header("te", "trailers")
            // Declared, so the echo sidecar's HTTP/1.1 leg to the app
            // would send them on if they were not stripped.
            .header("trailer", declared)
            .body(body.boxed_unsync())
            .unwrap();
        for h in FORGED {
            let name = http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).unwrap();
            req.headers_mut()
                .append(name, http::HeaderValue::from_static("forged-header"));
        }
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        // A dot-segment path onto the denied one, over HTTP/2 as well.
        let req = http::Request::get(format!("http://{HOST}:8080/x/../admin"))
            .body(Frames(Default::default()).boxed_unsync())
            .unwrap();
        let denied = send.send_request(req).await.unwrap().status().as_u16();
        (status, denied)
    });
    assert_eq!(status, 200, "{}", logs(mesh.dir.path()));
    assert_eq!(denied_status, 403);
    let req = mesh.app.wait("/forge-h2");
    assert_only_the_sidecar_identity(&req, "HTTP/2");
    assert!(
        req.to_ascii_lowercase().contains("x-legit-trailer: kept"),
        "legitimate trailers must still pass:\n{req}"
    );
    assert!(
        !mesh.app.any_line_contains("admin"),
        "a denied path reached the app"
    );
    mesh.legit_client_kept_succeeding();
}

/// A request body of fixed frames (data, then trailers).
struct Frames(std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[test]
fn paths_that_canonicalize_onto_a_denied_path_are_denied_and_the_app_gets_the_canonical_path() {
    // With the access log on, the echo sidecar logs each inbound request.
    let mesh = Mesh::start(3, "access_log: true");
    let cases: &[(u16, &str, u16, &str)] = &[
        (8080, "/admin", 403, "denied"),
        (8080, "/x/../admin", 403, "denied"),
        (8080, "//admin", 403, "denied"),
        (8080, "/%61dmin", 403, "denied"),
        (8080, "/./admin/./x", 403, "denied"),
        (8080, "/%2e%2e/admin", 403, "denied"),
        (8080, "/admin;x", 400, "path_parameter"),
        (8080, "/x/..;/admin", 400, "path_parameter"),
        (8080, "/admin%2f", 400, "path_escaped_slash"),
        (8080, "/x%2F..%2Fadmin", 400, "path_escaped_slash"),
        (8080, "/%zz/admin", 400, "path_bad_percent"),
        (8081, "/ADMIN", 403, "denied"),
        (8081, "/Admin/x", 403, "denied"),
    ];
    for (port, path, want, reason) in cases {
        let (status, head, body) = http1(mesh.proxy, &get(*port, path));
        assert_eq!(status, *want, "{port} {path}: {head}{body}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains(&format!("strait-error: {reason}")),
            "{port} {path}: want strait-error {reason}: {head}{body}"
        );
    }
    // The inbound access log names the denial, the caller and its cluster
    // (access lines reach the log within 200 ms: they are written in batches).
    let read = || std::fs::read_to_string(mesh.dir.path().join("echo.log")).unwrap_or_default();
    let denial = |l: &&str| {
        l.contains("strait::access")
            && l.contains("direction=\"inbound\"")
            && l.contains("strait_error=\"denied\"")
    };
    support::holds_within(5, || read().lines().any(|l| denial(&l)));
    let log = read();
    let line = log
        .lines()
        .find(denial)
        .unwrap_or_else(|| panic!("no inbound access line for a denial:\n{log}"));
    assert!(
        line.contains("status=403") && line.contains("source_cluster=\"east\""),
        "{line}"
    );
    assert!(
        line.contains("peer=spiffe://strait.local/ns/demo/sa/client"),
        "{line}"
    );
    // Case-sensitive port: `/ADMIN` is not `/admin`, and arrives as sent.
    // Allowed paths arrive canonical, with the query untouched.
    let allowed: &[(u16, &str, &str)] = &[
        (8080, "/ADMIN?m=a1", "GET /ADMIN?m=a1 HTTP/1.1"),
        (
            8080,
            "/a/./b/../c//d?m=a2&q=%2e%2e/x",
            "GET /a/c/d?m=a2&q=%2e%2e/x HTTP/1.1",
        ),
        (8080, "/%7euser/%41%2d?m=a3", "GET /~user/A-?m=a3 HTTP/1.1"),
        (
            8081,
            "/shop/../Cart/%3cb%3e?m=a4",
            "GET /Cart/%3Cb%3E?m=a4 HTTP/1.1",
        ),
    ];
    for (port, path, line) in allowed {
        let (status, head, body) = http1(mesh.proxy, &get(*port, path));
        assert_eq!(status, 200, "{port} {path}: {head}{body}");
        let marker = path.rsplit("m=").next().unwrap().split('&').next().unwrap();
        let req = mesh.app.wait(&format!("m={marker}"));
        assert_eq!(req.lines().next(), Some(*line), "{path}");
    }
    // Upgrade requests (their own mTLS connection, ALPN http/1.1) alike.
    let upgrade = |path: &str| {
        format!(
            "GET http://{HOST}:8080{path} HTTP/1.1\r\nhost: {HOST}:8080\r\n\
             connection: upgrade\r\nupgrade: websocket\r\n\r\n"
        )
    };
    let (status, head, _) = http1(mesh.proxy, &upgrade("/x/../admin"));
    assert_eq!(status, 403, "upgrade onto /admin: {head}");
    let (status, head, _) = http1(mesh.proxy, &upgrade("/x/..;/admin"));
    assert_eq!(status, 400, "upgrade with ';': {head}");
    let (status, head, _) = http1(mesh.proxy, &upgrade("/u/./v/../w?m=u1"));
    assert_eq!(status, 200, "upgrade, allowed: {head}");
    let req = mesh.app.wait("m=u1");
    assert_eq!(req.lines().next(), Some("GET /u/w?m=u1 HTTP/1.1"));
    assert!(
        req.to_ascii_lowercase().contains("upgrade: websocket"),
        "{req}"
    );
    let all = mesh.app.0.lock().unwrap().clone();
    for r in &all {
        let first = r.lines().next().unwrap_or_default();
        assert!(
            !["/admin", "/Admin", "61dmin", "2e/admin", ";"]
                .iter()
                .any(|p| first.contains(p)),
            "a denied path reached the app: {first}"
        );
    }
    mesh.legit_client_kept_succeeding();
}
