//! The fault suite: `kill -9` of every component of a two-cluster mesh of
//! real `strait` processes, under load, then a restart. What must hold:
//! nothing the operator set up is lost (links, exports, certificates, the
//! CA), traffic that does not need the dead part keeps flowing, and traffic
//! that does recovers within the times `docs/operations.md` documents.
//!
//! east: controller, DNS, client sidecar (load enters at its proxy port).
//! west: controller, gateway, the echo workload's sidecar, the app.
//! Addresses: 127.151.1.x (east), 127.151.2.x (west).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use support::traffic::{Load, app};
use support::*;

/// Recovery budget after a restart of a component on the request path
/// (docs/operations.md, "Crash recovery").
const RECOVERY: Duration = Duration::from_secs(5);

/// A DNS A query for `name` over UDP; true when the answer has records.
fn dns_answers(server: SocketAddr, name: &str) -> bool {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    sock.send_to(&q, server).is_ok()
        && sock
            .recv(&mut buf)
            .is_ok_and(|n| n > 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0)
}

fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        pause(100);
    }
    started.elapsed()
}

fn status(dir: &Path, admin: &str) -> serde_json::Value {
    let out = strait(dir, &["-o", "json", "status", "--controller", admin]);
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map_or(serde_json::Value::Null, |v| v[0].clone())
}

fn linked_to(s: &serde_json::Value, peer: &str) -> bool {
    s["links"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x["peer"] == peer))
}

fn has_echo_from(s: &serde_json::Value, cluster: &str) -> bool {
    s["services"].as_array().is_some_and(|svcs| {
        svcs.iter().any(|x| {
            x["name"] == "echo"
                && x["clusters"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["cluster"] == cluster))
        })
    })
}

fn exported(s: &serde_json::Value) -> bool {
    s["services"].as_array().is_some_and(|svcs| {
        svcs.iter()
            .any(|x| x["name"] == "echo" && x["export"].to_string().contains("all"))
    })
}

/// Bytes of every file under `dir`, to prove nothing changed.
fn snapshot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn controller_yaml(name: &str, net: u8, region: &str) -> String {
    format!(
        "cluster: {name}\nregion: {region}\nzone: {region}-1a\ntrust_domain: strait.local\n\
         state_dir: state/{name}\nlisten: 127.151.{net}.1:8610\nadmin_listen: 127.151.{net}.1:8611\n\
         gateways: [\"127.151.{net}.10:15443\"]\n{}",
        identity_files(&format!("{name}-ctl"))
    )
}

