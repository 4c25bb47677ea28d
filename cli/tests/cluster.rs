//! `strait cluster up|down`, `strait check` and `strait diagnose` against
//! real background processes on loopback (127.152.x.y), as an operator
//! runs them. Every test stops the clusters it started, also when it fails.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(dir: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = strait(dir, &[&["-o", "json"][..], args].concat());
    let (stdout, stderr) = text(&out);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("strait {args:?}: not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code(), v)
}

/// Polls `f` until it returns `Some` (at most 30 s), or panics with `what`.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("{what}: {last}"),
            Err(_) => pause(250),
        }
    }
}

/// Whether a process runs (a zombie has exited).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

/// Runs `cluster down` for its clusters on drop and kills whatever is
/// still recorded, so no test leaves processes behind.
struct Mesh {
    dir: PathBuf,
    clusters: Vec<&'static str>,
    _tmp: tempfile::TempDir,
}

impl Mesh {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Self {
            dir: tmp.path().join("mesh"),
            clusters: Vec::new(),
            _tmp: tmp,
        }
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn up(&mut self, name: &'static str, ip: &str, region: &str) -> String {
        self.clusters.push(name);
        let zone = format!("{region}-1a");
        let d = self.dir().to_owned();
        ok(
            Path::new("/"),
            &[
                "cluster", "up", name, "--dir", &d, "--ip", ip, "--region", region, "--zone", &zone,
            ],
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &self.clusters {
            let left = cluster_pids(&self.dir, c);
            let _ = strait(Path::new("/"), &["cluster", "down", c, "--dir", self.dir()]);
            for (_, pid) in left {
                if running(pid) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
    }
}

fn finding<'a>(lines: &'a serde_json::Value, cluster: &str, check: &str) -> &'a serde_json::Value {
    lines
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cluster"] == cluster && l["check"] == check)
        .unwrap_or_else(|| panic!("no check {check:?} of {cluster} in {lines:#}"))
}

#[test]
fn cluster_up_link_check_then_down_reports_the_missing_peer_and_leaves_no_process() {
    let mut mesh = Mesh::new();
    let out = mesh.up("east", "127.152.1.1", "us-east");
    assert!(out.contains("cluster east is up"), "{out}");
    assert!(out.contains("127.152.1.1:8611"), "{out}");
    let out = mesh.up("west", "127.152.2.1", "us-west");
    assert!(
        out.contains(&format!(
            "strait link --from west --to east --dir {}",
            mesh.dir()
        )),
        "the next steps name the other cluster: {out}"
    );
    let d = mesh.dir().to_owned();
    let east_pids = cluster_pids(&mesh.dir, "east");
    let west_pids = cluster_pids(&mesh.dir, "west");
    let roles: Vec<&str> = west_pids.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["ca", "controller", "gateway", "dns", "egress"]);
    assert!(west_pids.iter().all(|(_, p)| running(*p)));

    // `up` on a running cluster changes nothing.
    let out = ok(Path::new("/"), &["cluster", "up", "east", "--dir", &d]);
    assert!(out.contains("cluster east is already running"), "{out}");
    assert_eq!(cluster_pids(&mesh.dir, "east"), east_pids);

    // The operator verbs find `cluster up` clusters by name in the directory.
    let out = ok(
        Path::new("/"),
        &["link", "--from", "east", "--to", "west", "--dir", &d],
    );
    assert!(out.contains("linked with west"), "{out}");

