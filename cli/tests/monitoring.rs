//! A running mesh as an operator watches it: `strait top` and the real
//! Prometheus (Debian's `prometheus` package, which brings `promtool`) with
//! the rules, scrape config and dashboards of `monitoring/`.
//!
//! 1. `promtool check rules` and `promtool test rules` pass;
//! 2. two `strait cluster up` clusters on 127.177.{1,2}.x (east, west),
//!    linked; `echo` (a Python app) with a sidecar in each and a client
//!    sidecar in east, all added with `strait sidecar add`; requests from
//!    the client are served in east, then, once east's app is stopped, fail
//!    over to west (retries, an ejection, the failover gauge, gateway
//!    tunnels and bytes); a plaintext connection is refused by a sidecar
//!    and by west's gateway;
//! 3. `strait top` / `strait stat` (the binary, reading the mesh dir) show
//!    east -> east, then east -> west with rates, success and p50/p99, and
//!    the link's gateway bytes;
//! 4. `prometheus` (temporary storage, listening on 127.177.9.1) runs the
//!    shipped `prometheus.yml` and `rules.yml` (intervals cut to 1 s) with
//!    `targets/*.json` written for this mesh, until all 13 targets are up;
//!    every panel query and every variable of every dashboard returns
//!    series through the HTTP API, every rule evaluates without error, and
//!    every scraped `strait_*` series is in docs/observability.md's
//!    reference with its type and its documented labels.
//!
//! Without python3 it is skipped; without Prometheus, steps 1 and 4 are
//! (with a SKIPPED line; scripts/test.sh installs it as root and then
//! requires it).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::clusters::{App, Clusters, have_python};
use support::prometheus::*;
use support::traffic::Load;
use support::*;

const NET: &str = "127.177";