#[test]
fn kill_9_of_each_component_loses_nothing_and_traffic_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, &["east", "west"]);
    let td = "spiffe://strait.local";
    for (c, net, region) in [("east", 1, "us-east"), ("west", 2, "us-west")] {
        issue(
            d,
            c,
            &format!("{td}/ns/strait-system/sa/controller-{c}"),
            &format!("{c}-ctl"),
        );
        std::fs::write(d.join(format!("{c}.yaml")), controller_yaml(c, net, region)).unwrap();
    }
    issue(
        d,
        "west",
        &format!("{td}/ns/strait-system/sa/gateway-west"),
        "gw",
    );
    issue(d, "west", &format!("{td}/ns/demo/sa/echo"), "echo");
    issue(d, "east", &format!("{td}/ns/demo/sa/client"), "client");
    issue(d, "east", &format!("{td}/ns/strait-system/sa/dns"), "dns");
    let (east_admin, west_admin) = ("127.151.1.1:8611", "127.151.2.1:8611");
    std::fs::write(
        d.join("gw.yaml"),
        format!(
            "cluster: west\ntrust_domain: strait.local\ncontroller: {{ address: \"127.151.2.1:8610\" }}\n{}\
             listeners: {{ public: \"127.151.2.10:15443\", admin: \"127.151.2.10:15021\" }}\n",
            identity_files("gw")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("echo-sidecar.yaml"),
        format!(
            "trust_domain: strait.local\n{}local_service: echo.demo\n\
             listeners: {{ inbound: 127.151.2.5:15006, outbound: 127.151.2.5:15001, admin: 127.151.2.5:15000 }}\n\
             app: [{{ port: 8080, protocol: http1, target: \"127.151.2.5:18080\" }}]\n\
             controller: {{ address: \"127.151.2.1:8610\", cluster: west, locality: us-west/us-west-1a }}\n",
            identity_files("echo")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("client-sidecar.yaml"),
        format!(
            "trust_domain: strait.local\n{}\
             listeners: {{ inbound: 127.151.1.5:15006, outbound: 127.151.1.5:15001, admin: 127.151.1.5:15000 }}\n\
             controller: {{ address: \"127.151.1.1:8610\", cluster: east, locality: us-east/us-east-1a }}\n",
            identity_files("client")
        ),
    )
    .unwrap();
    let dns_args = [
        "dns",
        "--controller",
        "127.151.1.1:8610",
        "--cluster",
        "east",
        "--listen",
        "127.151.1.53:8653",
        "--chain",
        "dns/chain.pem",
        "--key",
        "dns/key.pem",
        "--bundle",
        "dns/bundle.pem",
    ];
    let ca_args = [
        "ca",
        "serve",
        "--ca-dir",
        "ca",
        "--cluster",
        "west",
        "--listen",
        "127.151.2.20:8600",
    ];
    let role = |args: &[&str], log: &str, port: &str| {
        let p = spawn(d, args, log);
        wait_for(port.parse().unwrap());
        p
    };
    let mut east_ctl = role(
        &["controller", "--config", "east.yaml"],
        "east.log",
        east_admin,
    );
    let mut west_ctl = role(
        &["controller", "--config", "west.yaml"],
        "west.log",
        west_admin,
    );
    app("127.151.2.5:18080");
    let conn = |admin: &str, name: &str| {
        vec![
            "--controller".to_owned(),
            admin.to_owned(),
            "--state-dir".to_owned(),
            d.join("state").join(name).display().to_string(),
        ]
    };
    std::fs::write(
        d.join("echo.yaml"),
        "name: echo\nnamespace: demo\nports: [{ port: 8080, protocol: http1 }]\n\
         endpoints: [{ address: \"127.151.2.5:15006\" }]\nexport: all\n",
    )
    .unwrap();
    let mut reg = vec!["service", "register", "-f", "echo.yaml"];
    let west_conn = conn(west_admin, "west");
    reg.extend(west_conn.iter().map(String::as_str));
    ok(d, &reg);
    let (ec, wc) = (conn(east_admin, "east"), conn(west_admin, "west"));
    ok(
        d,
        &[
            "link",
            "--from",
            "east",
            "--to",
            "west",
            "--from-controller",
            &ec[1],
            "--from-state-dir",
            &ec[3],
            "--to-controller",
            &wc[1],
            "--to-state-dir",
            &wc[3],
        ],
    );
    let mut gw = role(
        &["gateway", "--config", "gw.yaml"],
        "gw.log",
        "127.151.2.10:15443",
    );
    let mut echo = role(
        &["proxy", "--config", "echo-sidecar.yaml"],
        "echo.log",
        "127.151.2.5:15006",
    );
    let mut client = role(
        &["proxy", "--config", "client-sidecar.yaml"],
        "client.log",
        "127.151.1.5:15001",
    );
    let mut dns = role(&dns_args, "dns.log", "127.151.1.53:8653");
    let mut ca_proc = role(&ca_args, "ca.log", "127.151.2.20:8600");
    let dns_addr: SocketAddr = "127.151.1.53:8653".parse().unwrap();
    let name = "echo.demo.svc.clusterset.local";
    let ca_before = snapshot_files(&d.join("ca"));
    let certs_before: Vec<_> = ["gw", "echo", "client", "east-ctl", "west-ctl"]
        .iter()
        .flat_map(|c| snapshot_files(&d.join(c)))
        .collect();

    let load = Load::start("127.151.1.5:15001".parse().unwrap());
    let t0 = Instant::now();
    let first = load.recovered_after(t0, Duration::from_secs(15));
    eprintln!("first request through the mesh after {first:?}");
    eventually("east DNS answers", Duration::from_secs(10), || {
        dns_answers(dns_addr, name)
    });
    pause(1000);
    load.no_failures_since(t0 + first + Duration::from_millis(100), "steady state");

    // Controllers: the data plane never needs them; state comes back from disk.
    for (who, admin, peer, proc_, file, log) in [
        (
            "east",
            east_admin,
            "west",
            &mut east_ctl,
            "east.yaml",
            "east2.log",
        ),
        (
            "west",
            west_admin,
            "east",
            &mut west_ctl,
            "west.yaml",
            "west2.log",
        ),
    ] {
        let t = Instant::now();
        proc_.kill9();
        pause(1500);
        *proc_ = role(&["controller", "--config", file], log, admin);
        let s = status(d, admin);
        assert!(
            linked_to(&s, peer),
            "{who} restarted without its link: {s:#}"
        );
        if who == "west" {
            assert!(exported(&s), "west restarted without its export: {s:#}");
        }
        eventually(
            &format!("{who} sees echo again"),
            Duration::from_secs(10),
            || has_echo_from(&status(d, admin), "west"),
        );
        pause(1000);
        load.no_failures_since(t, &format!("{who} controller killed and restarted"));
        eprintln!("{who} controller: kill -9 and restart, no request failed");
    }

    // Components on the request path: traffic fails while they are dead and
    // recovers soon after they are back.
    for (who, proc_, args, log, port) in [
        (
            "west gateway",
            &mut gw,
            vec!["gateway", "--config", "gw.yaml"],
            "gw2.log",
            "127.151.2.10:15443",
        ),
        (
            "west workload sidecar",
            &mut echo,
            vec!["proxy", "--config", "echo-sidecar.yaml"],
            "echo2.log",
            "127.151.2.5:15006",
        ),
        (
            "east client sidecar",
            &mut client,
            vec!["proxy", "--config", "client-sidecar.yaml"],
            "client2.log",
            "127.151.1.5:15001",
        ),
    ] {
        let killed = Instant::now();
        proc_.kill9();
        // The load really depends on it: requests fail while it is dead
        // (waited for, not slept on: a slow machine gets 15 s).
        eventually(
            &format!("{who}: a request fails while it is dead"),
            Duration::from_secs(15),
            || load.since(killed).iter().any(|(_, ok)| !ok),
        );
        let restarted = Instant::now();
        *proc_ = role(&args, log, port);
        let took = load.recovered_after(restarted, RECOVERY);
        eprintln!("{who}: kill -9, restart, traffic back {took:?} after the restart");
        assert!(took <= RECOVERY, "{who}: traffic back only after {took:?}");
        pause(1000);
        load.no_failures_since(
            restarted + took + Duration::from_millis(200),
            &format!("after {who} recovered"),
        );
    }

    // DNS: answers again from the controller's push after a restart.
    dns.kill9();
    assert!(!dns_answers(dns_addr, name));
    let restarted = Instant::now();
    dns = role(&dns_args, "dns2.log", "127.151.1.53:8653");
    let took = eventually("DNS answers after restart", RECOVERY, || {
        dns_answers(dns_addr, name)
    });
    eprintln!("east DNS: kill -9, restart, answering {took:?} after the restart");

    // The CA: its directory is untouched and it serves again.
    ca_proc.kill9();
    ca_proc = role(&ca_args, "ca2.log", "127.151.2.20:8600");
    assert!(
        ca_before == snapshot_files(&d.join("ca")),
        "the CA directory changed"
    );
    let certs_after: Vec<_> = ["gw", "echo", "client", "east-ctl", "west-ctl"]
        .iter()
        .flat_map(|c| snapshot_files(&d.join(c)))
        .collect();
    assert!(
        certs_before == certs_after,
        "a certificate or key changed or vanished"
    );
    let out = ok(d, &["-o", "json", "status", "--controller", east_admin]);
    assert!(out.contains("\"west\""), "{out}");
    drop((
        load, ca_proc, dns, client, echo, gw, east_ctl, west_ctl, restarted,
    ));
}
