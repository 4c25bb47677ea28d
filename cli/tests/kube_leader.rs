//! Two `strait controller` replicas with leader election on a Lease of
//! the fake API server (`strait-k8s-fake`): the standby, the takeover
//! after the leader is killed, the handover on SIGTERM, and a proxy that
//! keeps its config meanwhile. Addresses: 127.178.0.0/16 only.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_k8s_fake::FakeApi;
use support::kubeapi::*;
use support::*;

/// A controller replica of east with leader election on a 4 s lease.
fn replica_config(name: &str, ip: &str) -> String {
    format!(
        "cluster: east\nregion: us-east\nzone: us-east-1a\ntrust_domain: strait.local\n\
         state_dir: state/{name}\nlisten: {ip}:8610\nadmin_listen: {ip}:8611\n\
         default_health_check: false\n{}\
         catalog:\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespaces: [shop]\n\
         \x20   leader_election: {{ namespace: strait-system, lease: 4s, identity: {name} }}\n",
        identity_files("east-ctl")
    )
}

/// `(status code, body)` of `GET path` on an admin port.
fn admin_code(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

fn holder(api: &FakeApi) -> (String, i64) {
    let lease = api
        .get(
            "coordination.k8s.io/leases",
            "strait-system",
            "strait-controller",
        )
        .unwrap_or_default();
    (
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
    )
}

#[test]
fn the_standby_controller_takes_over_within_the_lease_and_the_proxy_keeps_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    let api = Api::start(dir, "127.178.5.2");
    for doc in serde_yaml_ng::Deserializer::from_str(APP) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        api.api.apply(v);
    }
    std::fs::write(dir.join("east.yaml"), east_config(dir)).unwrap();
    let (a, b) = ("127.178.5.10", "127.178.5.11");
    std::fs::write(dir.join("a.yaml"), replica_config("ctl-a", a)).unwrap();
    std::fs::write(dir.join("b.yaml"), replica_config("ctl-b", b)).unwrap();
    let check = ok(dir, &["controller", "--config", "a.yaml", "--check"]);
    assert!(
        check.contains("leader election on lease strait-system/strait-controller (4s) as ctl-a"),
        "{check}"
    );
    let (a_admin, b_admin) = (format!("{a}:8611"), format!("{b}:8611"));

    let mut ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a.log");
    wait_until("ctl-a leads and is ready", 20, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let ctl_b = spawn(dir, &["controller", "--config", "b.yaml"], "ctl-b.log");
    wait_until("ctl-b stands by", 20, || {
        let (code, body) = admin_code(&b_admin, "/ready");
        (code != 503 || !body.contains("the leader is ctl-a")).then(|| format!("{code} {body}"))
    });
    assert_eq!(admin_code(&b_admin, "/live").0, 200, "the standby is alive");
    assert_eq!(
        admin_code(&b_admin, "/status").0,
        503,
        "the standby serves no status"
    );
    assert_eq!(holder(&api.api).0, "ctl-a");
    // The standby watches nothing: every catalog request so far is ctl-a's
    // one set of watches (one list of services).
    assert_eq!(api.api.lists("/services"), 1, "{:#?}", api.api.requests());

    // A proxy following the leader.
    issue(
        dir,
        "east",
        "spiffe://strait.local/ns/shop/sa/client",
        "client",
    );
    let home = dir.join("client");
    std::fs::write(
        home.join("sidecar.yaml"),
        format!(
            "trust_domain: strait.local\n{}\
             listeners: {{ inbound: \"127.178.5.20:15006\", outbound: \"127.178.5.20:15001\", admin: \"127.178.5.20:15000\", bind_vips: false }}\n\
             controller: {{ address: \"{a}:8610\", cluster: east, locality: us-east/us-east-1a }}\n",
            identity_files(&home.display().to_string())
        ),
    )
    .unwrap();
    let sidecar_cfg = home.join("sidecar.yaml").display().to_string();
    let _proxy = spawn(
        dir,
        &["proxy", "--config", &sidecar_cfg],
        "client-proxy.log",
    );
    let has_web = || admin_get("127.178.5.20:15000", "/config").contains("127.178.2.5");
    wait_until("the proxy has web's endpoint", 20, || {
        (!has_web()).then(String::new)
    });

    // Kill the leader: ctl-b leads within the lease (4 s) plus one retry
    // period (4/3 s) and a catalog sync.
    let killed = Instant::now();
    ctl_a.kill9();
    wait_until("ctl-b takes over", 15, || {
        assert!(
            has_web(),
            "the proxy kept its config while no controller led"
        );
        let (code, body) = admin_code(&b_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let took = killed.elapsed();
    eprintln!("ctl-b took over {took:?} after ctl-a was killed");
    assert!(
        took < Duration::from_millis(4000 + 1334 + 1500),
        "took {took:?}"
    );
    assert_eq!(holder(&api.api), ("ctl-b".to_owned(), 1));
    let s = status(dir, &b_admin);
    assert_eq!(web_endpoints(&s, "east").len(), 1, "{s:#}");
    assert!(has_web(), "the proxy kept its config");

    // SIGTERM hands the lease back: a restarted ctl-a leads at once.
    let _ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a-2.log");
    wait_until("ctl-a stands by", 20, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 503).then(|| format!("{code} {body}"))
    });
    let termed = Instant::now();
    let ok_kill = Command::new("kill")
        .args(["-TERM", &ctl_b.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok_kill.success());
    wait_until("ctl-a leads after ctl-b released the lease", 10, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let took = termed.elapsed();
    eprintln!("ctl-a led {took:?} after ctl-b's SIGTERM");
    assert!(
        took < Duration::from_secs(4),
        "released, not expired: {took:?}"
    );
    assert_eq!(holder(&api.api).0, "ctl-a");
}
