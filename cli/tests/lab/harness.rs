//! The lab's harness: `scripts/lab.sh` driven from a test (up, down on
//! drop, faults), commands in its namespaces, an unmodified `curl` in
//! east's client pod, and what the lab shows (sidecar config and metrics,
//! `strait status`, the router's flows and counters).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::pause;
pub use crate::support::root::{run, text};
use crate::{LOCAL, SCRIPT, WEST_ECHO};

/// Why this machine cannot run the lab, if it cannot.
pub fn missing() -> Option<String> {
    crate::support::root::missing(&[
        ("bash", "--version"),
        ("ip", "-V"),
        ("nft", "--version"),
        ("curl", "--version"),
        ("python3", "--version"),
        ("setpriv", "--version"),
    ])
}

/// A running lab; `lab.sh down` on drop, then its directory goes (kept,
/// with every log, when the test failed).
pub struct Lab {
    pub prefix: String,
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn up() -> Self {
        let lab = Self {
            prefix: format!("hl{}", std::process::id()),
            dir: Some(tempfile::tempdir().unwrap()),
        };
        let started = Instant::now();
        let out = lab.sh(&["up"]);
        assert!(out.status.success(), "lab.sh up failed:\n{}", text(&out));
        say!("lab up in {:.1} s", started.elapsed().as_secs_f64());
        lab
    }

    pub fn sh(&self, args: &[&str]) -> Output {
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

    pub fn must_sh(&self, args: &[&str]) {
        let out = self.sh(args);
        assert!(out.status.success(), "lab.sh {args:?}: {}", text(&out));
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    pub fn strait_json(&self, args: &[&str]) -> serde_json::Value {
        let bin = self.dir().join("bin/strait");
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.exec("router", &all);
        assert!(out.status.success(), "strait {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// East's client sidecar's view of echo.demo (admin `/config`).
    pub fn east_echo(&self) -> Option<serde_json::Value> {
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
    pub fn west_health(&self) -> Option<String> {
        let echo = self.east_echo()?;
        let west = echo["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == WEST_ECHO)?;
        Some(west["health"].as_str()?.to_owned())
    }

    /// East's link to west, as `strait status -o json` shows it.
    pub fn west_link(&self) -> serde_json::Value {
        let status = self.strait_json(&["status", "-o", "json", "--controller", "10.24.1.10:8611"]);
        status[0]["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["peer"] == "west"))
            .unwrap_or_else(|| panic!("east has no link to west: {status}"))
            .clone()
    }

    /// Endpoints east's client sidecar has ejected so far (outlier
    /// detection), over every service and reason.
    pub fn ejections(&self) -> u64 {
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
    pub fn vip(&self) -> String {
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
    pub fn get(&self, name: &str, vip: &str) -> Reply {
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
            exit: out.status.code().unwrap_or(-1),
            status,
            served_by,
            body,
            took: started.elapsed(),
        }
    }

    /// Waits until `times` requests in a row are answered by `cluster`;
    /// returns how long that took.
    pub fn wait_served_by(&self, vip: &str, cluster: &str, limit: Duration) -> Duration {
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
    pub fn crossed(&self) -> Vec<[String; 4]> {
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
    pub fn router_count(&self, comment: &str) -> u64 {
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
            say!("lab.sh down failed: {}", text(&out));
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            say!("lab logs kept in {}", dir.keep().display());
        }
    }
}

pub struct Reply {
    /// curl's exit code (0, or e.g. 18: the body ended early).
    pub exit: i32,
    pub status: u16,
    pub served_by: String,
    pub body: String,
    pub took: Duration,
}

impl Reply {
    pub fn ok_from(&self, cluster: &str) -> bool {
        self.status == 200 && self.served_by == cluster
    }
}
