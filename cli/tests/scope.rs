//! A scoped sidecar on the path users run: two `strait cluster up`
//! clusters (east, west) on this host, linked; `echo.demo` served by a
//! real app behind a `strait proxy` in each, exported; a second service,
//! `other.demo`, registered in east. A client `strait proxy` in east with
//! `scope: { services: [echo.demo] }` follows east's controller (config
//! deltas, since every sidecar takes them): its `/config` holds `echo`
//! and never `other`, even when `other` changes; when east's app dies its
//! traffic fails over to west, within its scope. Addresses:
//! 127.179.{1,2}.x.

mod support;

use std::time::{Duration, Instant};

use support::clusters::{App, Clusters, have_python, sidecar_yaml};
use support::traffic::Load;
use support::*;

fn services(admin: &str) -> Vec<String> {
    let body = admin_get(admin, "/config");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "{}.{}",
                        s["name"].as_str().unwrap_or(""),
                        s["namespace"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn register_other(clusters: &Clusters, port: u16) {
    let file = clusters.dir.join(format!("other-{port}.yaml"));
    std::fs::write(
        &file,
        format!(
            "name: other\nnamespace: demo\nports: [{{ port: 9090, protocol: http1 }}]\n\
             endpoints: [{{ address: \"127.179.1.9:{port}\" }}]\n"
        ),
    )
    .unwrap();
    clusters.op(
        "east",
        &["service", "register", "-f", &file.display().to_string()],
    );
}

#[test]
fn a_scoped_sidecar_never_receives_services_outside_its_scope_and_fails_over_within_it() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let clusters = Clusters::up(&dir, "127.179", &[("east", "us-east"), ("west", "us-west")]);
    clusters.link("east", "west");
    let mut east_app = clusters.pod("east", "us-east", true, "");
    let _west_app = clusters.pod("west", "us-west", true, "");
    register_other(&clusters, 7001);
    // The client: a sidecar on 127.179.1.6 that calls echo.demo only.
    let ip = "127.179.1.6";
    let home = clusters.issue("east", "client", "client");
    std::fs::write(
        home.join("sidecar.yaml"),
        format!(
            "{}scope: {{ services: [echo.demo] }}\n",
            sidecar_yaml(&home, ip, "east", "us-east", false)
        ),
    )
    .unwrap();
    let config = home.join("sidecar.yaml").display().to_string();
    let _client = spawn(
        &clusters.dir,
        &["proxy", "--config", &config],
        "client-sidecar.log",
    );
    wait_for(format!("{ip}:15001").parse().unwrap());
    clusters.wait_healthy("east", &["east", "west"]);
    let status = clusters.status("east");
    let all: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        all.contains(&"other"),
        "east's controller knows other: {all:?}"
    );
    let admin = format!("{ip}:15000");
    let started = Instant::now();
    while services(&admin) != ["echo.demo"] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the scoped sidecar holds {:?}",
            services(&admin)
        );
        pause(100);
    }
    // `other` changes: still never sent.
    register_other(&clusters, 7002);
    pause(500);
    assert_eq!(services(&admin), ["echo.demo"]);

    let load = Load::every(format!("{ip}:15001").parse().unwrap(), 10);
    let t0 = Instant::now();
    let on_east = load.settled_on(t0, "east", Duration::from_secs(5));
    let t = Instant::now();
    drop(east_app.app.take());
    let to_west = load.settled_on(t, "west", Duration::from_secs(3));
    let (f, n) = load.failed(t, Instant::now());
    eprintln!(
        "on east after {on_east:?}; east's app killed: on west after {to_west:?}; {f} of {n} requests failed"
    );
    assert!(
        to_west <= Duration::from_secs(3),
        "failover took {to_west:?}"
    );
    assert_eq!(services(&admin), ["echo.demo"]);
    east_app.app = Some(App::start(&dir, "east", &east_app.ip));
}