/// Opens a connection to `addr`, sends plaintext, and waits for the close.
fn plaintext_at(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// `strait top` through the binary, as JSON.
fn top(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let d = dir.display().to_string();
    let mut args = vec!["-o", "json", "top", "--dir", &d, "--interval", "2s"];
    args.extend(extra);
    let out = ok(dir, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The row of `top`'s `services` for echo.demo from `from` to `to`.
fn echo_row(top: &serde_json::Value, from: &str, to: &str) -> Option<serde_json::Value> {
    top["services"]
        .as_array()?
        .iter()
        .find(|r| {
            r["service"] == "echo.demo"
                && r["source_cluster"] == from
                && r["destination_cluster"] == to
        })
        .cloned()
}

#[test]
fn a_running_mesh_is_seen_by_strait_top_and_by_prometheus_with_the_shipped_rules_and_dashboards() {
    if !have_python() {
        return;
    }
    let prometheus = have("promtool") && have("prometheus");
    if prometheus {
        promtool(&["check", "rules", "rules.yml"]);
        promtool(&["test", "rules", "rules_test.yml"]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let clusters = Clusters::up(&dir, NET, &[("east", "us-east"), ("west", "us-west")]);
    clusters.link("east", "west");
    let mut east_app = Some(App::start(&dir, "east", &format!("{NET}.1.5")));
    let _west_app = App::start(&dir, "west", &format!("{NET}.2.5"));
    let east_echo = clusters.add_sidecar("echo", "east", Some(&format!("{NET}.1.5:18080")));
    let west_echo = clusters.add_sidecar("echo", "west", Some(&format!("{NET}.2.5:18080")));
    let client = clusters.add_sidecar("client", "east", None);
    clusters.wait_healthy("east", &["east", "west"]);
    let outbound = client["outbound"].as_str().unwrap().parse().unwrap();
    let load = Load::start(outbound);
    let t0 = Instant::now();
    load.settled_on(t0, "east", Duration::from_secs(10));

    // strait top sees east's traffic served in east, from the mesh dir.
    let seen = top(&dir, &[]);
    let row =
        echo_row(&seen, "east", "east").unwrap_or_else(|| panic!("no east -> east row: {seen:#}"));
    assert!(row["requests_per_second"].as_f64().unwrap() > 5.0, "{row}");
    assert_eq!(row["success_rate"], 1.0, "{row}");
    let kinds: BTreeSet<&str> = seen["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["egress", "gateway", "sidecar"].into_iter().collect(),
        "{seen:#}"
    );
    assert_eq!(
        seen["targets"].as_array().unwrap().len(),
        7,
        "2 gateways, 2 egresses, 3 sidecars: {seen:#}"
    );

    // East's app stops: its sidecar answers 503 app_unavailable, requests
    // are retried at west, east's endpoint is ejected, traffic fails over.
    drop(east_app.take());
    let t1 = Instant::now();
    load.settled_on(t1, "west", Duration::from_secs(10));
    let client_admin = client["admin"].as_str().unwrap().to_owned();
    let gauge = "strait_failover_active{service=\"echo.demo\",from=\"east\",to=\"west\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_get(&client_admin, "/metrics").contains(gauge) {
        assert!(
            Instant::now() < deadline,
            "east's client sidecar never showed {gauge}:\n{}",
            admin_get(&client_admin, "/metrics")
        );
        pause(100);
    }

    // strait stat (the alias) for east only: served by west now, through
    // west's gateway (whose link figures come with --cluster west).
    let east_only = top(&dir, &["--cluster", "east"]);
    let row = echo_row(&east_only, "east", "west")
        .unwrap_or_else(|| panic!("no east -> west row: {east_only:#}"));
    assert!(row["requests_per_second"].as_f64().unwrap() > 5.0, "{row}");
    assert!(row["success_rate"].as_f64().unwrap() > 0.99, "{row}");
    let (p50, p99) = (
        row["p50_ms"].as_f64().unwrap(),
        row["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 5000.0, "{row}");
    assert!(
        east_only["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["cluster"] == "east")
    );
    let d = dir.display().to_string();
    let human = ok(
        &dir,
        &[
            "stat",
            "--dir",
            &d,
            "--cluster",
            "west",
            "--interval",
            "2s",
            "--once",
        ],
    );
    let link = human
        .lines()
        .find(|l| l.starts_with("east -> west"))
        .unwrap_or_else(|| panic!("{human}"));
    let cells: Vec<&str> = link.split_whitespace().collect();
    assert_eq!(cells[3], "echo.demo", "{human}");
    assert!(
        cells[6].parse::<f64>().unwrap() > 0.0,
        "bytes in over the link: {human}"
    );
    assert!(human.starts_with("SERVICE"), "{human}");
    let err = fails(&dir, &["top", "--dir", &d, "--cluster", "north"]);
    assert!(err.contains("no cluster north"), "{err}");
    let err = fails(
        &dir,
        &[
            "top",
            "--target",
            &format!("{NET}.9.9:9"),
            "--interval",
            "100ms",
        ],
    );
    assert!(err.contains("no target answered"), "{err}");

    plaintext_at(east_echo["inbound"].as_str().unwrap());
    plaintext_at(&format!("{NET}.2.1:15443"));
    if !prometheus {
        drop(load);
        return;
    }

    // Prometheus with the shipped config, scraping this mesh.
    let prom = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom).unwrap();
    let admin = |v: &serde_json::Value| v["admin"].as_str().unwrap().to_owned();
    let clusters_at = [
        (
            "east",
            clusters.prefix("east"),
            vec![admin(&east_echo), admin(&client)],
        ),
        ("west", clusters.prefix("west"), vec![admin(&west_echo)]),
    ];
    prometheus_files(&prom, &clusters_at);
    let log = std::fs::File::create(prom.join("prometheus.log")).unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                prom.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .current_dir(&prom)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom_log = || std::fs::read_to_string(prom.join("prometheus.log")).unwrap_or_default();
    eventually(Duration::from_secs(30), || {
        match http_get(PROMETHEUS, "/-/ready") {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("prometheus not ready: {e}\n{}", prom_log()));
    let started = Instant::now();
    eventually(Duration::from_secs(60), || {
        let targets = api("/api/v1/targets")?;
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let down: Vec<String> = active
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
            .collect();
        if active.len() == 13 && down.is_empty() {
            Ok(())
        } else {
            Err(format!("{} targets, not up: {down:#?}", active.len()))
        }
    })
    .unwrap_or_else(|e| panic!("targets: {e}\n{}", prom_log()));
    eprintln!("all 13 targets up after {:?}", started.elapsed());

    // Every panel and variable returns series (recording rules need a few
    // evaluations, rates two scrapes).
    let (panels, vars) = dashboards();
    let mut failed = Vec::new();
    for (file, title, expr) in &panels {
        let q = concrete(expr);
        match eventually(Duration::from_secs(20), || match query(&q) {
            Ok(r) if !r.is_empty() => Ok(r.len()),
            Ok(_) => Err("no series".to_owned()),
            Err(e) => Err(e),
        }) {
            Ok(n) => eprintln!("ok   {file} / {title}: {n} series"),
            Err(e) => failed.push(format!("{file} / {title}: {q}: {e}")),
        }
    }
    for (file, v) in &vars {
        let q = variable_query(v);
        match query(&q) {
            Ok(r) if !r.is_empty() => eprintln!("ok   {file} variable {v}: {} values", r.len()),
            other => failed.push(format!("{file} variable {v}: {q}: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} dashboard queries returned nothing:\n{}",
        failed.len(),
        panels.len() + vars.len(),
        failed.join("\n")
    );

    // Every rule evaluates without error.
    let rules = api("/api/v1/rules").unwrap();
    let mut n = 0;
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            n += 1;
            assert_eq!(r["health"], "ok", "rule {} : {}", r["name"], r["lastError"]);
        }
    }
    assert_eq!(n, 16, "every rule of rules.yml is loaded");

    // Every scraped series is documented, with its labels and type.
    let reference = reference();
    let series = api(&format!(
        "/api/v1/series?match[]={}",
        urlencode("{__name__=~\"strait_[a-z_]+\"}")
    ))
    .unwrap();
    // An empty label value is no label to Prometheus (outbound requests'
    // `source_principal`), so each series shows a subset of its family's
    // labels and the family's series together show all of them.
    let mut undocumented = BTreeSet::new();
    let mut shown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in series.as_array().unwrap() {
        let name = s["__name__"].as_str().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| reference.get(*b).is_some_and(|(t, _)| t == "histogram"))
            })
            .unwrap_or(name);
        let Some((_, labels)) = reference.get(base) else {
            undocumented.insert(format!("{name} (not in the reference)"));
            continue;
        };
        let got: BTreeSet<String> = s
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !["__name__", "job", "instance", "cluster", "le"].contains(&k.as_str()))
            .cloned()
            .collect();
        if !got.is_subset(labels) {
            undocumented.insert(format!("{name}: labels {got:?}, documented {labels:?}"));
        }
        shown.entry(base.to_owned()).or_default().extend(got);
    }
    for (family, got) in &shown {
        let labels = &reference[family].1;
        if got != labels {
            undocumented.insert(format!(
                "{family}: its series show labels {got:?}, documented {labels:?}"
            ));
        }
    }
    let seen: BTreeSet<&String> = shown.keys().collect();
    let metadata = api("/api/v1/metadata").unwrap();
    for (family, entries) in metadata.as_object().unwrap() {
        if !family.starts_with("strait_") {
            continue;
        }
        let kind = entries[0]["type"].as_str().unwrap_or_default();
        let doc = if kind == "counter" && !family.ends_with("_total") {
            format!("{family}_total")
        } else {
            family.clone()
        };
        match reference.get(&doc) {
            Some((t, _)) if t == kind => {}
            Some((t, _)) => {
                undocumented.insert(format!("{doc}: scraped as {kind}, documented as {t}"));
            }
            None => {
                undocumented.insert(format!("{doc} ({kind}): not in the reference"));
            }
        }
    }
    assert!(undocumented.is_empty(), "{undocumented:#?}");
    eprintln!(
        "{} documented families seen on the running mesh, {} panel queries and {} variables returned series",
        seen.len(),
        panels.len(),
        vars.len()
    );
    drop(load);
}
