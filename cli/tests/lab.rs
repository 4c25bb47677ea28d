//! The lab end to end (issue 21, item 3), as root: `scripts/lab.sh up`
//! builds three clusters on their own subnets (10.24.n.0/24 inside
//! namespaces this test creates, named `hl<pid>-*`) behind a router that
//! forwards only to and from the gateway hosts, with the roles as shipped
//! and unmodified apps (python's http.server, curl). One lab serves every
//! check (CI budget): an unmodified `curl` in east's client pod reaches
//! `echo.demo` of west by its `cluster.local` name and by its global
//! `clusterset.local` name through capture, and the app sees east's client
//! identity; the router's record of the flows it passed shows only gateway
//! hosts crossed between subnets, and a pod dialing another cluster's pod
//! is dropped; then, each under steady traffic, west's app pod stops,
//! west's gateway host goes off its subnet, and the router partitions east
//! from west (fail-static keeps serving from central; heal converges back
//! to west). Each fault prints its request and failure counts; failures
//! are bounded by the requests in flight (see `IN_FLIGHT`). `lab.sh down`
//! runs on drop (also on panic); no namespace, link or process of the lab
//! is left, checked at the end. Skips, saying why, without root or a tool.

/// Like `eprintln!`, but straight to the process's stderr, past the test
/// harness's capture: the skip message and the fault counts show in a
/// plain `cargo test` run (CI's log), not only with `--nocapture`.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[path = "lab/harness.rs"]
mod harness;
mod support;
#[path = "lab/traffic.rs"]
mod traffic;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Lab, run, text};
use traffic::under_traffic;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lab.sh");
const LOCAL: &str = "echo.demo.svc.cluster.local";
const GLOBAL: &str = "echo.demo.svc.clusterset.local";
const CLIENT_ID: &str = "URI=spiffe://strait.local/ns/demo/sa/client";
const GATEWAYS: [&str; 3] = ["10.24.1.10", "10.24.2.10", "10.24.3.10"];
const EAST_CLIENT: &str = "10.24.1.21";
const WEST_ECHO: &str = "10.24.2.21:15006";
/// Steady traffic: this many loops, each one request at a time, a request
/// every `INTERVAL` (so at most `IN_FLIGHT` requests are in flight).
const WORKERS: usize = 2;
const IN_FLIGHT: usize = WORKERS;
const INTERVAL: Duration = Duration::from_millis(100);

/// Every flow that crossed the router touched a gateway host, and pods
/// only ever dialed a gateway's mTLS port (15443).
fn only_gateways_crossed(lab: &Lab) -> Vec<[String; 4]> {
    let flows = lab.crossed();
    for [src, dst, proto, port] in &flows {
        assert!(
            GATEWAYS.contains(&src.as_str()) || GATEWAYS.contains(&dst.as_str()),
            "{src} -> {dst} {proto}/{port} crossed without a gateway host: {flows:?}"
        );
        if !GATEWAYS.contains(&src.as_str()) {
            assert_eq!(
                (proto.as_str(), port.as_str()),
                ("tcp", "15443"),
                "a pod reached a gateway host other than by its gateway port: {flows:?}"
            );
        }
    }
    flows
}

/// Namespaces and host links named with `prefix`, and processes whose
/// command line names `dir`, that still exist.
fn leftovers(prefix: &str, dir: &Path) -> Vec<String> {
    let netns = text(&run("ip", &["netns", "list"]));
    let links = text(&run("ip", &["-o", "link", "show"]));
    let mut left: Vec<String> = netns
        .lines()
        .chain(links.lines())
        .filter(|l| l.contains(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    let dir = dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&dir) {
                left.push(format!("process {:?}: {cmdline}", entry.file_name()));
            }
        }
    }
    left
}

