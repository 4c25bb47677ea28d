//! Transparent capture end to end, as root, in network namespaces this
//! test creates: a "client pod" and a "server host" joined by a veth pair
//! (10.231.0.1 and 10.231.0.2, fd00:231::1 and fd00:231::2). `strait proxy
//! capture install --netns` writes the rules in the pod; an unmodified
//! `curl` there, run as another uid than the sidecar, dials the service by
//! name (`--resolve` to its VIP), by an endpoint's IPv4 and IPv6 address,
//! and an address outside the mesh; the pod's sidecar (`capture: {
//! outbound: "[::]:15002" }`, dual-stack, no VIP listeners) carries the
//! mesh ones over mTLS to the server's sidecar, which puts the caller's
//! identity in front of the app, and passes the last through as plain TCP.
//! The rule's counter proves the sidecar's own connections were not
//! redirected (no loop). Inbound capture on the server host closes the app
//! port to plaintext. Skips, saying why, without root, `ip`, `nft`, `curl`,
//! `python3` or `setpriv`. Everything it creates is removed on drop (also
//! on panic) and checked gone at the end.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::root::{must, run};
use support::{Proc, identity_files, issue, ok, pause};

const CLIENT_IP: &str = "10.231.0.1";
const SERVER_IP: &str = "10.231.0.2";
const CLIENT_IP6: &str = "fd00:231::1";
const SERVER_IP6: &str = "fd00:231::2";
const VIP: &str = "127.77.0.10";
const CLIENT_ID: &str = "spiffe://strait.local/ns/default/sa/client";
const NOBODY: &str = "65534";

/// Why this machine cannot run the test, if it cannot.
fn missing_tools() -> Option<String> {
    support::root::missing(&[
        ("ip", "-V"),
        ("nft", "--version"),
        ("curl", "--version"),
        ("python3", "--version"),
        ("setpriv", "--version"),
    ])
}

/// Two namespaces and the veth pair between them, named with this
/// process's id; deleted on drop (the pair goes with its namespaces).
struct Lab {
    prefix: String,
    client: String,
    server: String,
}