    let lines = eventually("check passes once the link syncs", || {
        let (code, v) = json(Path::new("/"), &["check", "--dir", &d]);
        if code == Some(0) {
            Ok(v)
        } else {
            Err(format!("exit {code:?}: {v:#}"))
        }
    });
    for (cluster, peer) in [("east", "west"), ("west", "east")] {
        for check in [
            "controller".to_owned(),
            "certificates".to_owned(),
            format!("link {peer}"),
            "gateway".to_owned(),
            format!("gateway of {peer}"),
            format!(
                "dns {}",
                if cluster == "east" {
                    "127.152.1.1:8653"
                } else {
                    "127.152.2.1:8653"
                }
            ),
            "conflicts".to_owned(),
        ] {
            let f = finding(&lines, cluster, &check);
            assert_eq!(f["verdict"], "pass", "{f:#}");
        }
    }
    // The controllers' certificates come from the CA service (no files):
    // check reads what each presents now, with its 24-hour life.
    let certs = finding(&lines, "east", "certificates");
    let detail = certs["detail"].as_str().unwrap();
    assert!(
        detail.contains("(presented by the controller)"),
        "{certs:#}"
    );
    assert!(
        detail.starts_with("certificate expires in 23h"),
        "{certs:#}"
    );
    assert!(
        !mesh.dir.join("certs").exists(),
        "cluster up wrote certificate files"
    );
    let human = ok(Path::new("/"), &["check", "--dir", &d, "--cluster", "east"]);
    assert!(human.contains("✓ link west: sync up"), "{human}");
    assert!(
        human.contains("check(s):") && human.contains(" 0 failed"),
        "{human}"
    );

    // Every component is scraped: DNS counted check's queries on its admin port.
    let get = |path: &str| admin_get("127.152.1.1:8654", path);
    let metrics = get("/metrics");
    assert!(
        metrics.contains("strait_dns_queries_total{type=\"SOA\",rcode=\"NOERROR\"}"),
        "{metrics}"
    );
    assert_eq!(get("/ready"), "ready\n");

    // west goes down: its processes are gone and east's check fails on it.
    let out = ok(Path::new("/"), &["cluster", "down", "west", "--dir", &d]);
    assert!(out.contains("cluster west is down"), "{out}");
    for (role, pid) in &west_pids {
        assert!(!running(*pid), "west's {role} (pid {pid}) still runs");
    }
    assert!(!mesh.dir.join("clusters/west/pids.json").exists());
    let lines = eventually("east's check fails on west", || {
        let (code, v) = json(Path::new("/"), &["check", "--dir", &d, "--cluster", "east"]);
        if code == Some(1) && finding(&v, "east", "link west")["verdict"] == "fail" {
            Ok(v)
        } else {
            Err(format!("exit {code:?}: {v:#}"))
        }
    });
    let link = finding(&lines, "east", "link west");
    assert!(
        link["hint"].as_str().unwrap().contains("127.152.2.1:8610"),
        "{link:#}"
    );
    assert_eq!(
        finding(&lines, "east", "gateway of west")["verdict"],
        "fail"
    );
    assert_eq!(finding(&lines, "east", "controller")["verdict"], "pass");
    assert_eq!(finding(&lines, "east", "gateway")["verdict"], "pass");
    let out = strait(Path::new("/"), &["check", "--dir", &d, "--cluster", "east"]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("✗ link west: sync down"), "{stdout}");
    assert!(
        stderr.starts_with("error: 2 of 7 check(s) failed"),
        "{stderr}"
    );
    // The whole directory: west is reported as not running.
    let (code, v) = json(Path::new("/"), &["check", "--dir", &d]);
    assert_eq!(code, Some(1));
    let f = finding(&v, "west", "controller");
    assert!(
        f["detail"].as_str().unwrap().contains("not running"),
        "{f:#}"
    );
    assert!(
        f["hint"]
            .as_str()
            .unwrap()
            .contains("strait cluster up west"),
        "{f:#}"
    );

    // down on a stopped cluster says so and succeeds.
    let out = ok(Path::new("/"), &["cluster", "down", "west", "--dir", &d]);
    assert_eq!(out.trim(), "cluster west is not running");
    let (code, v) = json(Path::new("/"), &["cluster", "down", "east", "--dir", &d]);
    assert_eq!(code, Some(0));
    assert_eq!(v["was_running"], true);
    let ended: Vec<&str> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ended"].as_str().unwrap())
        .collect();
    assert_eq!(ended, ["stopped"; 5]);
    for (role, pid) in &east_pids {
        assert!(!running(*pid), "east's {role} (pid {pid}) still runs");
    }
}

