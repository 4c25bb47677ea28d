//! Your own workloads, the way docs/getting-started.md adds them: three
//! `strait cluster up` clusters (127.176.{1,2,3}.x: east, west, central),
//! linked; the `echo` app (a real Python HTTP server) in west and in
//! central and a client in east, each added with one `strait sidecar add`
//! (no hand-written YAML, no `ca issue`): the sidecars register their apps
//! with their controllers. Then a request every 20 ms from east:
//!
//! (a) it is served by west; west's app dies: central serves; it comes
//!     back: west serves again;
//! (b) west's sidecar is killed with `kill -9`: central serves, and west's
//!     endpoint leaves the catalog when its registration lease ends (15 s);
//!     `sidecar add` again brings west back;
//! (c) central's sidecar is removed with `sidecar rm` (SIGTERM): its
//!     endpoint leaves the catalog at once.
//!
//! A client without a sidecar (`dig` + `curl`) resolves the global name
//! through east's `strait dns` and is served through east's egress, by west,
//! then by central after west's app died.
//!
//! Failed requests are printed and bounded by the requests in flight at
//! each fault (at most 2).

mod support;

use std::time::{Duration, Instant};

use support::clusters::{App, Clusters, have_python};
use support::traffic::Load;
use support::*;

const NET: &str = "127.176";

fn endpoints_of(s: &serde_json::Value, cluster: &str) -> Vec<String> {
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == "echo")
        .flat_map(|x| x["clusters"].as_array().into_iter().flatten())
        .filter(|c| c["cluster"] == cluster)
        .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect()
}

/// A client without a sidecar in east: resolves the global name through
/// east's `strait dns` with `dig`, then `curl`s that address; the body
/// (which cluster served), or `None` when `dig` or `curl` is missing.
fn plain_client_in_east() -> Option<Result<String, String>> {
    let name = "echo.demo.svc.clusterset.local";
    let dig = std::process::Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=1",
            "-p",
            "8653",
            &format!("@{NET}.1.1"),
            name,
            "A",
        ])
        .output()
        .ok()?;
    let ip = String::from_utf8_lossy(&dig.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if ip.is_empty() {
        return Some(Err(format!(
            "dig answered nothing: {}",
            String::from_utf8_lossy(&dig.stderr)
        )));
    }
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &format!("{name}:8080:{ip}"),
        ])
        .arg(format!("http://{name}:8080/"))
        .output()
        .ok()?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    Some(if curl.status.success() {
        Ok(body)
    } else {
        Err(format!(
            "curl via {ip}: {} {}",
            String::from_utf8_lossy(&curl.stderr),
            body
        ))
    })
}

/// Waits until `pred` holds for `cluster`'s status; how long it took.
fn until(
    clusters: &Clusters,
    cluster: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let s = clusters.status(cluster);
        if pred(&s) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}: {s:#}");
        pause(100);
    }
}

