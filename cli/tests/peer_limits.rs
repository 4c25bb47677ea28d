//! Bounded cost per peer, over real processes, on a sidecar's inbound port
//! and on an east-west gateway: one mesh identity opens many mTLS
//! connections (real `openssl s_client` processes with its certificate,
//! ALPN `h2`) and trickles the start of the HTTP/2 preface, never a
//! request. Connections past `limits.max_connections_per_peer` are closed
//! right after the handshake, the admitted ones at
//! `limits.first_request_timeout`, each counted (`strait_refused_total` on
//! the sidecar, `strait_gateway_connections_refused_total` on the gateway);
//! a legitimate client of another identity (of the same cluster) keeps
//! succeeding throughout. Addresses: 127.161.4.0/24 (sidecar) and
//! 127.161.5.0/24 (gateway).

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::clusters::static_sidecar;
use support::sidecars::{CLIENT_ID, ECHO_ID, FLOOD_ID, Mesh};
use support::traffic::Load;
use support::*;

const LIMIT: usize = 8;
const FLOOD: usize = 30;
const DEADLINE: Duration = Duration::from_secs(3);

/// Kills the flood's processes on drop, even when the test fails.
struct Flood(Vec<Child>);

impl Flood {
    fn running(&mut self) -> usize {
        let mut n = 0;
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                n += 1;
            }
        }
        n
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `openssl s_client` with the flood identity's certificate and chain,
/// ALPN `h2`, stdin kept open.
fn s_client(dir: &std::path::Path, target: &str) -> Child {
    Command::new("openssl")
        .current_dir(dir)
        .args(["s_client", "-quiet", "-connect", target, "-alpn", "h2"])
        .args(["-cert", "flood/chain.pem", "-cert_chain", "flood/chain.pem"])
        .args(["-key", "flood/key.pem"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The value of the counter whose line starts with `key` (labels
/// included), 0 when absent.
fn counter(metrics: &str, key: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn sidecar_refusals(metrics: &str, reason: &str) -> u64 {
    counter(
        metrics,
        &format!("strait_refused_total{{direction=\"inbound\",reason=\"{reason}\"}}"),
    )
}

fn have_openssl() -> bool {
    let ok = Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        eprintln!("skipped: openssl is not installed (scripts/test.sh installs it)");
    }
    ok
}

/// Floods `target` from the flood identity (certificates in `dir/flood`)
/// and checks the cut: `FLOOD - LIMIT` refused at once (`refused` reads
/// that count from `metrics`), the rest at the deadline (`timed_out`).
fn flood_is_cut(
    dir: &std::path::Path,
    target: &str,
    metrics: &dyn Fn() -> String,
    refused: &dyn Fn(&str) -> u64,
    timed_out: &dyn Fn(&str) -> u64,
) {
    let mut flood = Flood(Vec::new());
    for _ in 0..FLOOD {
        let mut c = s_client(dir, target);
        // The first bytes of the preface, then silence (stdin stays open).
        let _ = c.stdin.as_mut().unwrap().write_all(b"PRI * HTTP/2.0\r\n");
        let _ = c.stdin.as_mut().unwrap().flush();
        flood.0.push(c);
        pause(20);
    }
    let spawned = Instant::now();
    // Past the limit, connections are closed right after the handshake;
    // the admitted ones stay until the deadline.
    let deadline = spawned + Duration::from_secs(10);
    while refused(&metrics()) < (FLOOD - LIMIT) as u64 {
        assert!(Instant::now() < deadline, "limit never hit:\n{}", metrics());
        pause(50);
    }
    // A refused `s_client` takes a moment to notice its closed socket and
    // exit: give the processes up to a second.
    let settle = Instant::now() + Duration::from_secs(1);
    while flood.running() > LIMIT && Instant::now() < settle {
        pause(50);
    }
    let open = flood.running();
    assert!(
        (1..=LIMIT).contains(&open),
        "{open} flood connections open before the deadline; want 1..={LIMIT}"
    );
    assert_eq!(refused(&metrics()), (FLOOD - LIMIT) as u64);
    // At the deadline the rest are cut.
    let cut_by = spawned + DEADLINE + Duration::from_secs(3);
    while flood.running() > 0 {
        assert!(
            Instant::now() < cut_by,
            "{} flood connections outlived the first-request deadline",
            flood.running()
        );
        pause(50);
    }
    let m = metrics();
    assert_eq!(timed_out(&m), LIMIT as u64, "{m}");
    eprintln!(
        "{target}: {} of {FLOOD} refused at the limit, {LIMIT} cut at the {DEADLINE:?} deadline after {:?}",
        refused(&m),
        spawned.elapsed()
    );
    // The flood's identity gets its places back: a new connection passes
    // the limit again (and is cut at the deadline in its turn).
    let again = s_client(dir, target);
    flood.0.push(again);
    pause(1000);
    assert_eq!(flood.running(), 1, "a freed place is usable again");
    assert_eq!(refused(&metrics()), (FLOOD - LIMIT) as u64);
}

#[test]
fn a_slow_preface_flood_from_one_identity_is_cut_at_its_limit_and_deadline() {
    if !have_openssl() {
        return;
    }
    let limits = format!(
        "limits: {{ first_request_timeout: {}s, max_connections_per_peer: {LIMIT} }}",
        DEADLINE.as_secs()
    );
    let mesh = Mesh::start(4, &limits);
    let target = mesh.inbound.to_string();
    flood_is_cut(
        mesh.dir.path(),
        &target,
        &|| mesh.echo_metrics(),
        &|m| sidecar_refusals(m, "peer_connection_limit"),
        &|m| sidecar_refusals(m, "first_request_timeout"),
    );
    mesh.legit_client_kept_succeeding();
}

/// The same flood at an east-west gateway (a fixed export table), while a
/// workload of the flood's own cluster tunnels through it to west's echo.
#[test]
fn a_slow_preface_flood_at_a_gateway_is_cut_at_its_limit_and_deadline() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ip = |host: u8| format!("127.161.5.{host}");
    ca(d, &["east", "west"]);
    issue(d, "west", ECHO_ID, "echo");
    issue(
        d,
        "west",
        "spiffe://strait.local/ns/strait-system/sa/gateway-west",
        "gateway",
    );
    issue(d, "east", CLIENT_ID, "client");
    issue(d, "east", FLOOD_ID, "flood");
    support::traffic::app(&format!("{}:18080", ip(5)));
    std::fs::write(
        d.join("echo.yaml"),
        format!(
            "trust_domain: strait.local\n{}\
             listeners: {{ inbound: \"{a}:15006\", outbound: \"{a}:15001\", admin: \"{a}:15000\", bind_vips: false }}\n\
             local_service: echo.demo\n\
             app: [{{ port: 8080, protocol: http1, target: \"{a}:18080\" }}]\n",
            identity_files("echo"),
            a = ip(5)
        ),
    )
    .unwrap();
    let _echo = spawn(d, &["proxy", "--config", "echo.yaml"], "echo.log");
    std::fs::write(
        d.join("gateway.yaml"),
        format!(
            "cluster: west\ntrust_domain: strait.local\n{}\
             listeners: {{ public: \"{a}:15443\", admin: \"{a}:15021\" }}\n\
             limits: {{ max_connections_per_peer: {LIMIT}, first_request_timeout: {}s }}\n",
            identity_files("gateway"),
            DEADLINE.as_secs(),
            a = ip(1)
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("exports.yaml"),
        format!(
            "services:\n  - {{ name: echo, namespace: demo, ports: [8080], endpoints: [{{ address: \"{}:15006\" }}] }}\n",
            ip(5)
        ),
    )
    .unwrap();
    let _gateway = spawn(
        d,
        &[
            "gateway",
            "--config",
            "gateway.yaml",
            "--exports",
            "exports.yaml",
        ],
        "gateway.log",
    );
    wait_for(format!("{}:15006", ip(5)).parse().unwrap());
    wait_for(format!("{}:15443", ip(1)).parse().unwrap());
    let _client = static_sidecar(
        d,
        &d.join("client"),
        &ip(6),
        "east",
        &format!("{}:15006", ip(5)),
        &format!("{}:15443", ip(1)),
    );
    let legit = Load::every(format!("{}:15001", ip(6)).parse().unwrap(), 20);
    let started = Instant::now();
    legit.recovered_after(started, Duration::from_secs(5));
    let gateway_admin = format!("{}:15021", ip(1));
    let metrics = || admin_get(&gateway_admin, "/metrics");
    let refusals = |m: &str, reason: &str| {
        counter(
            m,
            &format!("strait_gateway_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    let t = Instant::now();
    flood_is_cut(
        d,
        &format!("{}:15443", ip(1)),
        &metrics,
        &|m| refusals(m, "peer_connection_limit"),
        &|m| refusals(m, "first_request_timeout"),
    );
    let (f, n) = legit.failed(t, Instant::now());
    eprintln!("legitimate east client through the gateway meanwhile: {f} of {n} failed");
    assert!(n >= 20, "only {n} legitimate requests were sent");
    assert_eq!(f, 0, "the legitimate client failed beside the flood");
}