#[test]
fn diagnose_passes_a_healthy_path_and_names_catalog_then_gateway_failures() {
    let mut mesh = Mesh::new();
    mesh.up("north", "127.152.3.1", "eu-north");
    mesh.up("south", "127.152.4.1", "eu-south");
    let d = mesh.dir().to_owned();
    // south's echo endpoint: a listener of this test, health-checked by
    // south's controller over TCP every second.
    let ep = "127.152.4.5:15006";
    let endpoint = TcpListener::bind(ep).unwrap();
    let reg = mesh.dir.join("echo.yaml");
    std::fs::write(
        &reg,
        format!(
            "name: echo\nnamespace: demo\nports: [{{ port: 8080, protocol: http1 }}]\n\
             endpoints: [{{ address: \"{ep}\" }}]\nexport: all\n\
             health_check: {{ kind: tcp, interval: 1s }}\n"
        ),
    )
    .unwrap();
    let r = reg.to_str().unwrap();
    ok(
        Path::new("/"),
        &[
            "service",
            "register",
            "-f",
            r,
            "--cluster",
            "south",
            "--dir",
            &d,
        ],
    );
    ok(
        Path::new("/"),
        &["link", "--from", "north", "--to", "south", "--dir", &d],
    );

    let diag = |svc: &str| {
        json(
            Path::new("/"),
            &[
                "diagnose", svc, "-n", "demo", "--from", "north", "--dir", &d,
            ],
        )
    };
    let healthy = eventually("diagnose passes every hop", || match diag("echo") {
        (Some(0), v) => Ok(v),
        (code, v) => Err(format!("exit {code:?}: {v:#}")),
    });
    assert_eq!(healthy["serving"], "south", "{healthy:#}");
    assert!(healthy["failed_hop"].is_null(), "{healthy:#}");
    let hops: Vec<(&str, &str)> = healthy["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["check"].as_str().unwrap(), h["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hops,
        [
            ("dns", "pass"),
            ("catalog", "pass"),
            ("trust", "pass"),
            ("gateway", "pass"),
            ("endpoints", "pass"),
        ]
    );
    let dns = healthy["hops"][0]["detail"].as_str().unwrap();
    // North serves no echo itself: clients without a sidecar are answered
    // north's egress (which carries them to south's gateway over mTLS).
    assert!(dns.contains("(egress of north"), "{dns}");

    // An unknown service: the DNS answer agrees (NXDOMAIN), the catalog is named.
    let (code, v) = diag("nope");
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["failed_hop"], "catalog", "{v:#}");
    assert_eq!(v["hops"][0]["verdict"], "pass", "{v:#}");
    assert!(
        v["hops"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("no service demo/nope")
    );

    // The endpoint goes away: DNS has nothing to answer with (in line with
    // the catalog), link and gateway work, the endpoints hop is named.
    drop(endpoint);
    let v = eventually("diagnose names the endpoints", || match diag("echo") {
        (Some(1), v) if v["failed_hop"] == "endpoints" => Ok(v),
        (code, v) => Err(format!("exit {code:?}: {v:#}")),
    });
    let verdicts: Vec<&str> = v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["pass", "pass", "pass", "pass", "fail"], "{v:#}");
    assert!(
        v["hops"][4]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{ep} unhealthy")),
        "{v:#}"
    );
    let _endpoint = TcpListener::bind(ep).unwrap();
    eventually("the endpoint is healthy again", || match diag("echo") {
        (Some(0), v) => Ok(v),
        (code, v) => Err(format!("exit {code:?}: {v:#}")),
    });

    // south's gateway stops; everything before it still works, so the gateway is named.
    let (_, gw) = cluster_pids(&mesh.dir, "south")
        .into_iter()
        .find(|(r, _)| r == "gateway")
        .unwrap();
    assert!(
        Command::new("kill")
            .arg(gw.to_string())
            .status()
            .unwrap()
            .success()
    );
    eventually("south's gateway exits", || {
        if running(gw) {
            Err("still running".into())
        } else {
            Ok(())
        }
    });
    let out = strait(
        Path::new("/"),
        &[
            "diagnose", "echo", "-n", "demo", "--from", "north", "--dir", &d,
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✓ trust: linked with south"), "{stdout}");
    assert!(
        stdout.contains("✗ gateway: south's gateway is unreachable: 127.152.4.1:15443"),
        "{stdout}"
    );
    assert!(stdout.contains("first failing hop: gateway"), "{stdout}");
    assert!(stderr.contains("the gateway hop fails"), "{stderr}");
    let (_, v) = diag("echo");
    assert_eq!(v["failed_hop"], "gateway", "{v:#}");
}

#[test]
fn check_and_diagnose_explain_what_they_cannot_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = strait(d, &["check", "--dir", "."]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("no cluster of `strait cluster up --dir .`"),
        "{:?}",
        text(&out)
    );
    let (code, v) = json(d, &["check", "--controller", "127.152.9.9:8611"]);
    assert_eq!(code, Some(1));
    assert_eq!(v[0]["check"], "controller");
    assert_eq!(v[0]["verdict"], "fail");
    assert!(
        v[0]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach the controller admin port at 127.152.9.9:8611"),
        "{v:#}"
    );
    assert_eq!(v[1]["verdict"], "skip", "no --chain: {v:#}");
    let (code, v) = json(
        d,
        &[
            "diagnose",
            "echo",
            "--from",
            "east",
            "--controller",
            "127.152.9.9:8611",
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["failed_hop"], "catalog", "{v:#}");
    let out = strait(d, &["cluster", "down", "nothing", "--dir", "."]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out).0.trim(), "cluster nothing is not running");
    let out = strait(d, &["cluster", "up", "Bad_Name", "--dir", "."]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("bad cluster name \"Bad_Name\""),
        "{:?}",
        text(&out)
    );
    // Each verb's --help teaches by example.
    let help = text(&strait(d, &["check", "--help"])).0;
    assert!(
        help.contains("strait check --dir ./mesh --cluster east"),
        "{help}"
    );
    let help = text(&strait(d, &["diagnose", "--help"])).0;
    assert!(
        help.contains("strait diagnose echo -n demo --from east"),
        "{help}"
    );
    let help = text(&strait(d, &["cluster", "up", "--help"])).0;
    assert!(
        help.contains("strait cluster up east --region us-east --zone us-east-1a"),
        "{help}"
    );
}

