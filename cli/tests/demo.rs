//! `strait demo` run as a user would: in the background, then curl across
//! clusters, `strait status -o json`, Ctrl-C (SIGINT), and nothing left
//! running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn strait() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strait"))
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[allow(clippy::disallowed_methods)] // a synchronous test driving a child process
fn demo_serves_across_clusters_reports_status_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = strait()
        .args(["demo", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read the banner until the curl lines appear.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut vip_curl = None;
    let mut proxy_curl = None;
    while vip_curl.is_none() || proxy_curl.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo did not print its curl lines in time");
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("curl -x ") {
            proxy_curl = Some(
                rest.split_whitespace()
                    .take(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        } else if let Some(rest) = t.strip_prefix("curl ") {
            vip_curl = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
    }
    // east has no echo: the answer comes from west (first in failover order).
    let body = curl(&[vip_curl.as_deref().unwrap()]);
    assert!(body.starts_with("west/echo-"), "{body}");
    assert!(
        body.contains("URI=spiffe://strait.local/ns/default/sa/client"),
        "west sees east's client identity: {body}"
    );
    let p = proxy_curl.unwrap();
    let body = curl(&[
        "-x",
        &format!("http://{}", p[0].trim_start_matches("http://")),
        &p[1],
    ]);
    assert!(body.starts_with("west/echo-"), "{body}");

    let out = strait()
        .args(["status", "-o", "json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clusters: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["east", "west", "central"]);
    let east = &v[0];
    assert_eq!(east["links"].as_array().unwrap().len(), 2);
    let echo = east["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "echo")
        .unwrap();
    assert_eq!(echo["serving"]["cluster"], "west", "{echo}");

    // Ctrl-C: the demo stops everything and exits 0.
    let rc = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "demo exit status {status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "demo process is gone"
    );
    // Its listeners are closed: the VIP refuses connections now.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "2"])
        .arg(vip_curl.unwrap())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nothing answers after the demo stopped"
    );
    assert!(
        !dir.join("demo.json").exists(),
        "demo.json is removed on exit"
    );
}
