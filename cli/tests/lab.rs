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

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::pause;

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

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Why this machine cannot run the lab, if it cannot.
fn missing() -> Option<String> {
    if !run("id", &["-u"]).stdout.starts_with(b"0\n") {
        return Some("needs root (network namespaces and nftables)".into());
    }
    for (tool, arg) in [
        ("bash", "--version"),
        ("ip", "-V"),
        ("nft", "--version"),
        ("curl", "--version"),
        ("python3", "--version"),
        ("setpriv", "--version"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!(
                "needs `{tool}` (apt-get install iproute2 nftables curl python3 util-linux)"
            ));
        }
    }
    None
}

/// A running lab; `lab.sh down` on drop, then its directory goes (kept,
/// with every log, when the test failed).
struct Lab {
    prefix: String,
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn up() -> Self {
        let lab = Self {
            prefix: format!("hl{}", std::process::id()),
            dir: Some(tempfile::tempdir().unwrap()),
        };
        let started = Instant::now();
        let out = lab.sh(&["up"]);
        assert!(out.status.success(), "lab.sh up failed:\n{}", text(&out));
        eprintln!("lab up in {:.1} s", started.elapsed().as_secs_f64());
        lab
    }

    fn sh(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("STRAIT_BIN", env!("CARGO_BIN_EXE_strait"))
            .env("LAB_DIR", self.dir())
            .env("LAB_PREFIX", &self.prefix)
            .env_remove("STRAIT_LOG")
            .output()
            .expect("run lab.sh")
    }