#[test]
fn lab_east_reaches_west_through_capture_and_gateways_and_fails_over() {
    if let Some(why) = harness::missing() {
        say!("SKIP lab_east_reaches_west_through_capture_and_gateways_and_fails_over: {why}");
        return;
    }
    let started = Instant::now();
    let lab = Lab::up();
    let (prefix, dir) = (lab.prefix.clone(), lab.dir().to_owned());
    let vip = lab.vip();
    // East's policy puts west first; wait until east's sidecar follows it.
    lab.wait_served_by(&vip, "west", Duration::from_secs(30));
    // The faults below start from a clean state: nothing ejected yet (a
    // request refused by a gateway that has not read its export table
    // yet would eject an endpoint for 30 s; `lab.sh up` waits for them).
    assert_eq!(
        lab.ejections(),
        0,
        "an endpoint was ejected before any fault"
    );

    // By both names, through capture: served by west, the app sees
    // east's client identity (set by west's sidecar from the mTLS peer).
    for name in [LOCAL, GLOBAL] {
        let r = lab.get(name, &vip);
        assert!(r.ok_from("west"), "{name}: {} {}", r.status, r.body);
        assert!(r.body.contains(&format!("host: {name}:8080")), "{}", r.body);
        assert!(
            r.body.contains("x-forwarded-client-cert") && r.body.contains(CLIENT_ID),
            "{name}: the app did not see east's client: {}",
            r.body
        );
    }
    // What Strait DNS tells the pod for the global name (printed, not
    // asserted: `strait cluster up` gives DNS no meshed client networks,
    // so a pod gets the unmeshed answer, a gateway host; docs/lab.md).
    if run("dig", &["-v"]).status.success() {
        let answer = lab.exec(
            "east-client",
            &[
                "dig",
                "+short",
                "+time=2",
                "-p",
                "8653",
                "@10.24.1.10",
                GLOBAL,
            ],
        );
        say!(
            "Strait DNS of east answers east's pod: {GLOBAL} -> {:?}",
            text(&answer).trim()
        );
    }
    let captured = text(&lab.exec(
        "east-client",
        &["nft", "list", "chain", "inet", "strait", "outbound"],
    ));
    assert!(captured.contains("redirect to :15002"), "{captured}");

    // The router: east's pod reached west's gateway, the controllers
    // talked host to host, nothing else crossed.
    let flows = only_gateways_crossed(&lab);
    let pod_to_gateway = [EAST_CLIENT, "10.24.2.10", "tcp", "15443"].map(str::to_owned);
    assert!(flows.contains(&pod_to_gateway), "{flows:?}");
    // A pod dialing another cluster's pod directly (as the sidecar's uid,
    // so not captured) is dropped by the router and counted.
    let dropped = lab.router_count("anything else between subnets");
    let direct = lab.exec(
        "east-client",
        &[
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("http://{WEST_ECHO}/"),
        ],
    );
    // curl exit 28: the connect timed out (dropped, no answer at all); a
    // connection that reached west's mTLS port would end otherwise.
    assert_eq!(
        direct.status.code(),
        Some(28),
        "a pod's connection to west's pod was not dropped: {}",
        text(&direct)
    );
    assert!(lab.router_count("anything else between subnets") > dropped);
    only_gateways_crossed(&lab);
    say!("flows that crossed the router: {flows:?}");

    // Bound on failed requests per fault: IN_FLIGHT. A fault that sends
    // nothing back (a link down, a partition's drops) kills the tunnel to
    // west's gateway under the requests in flight on it, at most one per
    // loop; a request that is not idempotent may have reached the app and
    // cannot be retried (GETs are, since main retries idempotent resets:
    // 0 failed). A request after the fault finds no tunnel; its connect
    // fails (2 s timeout), which is retried on central: slow, not failed.

    // West's app pod stops (app and sidecar): its port refuses at once,
    // the sidecar retries on central; west's controller's health check
    // marks it unhealthy, which reaches east's sidecar through the link
    // (so fail-back, below, follows the health check, not the ejection).
    let run = under_traffic(
        &lab,
        &vip,
        || lab.must_sh(&["pod-stop", "west", "echo"]),
        || lab.west_health().as_deref() == Some("unhealthy"),
        "central",
        Duration::from_secs(30),
    );
    run.report(&lab, "west's app pod stopped", "central");
    assert!(run.failed().len() <= IN_FLIGHT);
    lab.must_sh(&["pod-start", "west", "echo"]);
    let back = lab.wait_served_by(&vip, "west", Duration::from_secs(60));
    say!(
        "west's pod started: served by west again after {:.1} s",
        back.as_secs_f64()
    );

    // West's gateway host goes off its subnet (controller, gateway, DNS).
    let run = under_traffic(
        &lab,
        &vip,
        || lab.must_sh(&["gateway-down", "west"]),
        || true,
        "central",
        Duration::from_secs(30),
    );
    run.report(&lab, "west's gateway host link down", "central");
    assert!(run.failed().len() <= IN_FLIGHT);
    lab.must_sh(&["gateway-up", "west"]);
    let back = lab.wait_served_by(&vip, "west", Duration::from_secs(60));
    say!(
        "west's gateway host link up: served by west again after {:.1} s",
        back.as_secs_f64()
    );

    // The router drops everything between east and west, established
    // connections too.
    let run = under_traffic(
        &lab,
        &vip,
        || lab.must_sh(&["partition", "east", "west"]),
        || lab.west_link()["sync"]["stale"] == true,
        "central",
        Duration::from_secs(60),
    );
    run.report(
        &lab,
        "partition east|west (until east's link to west is stale)",
        "central",
    );
    assert!(run.failed().len() <= IN_FLIGHT);
    // Fail-static: east keeps what it last had from west, west's endpoint
    // included, though the link is stale, and serves from central.
    let echo = lab.east_echo().expect("east's sidecar lost echo.demo");
    assert!(
        echo["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == WEST_ECHO),
        "fail-static dropped west's endpoint: {echo}"
    );
    let west = lab.west_link();
    assert_eq!(west["fail_mode"], "fail-static");
    assert_eq!(west["sync"]["up"], false, "{west}");
    assert_eq!(west["sync"]["services"], 1, "{west}");
    say!("partition: east's link to west {}", west["sync"]);
    // Heal: east goes back to west with no failed request.
    let run = under_traffic(
        &lab,
        &vip,
        || lab.must_sh(&["heal"]),
        || lab.west_link()["sync"]["stale"] == false,
        "west",
        Duration::from_secs(90),
    );
    run.report(&lab, "heal", "west");
    assert_eq!(run.failed().len(), 0);

    let flows = only_gateways_crossed(&lab);
    say!("flows that crossed the router by the end: {}", flows.len());
    drop(lab);
    let left = leftovers(&prefix, &dir);
    assert!(left.is_empty(), "the lab left {left:?}");
    say!(
        "lab test done in {:.1} s, nothing left",
        started.elapsed().as_secs_f64()
    );
}
