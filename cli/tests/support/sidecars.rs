//! Two real `strait proxy` processes in front of a recording app: the
//! echo service's sidecar and a client sidecar (routing from
//! `snapshot_file:`, certificates from `strait ca`), a raw TCP app that
//! records every byte it receives, and a legitimate load through the
//! client sidecar. Addresses: 127.161.<net>.0/24, one /24 per test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::traffic::Load;
use super::{Proc, ca, identity_files, issue, pause, spawn, wait_for};

pub const CLIENT_ID: &str = "spiffe://strait.local/ns/demo/sa/client";
pub const ECHO_ID: &str = "spiffe://strait.local/ns/demo/sa/echo";
/// An identity for attacks, apart from the legitimate client's.
pub const FLOOD_ID: &str = "spiffe://strait.local/ns/demo/sa/flood";
pub const HOST: &str = "echo.demo.svc.clusterset.local";

/// Every request the app received, as raw text (head, body, trailers).
#[derive(Clone, Default)]
pub struct Recorded(pub Arc<Mutex<Vec<String>>>);

impl Recorded {
    /// The one recorded request whose request line contains `marker`.
    pub fn find(&self, marker: &str) -> Option<String> {
        let all = self.0.lock().unwrap();
        let hits: Vec<&String> = all
            .iter()
            .filter(|r| r.lines().next().is_some_and(|l| l.contains(marker)))
            .collect();
        assert!(hits.len() <= 1, "{marker} arrived {} times", hits.len());
        hits.first().map(|s| (*s).clone())
    }

    /// Waits up to 5 s for the request with `marker`.
    pub fn wait(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.find(marker) {
                return r;
            }
            assert!(Instant::now() < deadline, "{marker} never reached the app");
            pause(20);
        }
    }

    pub fn any_line_contains(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        let all = self.0.lock().unwrap();
        all.iter().any(|r| r.to_ascii_lowercase().contains(&needle))
    }
}

/// A raw HTTP/1.1 app: records each request (chunked bodies with their
/// trailer section included) and answers `200 west`, keep-alive.
pub fn recording_app(addr: SocketAddr) -> Recorded {
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
pub struct Mesh {
    pub dir: tempfile::TempDir,
    /// The client sidecar's explicit proxy port.
    pub proxy: SocketAddr,
    /// The client sidecar's VIP listener of echo port 8080.
    pub vip: SocketAddr,
    /// The echo sidecar's mTLS port.
    pub inbound: SocketAddr,
    /// The echo sidecar's admin port.
    pub admin: SocketAddr,
    pub app: Recorded,
    pub load: Load,
    pub started: Instant,
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
    /// `echo_limits`: a `limits:` line for the echo sidecar (or empty).
    pub fn start(net: u8, echo_limits: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, &["east"]);
        issue(d, "east", ECHO_ID, "echo");
        issue(d, "east", CLIENT_ID, "client");
        issue(d, "east", FLOOD_ID, "flood");
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
             {{ port: 8081, protocol: http1, target: \"{app_addr}\" }}]\n{echo_limits}"
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
            admin: format!("{}:15000", ip(5)).parse().unwrap(),
            app,
            load,
            started: Instant::now(),
            _procs: procs,
        }
    }

    /// The legitimate client never failed, and ran long enough to count.
    pub fn legit_client_kept_succeeding(&self) {
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

pub fn logs(d: &Path) -> String {
    ["echo.log", "client.log"]
        .iter()
        .map(|f| std::fs::read_to_string(d.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Mesh {
    /// The echo sidecar's Prometheus text.
    pub fn echo_metrics(&self) -> String {
        let raw = format!("GET /metrics HTTP/1.1\r\nhost: {}\r\n\r\n", self.admin);
        http1(self.admin, &raw).2
    }
}

/// An explicit-proxy GET of `path` on echo's `port`.
pub fn get(port: u16, path: &str) -> String {
    format!("GET http://{HOST}:{port}{path} HTTP/1.1\r\nhost: {HOST}:{port}\r\n\r\n")
}

/// Sends one raw request on a new connection: (status, head, body).
pub fn http1(addr: SocketAddr, raw: &str) -> (u16, String, String) {
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