    fn must_sh(&self, args: &[&str]) {
        let out = self.sh(args);
        assert!(out.status.success(), "lab.sh {args:?}: {}", text(&out));
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn strait_json(&self, args: &[&str]) -> serde_json::Value {
        let bin = self.dir().join("bin/strait");
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.exec("router", &all);
        assert!(out.status.success(), "strait {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// East's client sidecar's view of echo.demo (admin `/config`).
    fn east_echo(&self) -> Option<serde_json::Value> {
        let out = self.exec(
            "east-client",
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:15000/config",
            ],
        );
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        config["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "echo" && s["namespace"] == "demo")
            .cloned()
    }

    /// The health of west's echo endpoint in east's sidecar's snapshot.
    fn west_health(&self) -> Option<String> {
        let echo = self.east_echo()?;
        let west = echo["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == WEST_ECHO)?;
        Some(west["health"].as_str()?.to_owned())
    }

    /// East's link to west, as `strait status -o json` shows it.
    fn west_link(&self) -> serde_json::Value {
        let status = self.strait_json(&["status", "-o", "json", "--controller", "10.24.1.10:8611"]);
        status[0]["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["peer"] == "west"))
            .unwrap_or_else(|| panic!("east has no link to west: {status}"))
            .clone()
    }

    /// Endpoints east's client sidecar has ejected so far (outlier
    /// detection), over every service and reason.
    fn ejections(&self) -> u64 {
        let out = self.exec(
            "east-client",
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:15000/metrics",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("outlier_ejections_total") && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The VIP of echo.demo once east's sidecar has both clusters'
    /// endpoints: what kube-dns would answer for the ClusterIP.
    fn vip(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(echo) = self.east_echo()
                && echo["endpoints"].as_array().is_some_and(|e| e.len() == 2)
            {
                return echo["vip"].as_str().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "east's sidecar never learned echo.demo"
            );
            pause(200);
        }
    }

    /// One request by an unmodified curl (root in the pod: not the
    /// sidecar's uid, so captured) to `name` resolved to the VIP.
    fn get(&self, name: &str, vip: &str) -> Reply {
        let started = Instant::now();
        let resolve = format!("{name}:8080:{vip}");
        let url = format!("http://{name}:8080/");
        let out = self.exec(
            "east-client",
            &[
                "curl",
                "-s",
                "--max-time",
                "15",
                "-w",
                "\n%{http_code}",
                "--resolve",
                &resolve,
                &url,
            ],
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = body
            .lines()
            .last()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let served_by = body
            .lines()
            .find_map(|l| l.strip_prefix("served-by: "))
            .unwrap_or("")
            .to_owned();
        Reply {
            status,
            served_by,
            body,
            took: started.elapsed(),
        }
    }

    /// Waits until `times` requests in a row are answered by `cluster`;
    /// returns how long that took.
    fn wait_served_by(&self, vip: &str, cluster: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut row = 0;
        while row < 3 {
            let r = self.get(LOCAL, vip);
            row = if r.ok_from(cluster) { row + 1 } else { 0 };
            assert!(
                started.elapsed() < limit,
                "not served by {cluster} within {limit:?}; last: {} {:?}",
                r.status,
                r.served_by
            );
            pause(100);
        }
        started.elapsed()
    }

    /// Every new flow the router passed between subnets: (source,
    /// destination, protocol, port).
    fn crossed(&self) -> Vec<[String; 4]> {
        let out = self.exec("router", &["nft", "list", "set", "inet", "lab", "crossed"]);
        let listing = String::from_utf8_lossy(&out.stdout).replace(['\n', '\t'], " ");
        let Some((_, elements)) = listing.split_once("elements = {") else {
            return Vec::new();
        };
        let elements = elements.split('}').next().unwrap_or("");
        elements
            .split(',')
            .map(|e| {
                let parts: Vec<String> = e.split(" . ").map(|p| p.trim().to_owned()).collect();
                parts
                    .try_into()
                    .unwrap_or_else(|p| panic!("not a flow: {p:?} in {listing}"))
            })
            .collect()
    }

    /// Packets counted by the router's forward rule with this comment.
    fn router_count(&self, comment: &str) -> u64 {
        let out = self.exec(
            "router",
            &["nft", "list", "chain", "inet", "lab", "forward"],
        );
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = listing
            .lines()
            .find(|l| l.contains(&format!("comment \"{comment}\"")))
            .unwrap_or_else(|| panic!("no rule {comment:?} in\n{listing}"));
        line.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {line:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.sh(&["down"]);
        if !out.status.success() {
            eprintln!("lab.sh down failed: {}", text(&out));
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("lab logs kept in {}", dir.keep().display());
        }
    }
}

struct Reply {
    status: u16,
    served_by: String,
    body: String,
    took: Duration,
}

impl Reply {
    fn ok_from(&self, cluster: &str) -> bool {
        self.status == 200 && self.served_by == cluster
    }
}

/// One request of the steady traffic: when it started (from the start of
/// the traffic), its answer.
struct Sample {
    at: Duration,
    reply: Reply,
}

/// What steady traffic saw around one fault.
struct Run {
    samples: Vec<Sample>,
    fault_at: Duration,
}

impl Run {
    fn failed(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.reply.status != 200)
            .collect()
    }

    /// Prints the counts: requests, failed ones, who served before and
    /// after the fault, how long after it the first answer from `to` came.
    fn report(&self, lab: &Lab, what: &str, to: &str) {
        let mut before = BTreeMap::<&str, usize>::new();
        let mut after = BTreeMap::<&str, usize>::new();
        for s in &self.samples {
            let side = if s.at < self.fault_at {
                &mut before
            } else {
                &mut after
            };
            *side.entry(s.reply.served_by.as_str()).or_default() += 1;
        }
        let first = self
            .samples
            .iter()
            .filter(|s| s.at >= self.fault_at && s.reply.ok_from(to))
            .map(|s| (s.at + s.reply.took).saturating_sub(self.fault_at))
            .min();
        let failed: Vec<String> = self
            .failed()
            .iter()
            .map(|s| {
                format!(
                    "{} at +{:.2}s took {:.2}s",
                    s.reply.status,
                    s.at.as_secs_f64() - self.fault_at.as_secs_f64(),
                    s.reply.took.as_secs_f64()
                )
            })
            .collect();
        eprintln!(
            "{what}: {} requests ({WORKERS} loops, one every {INTERVAL:?}), {} failed {failed:?}; \
             served before {before:?}, after {after:?} (\"\" = no answer); first answer from {to} \
             {:.2} s after the fault; east's sidecar has ejected {} endpoint(s) so far",
            self.samples.len(),
            failed.len(),
            first.map_or(f64::NAN, |d| d.as_secs_f64()),
            lab.ejections(),
        );
    }
}

/// Runs steady traffic to echo.demo by its `cluster.local` name, applies
/// `fault` after a second, and keeps going until `settled()` and 10
/// requests in a row after it were answered by `to` (at most `limit`).
fn under_traffic(
    lab: &Lab,
    vip: &str,
    fault: impl FnOnce(),
    settled: impl Fn() -> bool,
    to: &str,
    limit: Duration,
) -> Run {
    let samples = Mutex::new(Vec::<Sample>::new());
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let mut fault_at = Duration::ZERO;
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let at = t0.elapsed();
                    let reply = lab.get(LOCAL, vip);
                    samples.lock().unwrap().push(Sample { at, reply });
                    pause(INTERVAL.as_millis() as u64);
                }
            });
        }
        pause(1000);
        fault_at = t0.elapsed();
        fault();
        let deadline = Instant::now() + limit;
        loop {
            let done = {
                let all = samples.lock().unwrap();
                let after: Vec<&Sample> = all.iter().filter(|s| s.at > fault_at).collect();
                after.len() >= 10 && after.iter().rev().take(10).all(|s| s.reply.ok_from(to))
            };
            if (done && settled()) || Instant::now() > deadline {
                break;
            }
            pause(100);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut samples = samples.into_inner().unwrap();
    samples.sort_by_key(|s| s.at);
    let run = Run { samples, fault_at };
    let after: Vec<&Sample> = run.samples.iter().filter(|s| s.at > fault_at).collect();
    assert!(
        after.len() >= 10 && after.iter().rev().take(10).all(|s| s.reply.ok_from(to)) && settled(),
        "traffic did not settle on {to} within {limit:?} of the fault"
    );
    run
}

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
    if let Some(why) = missing() {
        eprintln!("SKIP lab_east_reaches_west_through_capture_and_gateways_and_fails_over: {why}");
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
    assert!(
        !direct.status.success(),
        "a pod reached west's pod directly"
    );
    assert!(lab.router_count("anything else between subnets") > dropped);
    only_gateways_crossed(&lab);
    eprintln!("flows that crossed the router: {flows:?}");

    // Bound on failed requests per fault: IN_FLIGHT. A fault that sends
    // nothing back (a link down, a partition's drops) is learned only by
    // requests that fail on it: the ones in flight, at most one per loop,
    // and the sidecar's outlier detection (5 failures; each request tries
    // up to 3 times) ejects west before the next round does.

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
    eprintln!(
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
    eprintln!(
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
    eprintln!("partition: east's link to west {}", west["sync"]);
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
    eprintln!("flows that crossed the router by the end: {}", flows.len());
    drop(lab);
    let left = leftovers(&prefix, &dir);
    assert!(left.is_empty(), "the lab left {left:?}");
    eprintln!(
        "lab test done in {:.1} s, nothing left",
        started.elapsed().as_secs_f64()
    );
}
