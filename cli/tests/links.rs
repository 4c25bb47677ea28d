//! A link, not the root, is permission (issue 19), on the path users run:
//! three `strait cluster up` clusters (127.175.{1,2,3}.x: east, west,
//! central), east and central linked with west, west's `echo` app behind a
//! sidecar. Central's sidecar follows its controller and sends a request
//! every 20 ms the whole time: the legitimate client, which must never
//! fail. East's workload holds a valid certificate of east and ignores its
//! controller: its sidecar's snapshot (a file) aims at west's endpoint
//! through west's gateway, so only the gateway and west's controller stand
//! in its way.
//!
//! (a) East's workload asks west's controller for config (as a `strait
//!     proxy` claiming cluster west) and reports west's endpoint down: both
//!     refused, `other_cluster`. One of west's own workloads reporting it
//!     down alone changes nothing (a quorum of two is needed).
//! (b) West exports echo `--to central` only: east's open tunnel is closed
//!     and new ones are refused (`not_exported_to`) within 1 s (bound: 5 s
//!     for the open one, 1 s for new ones); exported to all again, east is
//!     served again.
//! (c) West unlinks east (`strait unlink` on west only): east's link goes
//!     too, east's open tunnel is closed and new ones are refused
//!     (`not_linked`) within the same bounds.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::clusters::{Clusters, have_python, static_sidecar};
use support::traffic::{Load, get_echo};
use support::*;

const NET: &str = "127.175";