/// A role of `cluster up` gets its certificate with a one-time token and
/// keeps it: `kill -9` and the same command again start from what it
/// kept, while a copy without the kept files is refused the spent token.
#[test]
fn a_role_restarted_by_its_own_command_starts_from_the_certificate_it_kept() {
    let mut mesh = Mesh::new();
    mesh.up("solo", "127.152.5.1", "us-solo");
    let home = mesh.dir.join("clusters/solo");
    let kept = home.join("identity/controller");
    assert!(kept.join("chain.pem").exists() && kept.join("key.pem").exists());
    let trust = || -> serde_json::Value {
        serde_json::from_str(&admin_get("127.152.5.1:8611", "/trust")).unwrap()
    };
    let before = trust();
    let pid = cluster_pids(&mesh.dir, "solo")
        .into_iter()
        .find(|(role, _)| role == "controller")
        .map(|(_, pid)| pid)
        .unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    eventually("the controller is gone", || {
        if running(pid) {
            Err("running".into())
        } else {
            Ok(())
        }
    });
    let config = home.join("controller.yaml");
    let _ctl = spawn(
        &home,
        &["controller", "--config", config.to_str().unwrap()],
        "controller-again.log",
    );
    wait_for("127.152.5.1:8611".parse().unwrap());
    let after: serde_json::Value = eventually("the restarted controller answers /trust", || {
        let body = admin_get("127.152.5.1:8611", "/trust");
        serde_json::from_str(&body).map_err(|e| {
            let log =
                std::fs::read_to_string(home.join("controller-again.log")).unwrap_or_default();
            format!("{e}: {body:?}; log: {log}")
        })
    });
    assert_eq!(after["spiffe_id"], before["spiffe_id"], "{after:#}");
    assert_eq!(after["chain"], before["chain"], "the kept certificate");
    // The same config without the kept files: the token was spent.
    let text = std::fs::read_to_string(&config).unwrap();
    let fresh = text.replace(
        kept.to_str().unwrap(),
        home.join("nothing-kept").to_str().unwrap(),
    );
    assert_ne!(fresh, text);
    let copy = home.join("controller-copy.yaml");
    std::fs::write(&copy, fresh).unwrap();
    let err = fails(&home, &["controller", "--config", copy.to_str().unwrap()]);
    assert!(
        err.contains("token_used") && err.contains("create a new one"),
        "{err}"
    );
}