#[test]
fn workloads_join_with_one_command_register_themselves_and_leave_cleanly() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let d = dir.display().to_string();
    let clusters = Clusters::east_west_central(&dir, NET);
    let add =
        |name: &str, cluster: &str, app: Option<&str>| clusters.add_sidecar(name, cluster, app);
    let west_app_addr = format!("{NET}.2.5:18080");
    let mut west_app = Some(App::start(&dir, "west", &format!("{NET}.2.5")));
    let _central_app = App::start(&dir, "central", &format!("{NET}.3.5"));
    let west = add("echo", "west", Some(&west_app_addr));
    let central = add("echo", "central", Some(&format!("{NET}.3.5:18080")));
    let client = add("client", "east", None);
    assert_eq!(west["identity"], "spiffe://strait.local/ns/demo/sa/echo");
    // No certificate was issued by hand: the sidecar got it from west's CA
    // service with a join token (and renews it there).
    let cfg = std::fs::read_to_string(west["config"].as_str().unwrap()).unwrap();
    assert!(
        cfg.contains("identity: { ca: {") && cfg.contains("join-token"),
        "{cfg}"
    );
    assert_eq!(client["app"], serde_json::Value::Null);
    // The sidecars' own registrations are all the catalog knows.
    let west_ep = west["inbound"].as_str().unwrap().to_owned();
    let central_ep = central["inbound"].as_str().unwrap().to_owned();
    let ls = ok(&dir, &["sidecar", "ls", "--dir", &d]);
    assert_eq!(ls.matches("running").count(), 3, "{ls}");
    clusters.op(
        "east",
        &[
            "policy",
            "set",
            "echo",
            "-n",
            "demo",
            "--failover",
            "west,central",
        ],
    );
    // One flag for the mesh directory: STRAIT_DIR serves every verb, and
    // the old --demo-dir still works, with a note.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["-o", "json", "status"])
        .env("STRAIT_DIR", &d)
        .output()
        .unwrap();
    let all: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(3),
        "STRAIT_DIR status: {all}"
    );
    let show = [
        "policy",
        "show",
        "echo",
        "-n",
        "demo",
        "--cluster",
        "east",
        "--demo-dir",
        &d,
    ];
    let old = strait(&dir, &show);
    assert!(old.status.success(), "{old:?}");
    let note = String::from_utf8_lossy(&old.stderr);
    assert!(
        note.contains("--demo-dir is deprecated; use --dir"),
        "{note}"
    );
    clusters.wait_healthy("east", &["west", "central"]);
    let proxy = client["outbound"].as_str().unwrap().parse().unwrap();
    let load = Load::every(proxy, 20);
    let t0 = Instant::now();
    let on_west = load.settled_on(t0, "west", Duration::from_secs(5));
    eprintln!("start: served by west after {on_west:?}");
    // A client without a sidecar gets east's egress for the global name
    // (east serves no echo itself) and is served by west over plain HTTP.
    let plain = plain_client_in_east();
    match &plain {
        None => eprintln!(
            "SKIPPED the plain client: dig or curl is missing (scripts/test.sh installs them)"
        ),
        Some(r) => {
            eprintln!("plain client (dig + curl, no sidecar): {r:?}");
            assert_eq!(r.as_deref(), Ok("west"), "{r:?}");
        }
    }

    // (a) West's app dies and comes back.
    let t = Instant::now();
    drop(west_app.take());
    let to_central = load.settled_on(t, "central", Duration::from_secs(2));
    // The plain client keeps being served, now by central, past the DNS TTL
    // (5 s): its address is east's egress either way.
    if plain.is_some() {
        pause(5500);
        let r = plain_client_in_east().unwrap();
        eprintln!("(a) plain client after the TTL: {r:?}");
        assert_eq!(r.as_deref(), Ok("central"), "{r:?}");
    }
    let back = Instant::now();
    west_app = Some(App::start(&dir, "west", &format!("{NET}.2.5")));
    let to_west = load.settled_on(back, "west", Duration::from_secs(5));
    let (f, n) = load.failed(t, Instant::now());
    eprintln!(
        "(a) app died: central after {to_central:?}; back on west after {to_west:?}; {f} of {n} failed"
    );
    assert!(f <= 2, "(a) {f} of {n} requests failed");

    // A registration that expects the wrong identity of an endpoint (its
    // sidecar is `echo`, the file says nothing, so `wrongid` is expected):
    // the health check says so, and diagnose names both identities.
    let reg = dir.join("wrongid.yaml");
    std::fs::write(
        &reg,
        format!("name: wrongid\nnamespace: demo\nports: [{{ port: 8080, protocol: http1 }}]\nendpoints: [{{ address: \"{west_ep}\" }}]\n"),
    )
    .unwrap();
    clusters.op(
        "west",
        &["service", "register", "-f", reg.to_str().unwrap()],
    );
    let t = Instant::now();
    let found = loop {
        let out = strait(
            &dir,
            &[
                "diagnose", "wrongid", "-n", "demo", "--from", "west", "--dir", &d,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("expected spiffe://strait.local/ns/demo/sa/wrongid") {
            break text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "diagnose never named the identities:\n{text}"
        );
        pause(300);
    };
    eprintln!("diagnose of a wrong expected identity:\n{found}");
    assert!(
        found.contains("peer is spiffe://strait.local/ns/demo/sa/echo"),
        "{found}"
    );
    clusters.op("west", &["service", "deregister", "wrongid", "-n", "demo"]);

    // (b) West's sidecar is killed: no goodbye, so its lease removes it.
    let t = Instant::now();
    let pid = west["pid"].as_u64().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    let to_central = load.settled_on(t, "central", Duration::from_secs(3));
    let gone = until(
        &clusters,
        "west",
        "west's endpoint expires",
        Duration::from_secs(25),
        |s| !endpoints_of(s, "west").contains(&west_ep),
    );
    let (f, n) = load.failed(t, Instant::now());
    eprintln!(
        "(b) sidecar kill -9: central after {to_central:?}; endpoint removed after {gone:?} (lease 15 s); {f} of {n} failed"
    );
    assert!(
        gone >= Duration::from_secs(10),
        "(b) removed before its lease ended: {gone:?}"
    );
    assert!(f <= 2, "(b) {f} of {n} requests failed");
    let again = add("echo", "west", Some(&west_app_addr));
    let back = Instant::now();
    let to_west = load.settled_on(back, "west", Duration::from_secs(5));
    eprintln!("(b) `sidecar add` again: back on west after {to_west:?}");
    assert_ne!(again["pid"], west["pid"]);

    // The operator decides the export of a service only sidecars
    // registered: unexport in central withdraws it from east, export again
    // brings it back.
    let out = clusters.op("central", &["unexport", "echo", "-n", "demo"]);
    assert_eq!(out.trim(), "demo/echo: export none", "{out}");
    let gone = until(
        &clusters,
        "east",
        "central's echo withdrawn",
        Duration::from_secs(5),
        |s| endpoints_of(s, "central").is_empty(),
    );
    clusters.op("central", &["export", "echo", "-n", "demo"]);
    let back = until(
        &clusters,
        "east",
        "central's echo back",
        Duration::from_secs(5),
        |s| !endpoints_of(s, "central").is_empty(),
    );
    eprintln!(
        "operator unexport/export of a self-registered service: withdrawn after {gone:?}, back after {back:?}"
    );

    // (c) Central's sidecar leaves with SIGTERM: removed at once.
    let t = Instant::now();
    let out = ok(
        &dir,
        &[
            "sidecar",
            "rm",
            "echo",
            "-n",
            "demo",
            "--cluster",
            "central",
            "--dir",
            &d,
        ],
    );
    assert!(out.contains("removed"), "{out}");
    let gone = until(
        &clusters,
        "central",
        "central's endpoint leaves",
        Duration::from_secs(3),
        |s| !endpoints_of(s, "central").contains(&central_ep),
    );
    eprintln!(
        "(c) sidecar rm: endpoint removed {gone:?} after the command returned ({:?} in all)",
        t.elapsed()
    );
    let (f, n) = load.failed(t, Instant::now());
    assert_eq!(f, 0, "(c) {f} of {n} requests failed (traffic was on west)");
    let ls = ok(
        &dir,
        &["sidecar", "ls", "--cluster", "central", "--dir", &d],
    );
    assert!(ls.contains("no sidecars"), "{ls}");
    drop(load);
    drop(west_app);
    drop(clusters);
    // `cluster down` stopped the remaining sidecars too.
    for s in [&again, &client] {
        let pid = s["pid"].as_u64().unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|st| st.contains(") Z ")),
            "sidecar pid {pid} outlived cluster down"
        );
    }
}
