//! Bounded cost per peer on a sidecar's inbound port, over real processes:
//! one mesh identity opens many mTLS connections (real `openssl s_client`
//! processes with its certificate, ALPN `h2`) and trickles the start of the
//! HTTP/2 preface, never a request. Connections past
//! `limits.max_connections_per_peer` are closed right after the handshake,
//! the admitted ones at `limits.first_request_timeout`, each counted in
//! `strait_refused_total`; a legitimate client of another identity keeps
//! succeeding throughout. Addresses: 127.161.4.0/24.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::pause;
use support::sidecars::Mesh;

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

fn counter(metrics: &str, reason: &str) -> u64 {
    let key = format!("strait_refused_total{{direction=\"inbound\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_preface_flood_from_one_identity_is_cut_at_its_limit_and_deadline() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed (scripts/test.sh installs it)");
        return;
    }
    let limits = format!(
        "limits: {{ first_request_timeout: {}s, max_connections_per_peer: {LIMIT} }}",
        DEADLINE.as_secs()
    );
    let mesh = Mesh::start(4, &limits);
    let d = mesh.dir.path();
    let target = mesh.inbound.to_string();
    let mut flood = Flood(Vec::new());
    for _ in 0..FLOOD {
        let mut c = s_client(d, &target);
        // The first bytes of the preface, then silence (stdin stays open).
        let _ = c.stdin.as_mut().unwrap().write_all(b"PRI * HTTP/2.0\r\n");
        let _ = c.stdin.as_mut().unwrap().flush();
        flood.0.push(c);
        pause(20);
    }
    let spawned = Instant::now();
    // Past the limit, connections are closed right after the handshake;
    // the admitted ones stay until the deadline.
    let refused = |m: &str| counter(m, "peer_connection_limit");
    let deadline = spawned + Duration::from_secs(10);
    while refused(&mesh.echo_metrics()) < (FLOOD - LIMIT) as u64 {
        assert!(
            Instant::now() < deadline,
            "limit never hit:\n{}",
            mesh.echo_metrics()
        );
        pause(50);
    }
    let open = flood.running();
    assert!(
        (1..=LIMIT).contains(&open),
        "{open} flood connections open before the deadline; want 1..={LIMIT}"
    );
    assert_eq!(refused(&mesh.echo_metrics()), (FLOOD - LIMIT) as u64);
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
    let m = mesh.echo_metrics();
    assert_eq!(counter(&m, "first_request_timeout"), LIMIT as u64, "{m}");
    // The flood's identity gets its places back: a new connection passes
    // the limit again (and is cut at the deadline in its turn).
    let again = s_client(d, &target);
    flood.0.push(again);
    pause(1000);
    assert_eq!(flood.running(), 1, "a freed place is usable again");
    assert_eq!(refused(&mesh.echo_metrics()), (FLOOD - LIMIT) as u64);
    mesh.legit_client_kept_succeeding();
}