/// `strait_gateway_tunnels_total` of `west`'s gateway for a source cluster
/// and result.
fn tunnels(result: &str) -> u64 {
    let admin = format!("{NET}.2.1:15021");
    let body = admin_get(&admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("strait_gateway_tunnels_total{"))
        .filter(|l| {
            l.contains("source_cluster=\"east\"") && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until east's requests, sent after `t`, fail with `reason`;
/// returns how long after `t` the last request was served. Every request
/// after it must be refused, naming `reason` (at least 10 of them), but
/// the first, which may have been in flight when its tunnel was cut.
fn refused_after(east: &Load, t: Instant, reason: &str) -> Duration {
    let deadline = t + Duration::from_secs(10);
    loop {
        pause(200);
        let s = east.outcomes(t, Instant::now());
        let last_ok = s.iter().rposition(|(_, r)| r.is_ok());
        let after = &s[last_ok.map_or(0, |i| i + 1)..];
        if after.len() >= 10 {
            // The request in flight when the open tunnel was cut may end
            // with a broken answer; every later one is a refusal.
            let other: Vec<_> = after[1..]
                .iter()
                .filter(|(_, r)| r.as_ref().is_err_and(|e| !e.contains(reason)))
                .collect();
            assert!(other.is_empty(), "refusals not naming {reason}: {other:?}");
            eprintln!("  the first failure: {:?}", after[0].1);
            let served = last_ok.map_or(Duration::ZERO, |i| s[i].0 - t);
            eprintln!("  {} refusals naming {reason}", after.len());
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "east was not refused with {reason}: {s:?}"
        );
    }
}

/// No request sent since `t` failed, and a few were sent (the pace
/// depends on the machine's load: a request every 20 ms plus its time).
fn none_failed(load: &Load, t: Instant, what: &str) {
    let (f, n) = load.failed(t, Instant::now());
    assert!(n >= 5, "{what}: only {n} requests sent");
    assert_eq!(f, 0, "{what}: {f} of {n} requests failed");
}

#[test]
fn links_and_exports_gate_every_door_while_linked_traffic_goes_on() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let clusters = Clusters::up(
        &dir,
        NET,
        &[
            ("east", "us-east"),
            ("west", "us-west"),
            ("central", "eu-central"),
        ],
    );
    clusters.link("east", "west");
    clusters.link("central", "west");
    let west = clusters.pod("west", "us-west", true, "");
    let central = clusters.pod("central", "eu-central", false, "");
    clusters.wait_healthy("central", &["west"]);
    let home = clusters.issue("east", "client", "east-static");
    let east_ip = format!("{NET}.1.6");
    let _east = static_sidecar(
        &dir,
        &home,
        &east_ip,
        "east",
        &format!("{}:15006", west.ip),
        &format!("{NET}.2.1:15443"),
    );
    let legit = Load::every(central.proxy(), 20);
    let east = Load::every(format!("{east_ip}:15001").parse().unwrap(), 20);
    let t0 = Instant::now();
    east.recovered_after(t0, Duration::from_secs(5));
    legit.recovered_after(t0, Duration::from_secs(5));

    // (a) West's controller refuses east's workload, linked or not.
    let t = Instant::now();
    let spy_ip = format!("{NET}.1.7");
    let h = home.display();
    let spy_cfg = home.join("spy.yaml");
    std::fs::write(
        &spy_cfg,
        format!(
            "trust_domain: strait.local\n\
             identity: {{ files: {{ chain: {h}/chain.pem, key: {h}/key.pem, bundle: {h}/bundle.pem }} }}\n\
             listeners: {{ inbound: \"{spy_ip}:15006\", outbound: \"{spy_ip}:15001\", admin: \"{spy_ip}:15000\", bind_vips: false }}\n\
             controller: {{ address: \"{NET}.2.1:8610\", cluster: west }}\n"
        ),
    )
    .unwrap();
    let spy_cfg = spy_cfg.display().to_string();
    let spy = spawn(
        &dir,
        &["--log-format", "json", "proxy", "--config", &spy_cfg],
        "spy.log",
    );
    let log = || std::fs::read_to_string(dir.join("spy.log")).unwrap_or_default();
    let waited = Instant::now();
    while !log().contains("other_cluster") && !log().contains("certificate of cluster east") {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "spy log: {}",
            log()
        );
        pause(100);
    }
    drop(spy);
    // The log is JSON lines (`--log-format json`); the refusal is a field.
    let line = log()
        .lines()
        .find(|l| l.contains("certificate of cluster east"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        .expect("the refusal is logged");
    eprintln!("(a) east's workload subscribing to west: {line}");
    assert_eq!(line["level"], "WARN", "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("only workloads and components of cluster west"),
        "{line}"
    );
    // Logs written to files carry no colour codes.
    let controller_log =
        std::fs::read_to_string(dir.join("clusters/west/controller.log")).unwrap_or_default();
    assert!(
        !controller_log.is_empty() && !controller_log.contains('\x1b'),
        "{controller_log}"
    );
    let report = |pod: &Path| report_down(pod, &format!("{}:15006", west.ip));
    let refusal = report(&home).unwrap_err();
    eprintln!("(a) east's workload reporting west's endpoint down: {refusal}");
    assert!(
        refusal.contains("other_cluster") && refusal.contains("cluster east"),
        "{refusal}"
    );
    // One of west's own workloads alone is one vote: nothing changes.
    let west_client = clusters.issue("west", "client", "west-client");
    report(&west_client).expect("west's own workload may report");
    pause(1500);
    let s = clusters.status("west");
    assert!(
        support::clusters::healthy_in(&s, "west"),
        "one reporter flipped west's endpoint: {s:#}"
    );
    let metrics = admin_get(&format!("{NET}.2.1:8611"), "/metrics");
    for want in [
        "strait_health_reports_total{result=\"other_cluster\"} 1",
        "strait_health_reports_total{result=\"accepted\"} 1",
        "strait_config_refusals_total{reason=\"other_cluster\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    none_failed(&legit, t, "(a) central");
    none_failed(&east, t, "(a) east while linked");

    // (b) Exported to central only: east loses its tunnel, then it is back.
    let t = Instant::now();
    let revoked = tunnels("revoked");
    clusters.op("west", &["export", "echo", "-n", "demo", "--to", "central"]);
    let refused = refused_after(&east, t, "not_exported_to");
    let closed = tunnels("revoked") - revoked;
    eprintln!(
        "(b) export --to central: east refused after {refused:?}; {closed} open tunnel(s) closed by the gateway"
    );
    assert!(
        refused <= Duration::from_secs(1),
        "(b) east was served for {refused:?}"
    );
    assert!(closed >= 1, "(b) the gateway closed no open tunnel");
    let t2 = Instant::now();
    clusters.op("west", &["export", "echo", "-n", "demo"]);
    let back = east.recovered_after(t2, Duration::from_secs(3));
    eprintln!("(b) exported to all again: east served after {back:?}");
    pause(1000);
    none_failed(&legit, t, "(b) central");

    // (c) West unlinks east; east's side goes too.
    pause(1000);
    let t = Instant::now();
    none_failed(
        &east,
        t - Duration::from_millis(900),
        "(c) east before the unlink",
    );
    let revoked = tunnels("revoked");
    let out = clusters.op("west", &["unlink", "--peer", "east"]);
    assert_eq!(out.trim(), "unlinked east (it removed its side too)");
    let refused = refused_after(&east, t, "not_linked");
    let closed = tunnels("revoked") - revoked;
    eprintln!(
        "(c) unlink on west: east refused after {refused:?}; {closed} open tunnel(s) closed by the gateway"
    );
    assert!(
        refused <= Duration::from_secs(1),
        "(c) east was served for {refused:?}"
    );
    assert!(closed >= 1, "(c) the gateway closed no open tunnel");
    let s = clusters.status("east");
    assert_eq!(
        s["links"].as_array().map(Vec::len),
        Some(0),
        "east still links west: {s:#}"
    );
    let fresh = get_echo(&mut None, format!("{east_ip}:15001").parse().unwrap()).unwrap();
    assert!(
        String::from_utf8_lossy(&fresh.1).contains("not_linked"),
        "{fresh:?}"
    );
    pause(1000);
    none_failed(&legit, t, "(c) central");
    let (f, n) = legit.failed(t0, Instant::now());
    eprintln!("central, the whole test: {f} of {n} requests failed");
}

/// Reports `endpoint` of demo/echo down to west's controller with the
/// workload certificate in `pod`; the refusal as `reason: message`.
fn report_down(pod: &Path, endpoint: &str) -> Result<(), String> {
    use strait_api::proto::config::EndpointHealthReport;
    use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
    let read = |f: &str| std::fs::read_to_string(pod.join(f)).unwrap();
    let certs = strait_ca::CertStore::from_pem(&read("chain.pem"), &read("key.pem")).unwrap();
    let td = strait_api::TrustDomain::new("strait.local").unwrap();
    let bundle = strait_ca::SharedBundle::new(
        strait_ca::TrustBundle::from_pem(td.clone(), &read("bundle.pem")).unwrap(),
    );
    let west = strait_api::ClusterName::new("west").unwrap();
    let addr = format!("{NET}.2.1:8610").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let chan = strait_federation::grpc::channel(
            addr,
            &certs,
            &bundle,
            strait_ca::tls::ExpectedServer::Id(td.controller_id(&west)),
        )
        .unwrap();
        let report = EndpointHealthReport {
            namespace: "demo".into(),
            service: "echo".into(),
            address: endpoint.into(),
            healthy: false,
            hold_seconds: 60,
        };
        ConfigDiscoveryClient::new(chan)
            .report_endpoint_health(report)
            .await
            .map(drop)
            .map_err(|e| {
                let reason = e
                    .metadata()
                    .get("strait-reason")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                format!("{reason}: {}", e.message())
            })
    })
}
