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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::traffic::Load;
use support::{Proc, ca, identity_files, issue, pause, spawn, wait_for};

const CLIENT_ID: &str = "spiffe://strait.local/ns/demo/sa/client";
const ECHO_ID: &str = "spiffe://strait.local/ns/demo/sa/echo";
const HOST: &str = "echo.demo.svc.clusterset.local";

/// Every request the app received, as raw text (head, body, trailers).
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<String>>>);

impl Recorded {
    /// The one recorded request whose request line contains `marker`.
    fn find(&self, marker: &str) -> Option<String> {
        let all = self.0.lock().unwrap();
        let hits: Vec<&String> = all
            .iter()
            .filter(|r| r.lines().next().is_some_and(|l| l.contains(marker)))
            .collect();
        assert!(hits.len() <= 1, "{marker} arrived {} times", hits.len());
        hits.first().map(|s| (*s).clone())
    }

    /// Waits up to 5 s for the request with `marker`.
    fn wait(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.find(marker) {
                return r;
            }
            assert!(Instant::now() < deadline, "{marker} never reached the app");
            pause(20);
        }
    }

    fn any_line_contains(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        let all = self.0.lock().unwrap();
        all.iter().any(|r| r.to_ascii_lowercase().contains(&needle))
    }
}

/// A raw HTTP/1.1 app: records each request (chunked bodies with their
/// trailer section included) and answers `200 west`, keep-alive.
fn recording_app(addr: SocketAddr) -> Recorded {
    let rec = Recorded::default();
    let listener = TcpListener::bind(addr).unwrap();
    let r2 = rec.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let rec = r2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                while let Some(text) = read_request(&mut r) {
                    rec.0.lock().unwrap().push(text);
                    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwest";
                    if w.write_all(resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rec
}

/// Reads one request as raw text; `None` at end of stream.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut text = String::new();
    let mut line = String::new();
    let (mut len, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        text.push_str(&line);
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        text.push_str(&String::from_utf8_lossy(&body));
        return Some(text);
    }
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        text.push_str(&line);
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            // The trailer section, up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                text.push_str(&line);
                if line == "\r\n" {
                    return Some(text);
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).ok()?;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The echo service's sidecar, a client sidecar, the recording app and a
/// legitimate load through the client sidecar.
struct Mesh {
    dir: tempfile::TempDir,
    /// The client sidecar's explicit proxy port.
    proxy: SocketAddr,
    /// The client sidecar's VIP listener of echo port 8080.
    vip: SocketAddr,
    /// The echo sidecar's mTLS port.
    inbound: SocketAddr,
    app: Recorded,
    load: Load,
    started: Instant,
    _procs: Vec<Proc>,
}

/// `authorization:` of echo: `/admin` denied to everyone on both ports;
/// port 8081 matches paths case-insensitively.
const POLICIES: &str = "
    authorization:
      - name: no-admin
        ports: [8080]
        deny: [{ paths: [/admin] }]
      - name: no-admin-any-case
        ports: [8081]
        deny: [{ paths: [/admin] }]
        path: { case_insensitive: true }
";

impl Mesh {
    fn start(net: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, &["east"]);
        issue(d, "east", ECHO_ID, "echo");
        issue(d, "east", CLIENT_ID, "client");
        let ip = |host: u8| format!("127.161.{net}.{host}");
        let app_addr: SocketAddr = format!("{}:18080", ip(5)).parse().unwrap();
        let app = recording_app(app_addr);
        // Each sidecar binds the VIPs of its snapshot: one VIP each.
        for (file, vip) in [("echo-snap.yaml", ip(11)), ("client-snap.yaml", ip(10))] {
            std::fs::write(d.join(file), snapshot(&vip, &ip(5))).unwrap();
        }
        let sidecar = |name: &str, host: u8, extra: &str| {
            let mut y = format!(
                "trust_domain: strait.local\n{}\
                 listeners: {{ inbound: \"{a}:15006\", outbound: \"{a}:15001\", admin: \"{a}:15000\" }}\n\
                 snapshot_file: {name}-snap.yaml\n{extra}",
                identity_files(name),
                a = ip(host),
            );
            y.push('\n');
            std::fs::write(d.join(format!("{name}.yaml")), y).unwrap();
            spawn(
                d,
                &[
                    "--log",
                    "info",
                    "proxy",
                    "--config",
                    &format!("{name}.yaml"),
                ],
                &format!("{name}.log"),
            )
        };
        let apps = format!(
            "local_service: echo.demo\napp: [{{ port: 8080, protocol: http1, target: \"{app_addr}\" }}, \
             {{ port: 8081, protocol: http1, target: \"{app_addr}\" }}]"
        );
        let procs = vec![sidecar("echo", 5, &apps), sidecar("client", 6, "")];
        let inbound: SocketAddr = format!("{}:15006", ip(5)).parse().unwrap();
        let proxy: SocketAddr = format!("{}:15001", ip(6)).parse().unwrap();
        let vip: SocketAddr = format!("{}:8080", ip(10)).parse().unwrap();
        wait_for(inbound);
        wait_for(proxy);
        wait_for(vip);
        // Ready when a request goes all the way through.
        let deadline = Instant::now() + Duration::from_secs(20);
        while http1(proxy, &get(8080, "/ready")).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "mesh never got ready\n{}",
                logs(d)
            );
            pause(100);
        }
        let load = Load::start(proxy);
        Self {
            dir,
            proxy,
            vip,
            inbound,
            app,
            load,
            started: Instant::now(),
            _procs: procs,
        }
    }

    /// The legitimate client never failed, and ran long enough to count.
    fn legit_client_kept_succeeding(&self) {
        let min = self.started + Duration::from_millis(800);
        while Instant::now() < min {
            pause(50);
        }
        self.load
            .no_failures_since(self.started, "legitimate client beside the attack");
    }
}

fn snapshot(vip: &str, echo_ip: &str) -> String {
    format!(
        "version: 1\n\
         local: {{ cluster: east, locality: us-east/us-east-1a }}\n\
         services:\n\
         \x20 - name: echo\n\
         \x20   namespace: demo\n\
         \x20   vip: {vip}\n\
         \x20   ports: [{{ port: 8080, protocol: http1 }}, {{ port: 8081, protocol: http1 }}]\n\
         \x20   endpoints:\n\
         \x20     - {{ address: \"{echo_ip}:15006\", cluster: east, locality: us-east/us-east-1a, identity: \"{ECHO_ID}\" }}\n\
         {POLICIES}"
    )
}

fn logs(d: &Path) -> String {
    ["echo.log", "client.log"]
        .iter()
        .map(|f| std::fs::read_to_string(d.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An explicit-proxy GET of `path` on echo's `port`.
fn get(port: u16, path: &str) -> String {
    format!("GET http://{HOST}:{port}{path} HTTP/1.1\r\nhost: {HOST}:{port}\r\n\r\n")
}

/// Sends one raw request on a new connection: (status, head, body).
fn http1(addr: SocketAddr, raw: &str) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(raw.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut r = BufReader::new(s);
    let (mut head, mut line, mut len) = (String::new(), String::new(), 0usize);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return (0, head, String::new()),
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

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
    let mesh = Mesh::start(1);
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

    let mesh = Mesh::start(2);
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
        let body = Frames(
            [
                Frame::data(bytes::Bytes::from_static(b"hello")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let mut req = http::Request::post(format!("http://{HOST}:8080/forge-h2?x=1"))
            .header("te", "trailers")
            .header("trailer", "x-legit-trailer")
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
    let mesh = Mesh::start(3);
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
