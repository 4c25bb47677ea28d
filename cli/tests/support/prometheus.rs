//! Prometheus for tests (cli/tests/monitoring.rs): `promtool`, the
//! shipped `monitoring/` files made into a config for a test mesh, the HTTP
//! API, the dashboards' queries and the metrics reference of
//! docs/observability.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pause;

/// Where the monitoring test's Prometheus listens.
pub const PROMETHEUS: &str = "127.177.9.1:9090";

pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// Whether `tool --version` runs; prints SKIPPED when not.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("STRAIT_REQUIRE_PROMETHEUS").is_none(),
            "{tool} was installed by scripts/test.sh but does not run"
        );
        eprintln!(
            "SKIPPED: {tool} is not installed (Debian: apt-get install prometheus; scripts/test.sh does it as root)"
        );
    }
    ok
}

pub fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    eprintln!("promtool {args:?}:\n{text}");
}

/// `GET path` over HTTP/1.0 (no chunked answers): (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API call's `data`, or why it failed.
pub fn api(path: &str) -> Result<serde_json::Value, String> {
    let (code, body) = http_get(PROMETHEUS, path);
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{path}: {code} {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{path}: {code} {body}"));
    }
    Ok(v["data"].clone())
}

/// The series an instant query returns.
pub fn query(expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let data = api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// A dashboard query as Prometheus runs it: Grafana's interval and every
/// variable (all values) filled in.
pub fn concrete(expr: &str) -> String {
    let mut out = expr.replace("$__rate_interval", "30s");
    for var in [
        "service",
        "source_cluster",
        "destination_cluster",
        "cluster",
    ] {
        out = out.replace(&format!("${var}"), ".+");
    }
    assert!(!out.contains('$'), "unknown variable in {expr}");
    out
}

/// `label_values(metric, label)` as a query returning one series per value.
pub fn variable_query(q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected variable query {q}"));
    let (metric, label) = inner.split_once(',').expect("metric, label");
    let label = label.trim();
    format!("count by ({label}) ({metric}{{{label}!=\"\"}})")
}

/// (dashboard file, panel title, expression) of every panel target, and
/// (dashboard file, variable query) of every query variable.
pub type Panels = Vec<(String, String, String)>;
pub fn dashboards() -> (Panels, Vec<(String, String)>) {
    let mut panels = Vec::new();
    let mut vars = Vec::new();
    let dir = monitoring_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "four dashboards in {}", dir.display());
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert!(d["uid"].is_string() && d["title"].is_string(), "{name}");
        for p in d["panels"].as_array().expect("panels") {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {} has no query", p["title"]);
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}");
            for t in targets {
                panels.push((
                    name.clone(),
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                vars.push((
                    name.clone(),
                    v["query"]["query"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    (panels, vars)
}

/// The metrics reference: name -> (type, labels).
pub fn reference() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md"),
    )
    .unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `strait_"))
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = c[3]
                .split(',')
                .map(|x| x.trim().trim_matches('`').to_owned())
                .filter(|x| !x.is_empty() && x != "—")
                .collect();
            (c[1].trim_matches('`').to_owned(), (c[2].to_owned(), labels))
        })
        .collect()
}

/// A job's targets of one cluster, from its address prefix and sidecars.
pub type Ports<'a> = &'a dyn Fn(&str, &[String]) -> Vec<String>;

/// Writes `targets/*.json` for this mesh ((cluster, address prefix, its
/// sidecars' admin addresses)) and the shipped config with 1 s intervals
/// into `dir`.
pub fn prometheus_files(dir: &Path, clusters: &[(&str, String, Vec<String>)]) {
    let mon = monitoring_dir();
    let config = std::fs::read_to_string(mon.join("prometheus.yml")).unwrap();
    assert!(config.contains("scrape_interval: 15s") && config.contains("evaluation_interval: 15s"));
    let config = config
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(mon.join("rules.yml"), dir.join("rules.yml")).unwrap();
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    let group = |port_of: Ports<'_>| {
        let groups: Vec<serde_json::Value> = clusters
            .iter()
            .map(|(name, prefix, sidecars)| {
                serde_json::json!({ "targets": port_of(prefix, sidecars), "labels": { "cluster": name } })
            })
            .collect();
        serde_json::to_string_pretty(&groups).unwrap()
    };
    let files: [(&str, Ports<'_>); 5] = [
        ("sidecars", &|p, s| {
            let mut t = s.to_vec();
            t.push(format!("{p}.1:15100"));
            t
        }),
        ("gateways", &|p, _| vec![format!("{p}.1:15021")]),
        ("controllers", &|p, _| vec![format!("{p}.1:8611")]),
        ("dns", &|p, _| vec![format!("{p}.1:8654")]),
        ("ca", &|p, _| vec![format!("{p}.1:8621")]),
    ];
    for (file, ports) in files {
        std::fs::write(
            dir.join("targets").join(format!("{file}.json")),
            group(ports),
        )
        .unwrap();
    }
}

/// Waits until `what` holds, up to `limit`; returns the last error.
pub fn eventually<T>(
    limit: Duration,
    mut what: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match what() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => pause(500),
        }
    }
}