impl Lab {
    fn new() -> Self {
        let prefix = format!("stc-{}", std::process::id());
        let lab = Self {
            client: format!("{prefix}-c"),
            server: format!("{prefix}-s"),
            prefix,
        };
        let (c, s) = (lab.client.as_str(), lab.server.as_str());
        let (va, vb) = (format!("{}a", lab.prefix), format!("{}b", lab.prefix));
        must("ip", &["netns", "add", c]);
        must("ip", &["netns", "add", s]);
        must(
            "ip",
            &[
                "link", "add", &va, "netns", c, "type", "veth", "peer", "name", &vb, "netns", s,
            ],
        );
        for (ns, dev, ip, ip6) in [
            (c, &va, CLIENT_IP, CLIENT_IP6),
            (s, &vb, SERVER_IP, SERVER_IP6),
        ] {
            let ip6 = format!("{ip6}/64");
            must("ip", &["-n", ns, "addr", "add", &ip6, "dev", dev, "nodad"]);
            must(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Output of `args` run in namespace `ns`.
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Starts `args` in namespace `ns` in the background, its stderr to
    /// `dir/log`; killed on drop.
    fn spawn(&self, ns: &str, dir: &Path, args: &[&str], log: &str) -> Proc {
        let err = std::fs::File::create(dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .current_dir(dir)
            .env_remove("STRAIT_LOG")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// `curl` in the client pod as uid 65534 (not the sidecar's uid, so
    /// captured): the response body, or the failure.
    fn curl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec![
            "setpriv",
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "10",
        ];
        all.extend_from_slice(args);
        let out = self.exec(&self.client, &all);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(body)
        } else {
            Err(format!(
                "{} {body}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Waits until something in `ns` answers HTTP at `url`.
    fn wait_http(&self, ns: &str, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.exec(
                ns,
                &["curl", "-s", "-o", "/dev/null", "--max-time", "1", url],
            );
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "nothing answers {url} in {ns}");
            pause(100);
        }
    }

    /// Packets the outbound redirect rule has counted (one per captured
    /// connection: a nat chain sees only a connection's first packet).
    fn redirected(&self) -> u64 {
        self.counted(&self.client, "outbound")
    }

    /// Packets the redirect rule of `chain` in `ns` has counted.
    fn counted(&self, ns: &str, chain: &str) -> u64 {
        let out = self.exec(ns, &["nft", "list", "chain", "inet", "strait", chain]);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("redirect to :"))
            .unwrap_or_else(|| panic!("no redirect rule in\n{text}"));
        let n = line
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1);
        n.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {line:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Namespaces and host links named with `prefix` that still exist.
fn leftovers(prefix: &str) -> Vec<String> {
    let netns = must("ip", &["netns", "list"]);
    let links = must("ip", &["-o", "link", "show"]);
    netns
        .lines()
        .chain(links.lines())
        .filter(|l| l.contains(prefix))
        .map(str::to_owned)
        .collect()
}

const APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

fn snapshot() -> String {
    format!(
        "version: 1\nlocal: {{ cluster: east }}\nservices:\n  - name: echo\n    namespace: default\n    vip: {VIP}\n    ports: [{{ port: 8080, protocol: http1 }}]\n    endpoints:\n      - {{ address: \"{SERVER_IP}:15006\", cluster: east, identity: \"spiffe://strait.local/ns/default/sa/echo\" }}\n      - {{ address: \"[{SERVER_IP6}]:15006\", cluster: east, identity: \"spiffe://strait.local/ns/default/sa/echo\" }}\n"
    )
}

#[test]
fn unmodified_curl_in_a_pod_reaches_a_service_through_capture_and_mtls() {
    if let Some(why) = missing_tools() {
        eprintln!(
            "SKIP unmodified_curl_in_a_pod_reaches_a_service_through_capture_and_mtls: {why}"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let lab = Lab::new();
    let prefix = lab.prefix.clone();
    let (c, s) = (lab.client.clone(), lab.server.clone());
    let strait = env!("CARGO_BIN_EXE_strait");

    support::ca(d, &["east"]);
    issue(d, "east", CLIENT_ID, "client");
    issue(
        d,
        "east",
        "spiffe://strait.local/ns/default/sa/echo",
        "echo",
    );
    std::fs::write(d.join("snap.yaml"), snapshot()).unwrap();
    std::fs::write(d.join("app.py"), APP).unwrap();
    std::fs::write(
        d.join("server.yaml"),
        format!(
            "trust_domain: strait.local\n{}listeners: {{ inbound: \"[::]:15006\", outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000, bind_vips: false }}\nlocal_service: echo.default\napp: [{{ port: 8080, protocol: http1, target: 127.0.0.1:8080 }}]\nsnapshot_file: snap.yaml\n",
            identity_files("echo")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("client.yaml"),
        format!(
            "trust_domain: strait.local\n{}listeners: {{ inbound: 127.0.0.1:15006, outbound: 127.0.0.1:15001, admin: 127.0.0.1:15000, bind_vips: false }}\ncapture: {{ outbound: \"[::]:15002\" }}\nsnapshot_file: snap.yaml\n",
            identity_files("client")
        ),
    )
    .unwrap();

    // Server host: the app (on all its addresses, as pods' apps listen), a
    // plain web server outside the mesh, the sidecar.
    let _app = lab.spawn(&s, d, &["python3", "app.py"], "app.log");
    let _plain = lab.spawn(
        &s,
        d,
        &["python3", "-m", "http.server", "8081", "--bind", SERVER_IP],
        "plain.log",
    );
    let _server = lab.spawn(
        &s,
        d,
        &[strait, "proxy", "--config", "server.yaml"],
        "server.log",
    );
    // Client pod: its sidecar (as root, uid 0), then the rules.
    let _client = lab.spawn(
        &c,
        d,
        &[strait, "proxy", "--config", "client.yaml"],
        "client.log",
    );
    lab.wait_http(&s, "http://127.0.0.1:8080/");
    lab.wait_http(&s, &format!("http://{SERVER_IP}:8081/"));
    lab.wait_http(&s, "http://127.0.0.1:15000/live");
    lab.wait_http(&c, "http://127.0.0.1:15000/live");

    // Before capture, nothing in the pod listens on the VIP.
    let name = "echo.default.svc.cluster.local";
    let resolve = format!("{name}:8080:{VIP}");
    let by_name = format!("http://{name}:8080/by-name");
    assert!(lab.curl(&["--resolve", &resolve, &by_name]).is_err());

    let install = [
        "proxy",
        "capture",
        "install",
        "--netns",
        &c,
        "--proxy-uid",
        "0",
        "--outbound-port",
        "15002",
    ];
    let said = ok(d, &install);
    assert!(
        said.contains(&format!("capture installed in netns {c}")),
        "{said}"
    );
    // Idempotent: a second install leaves the same ruleset.
    let ruleset =
        || String::from_utf8_lossy(&lab.exec(&c, &["nft", "list", "ruleset"]).stdout).into_owned();
    let first = ruleset();
    ok(d, &install);
    assert_eq!(ruleset(), first);
    assert_eq!(lab.redirected(), 0);

    // By name (resolved to the VIP): through capture and mTLS; the app
    // sees the pod's identity, set by the server's sidecar.
    let body = lab.curl(&["--resolve", &resolve, &by_name]).unwrap();
    assert!(
        body.contains("x-forwarded-client-cert") && body.contains(CLIENT_ID),
        "{body}"
    );
    // By the endpoint's address and the service port: the same service.
    let body = lab
        .curl(&[&format!("http://{SERVER_IP}:8080/by-endpoint")])
        .unwrap();
    assert!(body.contains(CLIENT_ID), "{body}");
    // Outside the mesh: passed through as plain TCP (no identity added).
    let body = lab.curl(&[&format!("http://{SERVER_IP}:8081/")]).unwrap();
    assert!(body.contains("Directory listing"), "{body}");
    // Three connections captured, not one more: the sidecar's own mTLS
    // and passthrough connections (uid 0) were not redirected back to it.
    assert_eq!(lab.redirected(), 3);
    // IPv6 (IP6T_SO_ORIGINAL_DST): by the endpoint's IPv6 address. The
    // IPv4 connections above reached the same dual-stack listener as
    // IPv4-mapped addresses (SO_ORIGINAL_DST on an IPv6 socket).
    let body = lab
        .curl(&["-g", &format!("http://[{SERVER_IP6}]:8080/by-endpoint-v6")])
        .unwrap();
    assert!(body.contains(CLIENT_ID), "{body}");
    assert_eq!(lab.redirected(), 4);
    inbound_capture_makes_the_app_port_mtls_only(&lab, d, &resolve, &by_name);
    assert_eq!(lab.redirected(), 5);

    // Straight at the capture port: not redirected (127.0.0.1), and the
    // sidecar refuses it as a loop at once instead of dialing itself.
    let started = Instant::now();
    let e = lab.curl(&["http://127.0.0.1:15002/"]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    assert_eq!(lab.redirected(), 5);
    let metrics = String::from_utf8_lossy(
        &lab.exec(&c, &["curl", "-s", "http://127.0.0.1:15000/metrics"])
            .stdout,
    )
    .into_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"capture_loop\"") && l.ends_with(" 1")),
        "{metrics}"
    );

    // Removed: nothing of Strait is left in the pod, and the VIP is
    // unreachable again (capture was what carried it).
    let said = ok(d, &["proxy", "capture", "remove", "--netns", &c]);
    assert!(said.contains("capture removed"), "{said}");
    assert_eq!(ruleset().trim(), "");
    assert!(lab.curl(&["--resolve", &resolve, &by_name]).is_err());
    ok(d, &["proxy", "capture", "remove", "--netns", &c]);

    drop((_client, _server, _plain, _app));
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

/// On the server host, `--app-ports 8080` sends TCP for the app's port to
/// the sidecar's mTLS inbound port: a plain client (root in the pod, so not
/// captured there) no longer reaches the app around the mesh, while the
/// mesh (which dials the sidecar's port, not the app's) still does.
fn inbound_capture_makes_the_app_port_mtls_only(lab: &Lab, d: &Path, resolve: &str, by_name: &str) {
    let s = lab.server.as_str();
    let plain = |path: &str| {
        lab.exec(
            &lab.client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{SERVER_IP}:8080/{path}"),
            ],
        )
    };
    let around = plain("around");
    assert!(around.status.success(), "{around:?}");
    assert!(!String::from_utf8_lossy(&around.stdout).contains("x-forwarded-client-cert"));
    let said = ok(
        d,
        &[
            "proxy",
            "capture",
            "install",
            "--netns",
            s,
            "--proxy-uid",
            "0",
            "--app-ports",
            "8080",
            "--inbound-port",
            "15006",
        ],
    );
    assert!(
        said.contains("inbound TCP to app ports [8080] -> :15006"),
        "{said}"
    );
    let refused = plain("around-again");
    assert!(
        !refused.status.success(),
        "plaintext still reached the app: {refused:?}"
    );
    assert_eq!(lab.counted(s, "inbound"), 1);
    let body = lab.curl(&["--resolve", resolve, by_name]).unwrap();
    assert!(body.contains(CLIENT_ID), "{body}");
    assert_eq!(lab.counted(s, "inbound"), 1);
    ok(d, &["proxy", "capture", "remove", "--netns", s]);
    assert!(plain("around-after").status.success());
}

/// Without root: the verbs, their help and their errors.
#[test]
fn capture_verbs_print_rules_and_name_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let help = ok(d, &["proxy", "--help"]);
    assert!(
        help.contains("strait proxy --config sidecar.yaml"),
        "{help}"
    );
    assert!(
        help.contains("capture: { outbound: 127.0.0.1:15002"),
        "{help}"
    );
    let help = ok(d, &["proxy", "capture", "install", "--help"]);
    assert!(
        help.contains("strait proxy capture install --netns pod1 --proxy-uid 1337"),
        "{help}"
    );

    let rules = ok(
        d,
        &[
            "proxy",
            "capture",
            "install",
            "--proxy-mark",
            "0x539",
            "--app-ports",
            "8080,9090",
            "--exclude-ports",
            "22",
            "--exclude-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--dry-run",
        ],
    );
    for want in [
        "table inet strait {",
        "meta mark 0x539 return",
        "tcp dport { 22 } return",
        "ip daddr { 10.96.0.0/12 } return",
        "ip6 daddr { fd00::/8 } return",
        "meta l4proto tcp counter redirect to :15002",
        "tcp dport { 8080, 9090 } counter redirect to :15006",
    ] {
        assert!(rules.contains(want), "missing {want:?}:\n{rules}");
    }
    let removal = ok(d, &["proxy", "capture", "remove", "--dry-run"]);
    assert_eq!(removal, "table inet strait\ndelete table inet strait\n");

    for (args, want) in [
        (
            &["--proxy-uid", "1", "--exclude-cidrs", "10.0.0.0/33"][..],
            "--exclude-cidrs: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            &["--proxy-uid", "1", "--inbound-port", "15006"][..],
            "--inbound-port needs --app-ports",
        ),
        (
            &["--proxy-uid", "1", "--app-ports", "15006"][..],
            "15006 is also the inbound port",
        ),
        (
            &["--proxy-uid", "1", "--outbound-port", "0"][..],
            "--outbound-port: port 0",
        ),
    ] {
        let mut all = vec!["proxy", "capture", "install", "--dry-run"];
        all.extend_from_slice(args);
        let err = support::fails(d, &all);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Neither uid nor mark: the sidecar's own traffic would loop.
    let out = support::strait(d, &["proxy", "capture", "install", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--proxy-uid"),
        "{err}"
    );
    let out = support::strait(
        d,
        &[
            "proxy",
            "capture",
            "install",
            "--proxy-mark",
            "0",
            "--dry-run",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("0 is no mark"),
        "{err}"
    );
}
