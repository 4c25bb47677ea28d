//! `strait ca rotate` on a live two-cluster mesh of real processes: `strait
//! cluster up` east and west (CA service, controller, gateway, DNS, egress
//! each: every role but the CA gets its certificate from the CA service),
//! linked, with a client sidecar in east (certificate files) and echo's
//! sidecar in west (`strait sidecar add`: from the CA service) carrying
//! requests through west's gateway the whole time. Addresses: 127.153.x.y.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::traffic::{Load, app};
use support::*;

/// `cluster down` for every cluster it brought up, on drop (also on panic),
/// then SIGKILL for anything still recorded.
struct Clusters {
    dir: PathBuf,
    up: Vec<&'static str>,
}

impl Clusters {
    fn up(&mut self, name: &'static str, ip: &str, region: &str) {
        self.up.push(name);
        let d = self.dir.display().to_string();
        let zone = format!("{region}-1a");
        ok(
            Path::new("/"),
            &[
                "cluster", "up", name, "--dir", &d, "--ip", ip, "--region", region, "--zone", &zone,
            ],
        );
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        for c in &self.up {
            let pids = std::fs::read_to_string(self.dir.join("clusters").join(c).join("pids.json"));
            let _ = strait(Path::new("/"), &["cluster", "down", c, "--dir", &d]);
            let Ok(pids) = pids else { continue };
            let v: Value = serde_json::from_str(&pids).unwrap_or(Value::Null);
            for p in v["processes"].as_array().into_iter().flatten() {
                if let Some(pid) = p["pid"].as_u64() {
                    if Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                }
            }
        }
    }
}

fn sidecar_yaml(certs: &Path, ip: &str, controller: &str, cluster: &str) -> String {
    let c = certs.display();
    format!(
        "trust_domain: strait.local\n\
         identity: {{ files: {{ chain: {c}/chain.pem, key: {c}/key.pem, bundle: {c}/bundle.pem }} }}\n\
         listeners: {{ inbound: \"{ip}:15006\", outbound: \"{ip}:15001\", admin: \"{ip}:15000\" }}\n\
         controller: {{ address: \"{controller}\", cluster: {cluster}, locality: us-{cluster}/us-{cluster}-1a }}\n"
    )
}

/// `strait -o json ca rotate <args>`: (exit code, stdout JSON or null, stderr).
fn rotate(args: &[&str]) -> (Option<i32>, Value, String) {
    let out = strait(
        Path::new("/"),
        &[&["-o", "json", "ca", "rotate"][..], args].concat(),
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fingerprint_of(pem_file: &Path) -> String {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    strait_ca::trust::fingerprint(&strait_ca::pem::certs(&pem)[0])
}

#[test]
fn ca_rotate_replaces_the_root_of_a_live_mesh_without_a_failed_request() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mesh = Clusters {
        dir: tmp.path().join("mesh"),
        up: Vec::new(),
    };
    mesh.up("east", "127.153.1.1", "us-east");
    mesh.up("west", "127.153.2.1", "us-west");
    let dir = mesh.dir.clone();
    let d = dir.display().to_string();
    let root = Path::new("/");
    let td = "spiffe://strait.local";
    let client_certs = dir.join("certs/east/client");
    let ca = dir.join("ca").display().to_string();
    let out = client_certs.display().to_string();
    ok(
        root,
        &[
            "ca",
            "issue",
            "--ca-dir",
            &ca,
            "--cluster",
            "east",
            "--spiffe-id",
            &format!("{td}/ns/demo/sa/client"),
            "--out",
            &out,
        ],
    );
    let old_root = fingerprint_of(&dir.join("ca/root.pem"));
    let old_client_chain = std::fs::read(client_certs.join("chain.pem")).unwrap();
    ok(
        root,
        &["link", "--from", "east", "--to", "west", "--dir", &d],
    );
    app("127.153.2.5:18080");
    // echo's sidecar: certificate from west's CA service, self-registered.
    let add_echo = || {
        ok(
            root,
            &[
                "sidecar",
                "add",
                "echo",
                "-n",
                "demo",
                "--cluster",
                "west",
                "--app",
                "127.153.2.5:18080",
                "--port",
                "8080/http1",
                "--export",
                "all",
                "--ip",
                "127.153.2.6",
                "--dir",
                &d,
            ],
        )
    };
    add_echo();
    std::fs::write(
        dir.join("client-sidecar.yaml"),
        sidecar_yaml(&client_certs, "127.153.1.5", "127.153.1.1:8610", "east"),
    )
    .unwrap();
    let cfg = dir.join("client-sidecar.yaml").display().to_string();
    let _client = spawn(
        &dir,
        &["--log", "info", "proxy", "--config", &cfg],
        "client.log",
    );
    wait_for("127.153.1.5:15001".parse().unwrap());

    let load = Load::start("127.153.1.5:15001".parse().unwrap());
    let t0 = Instant::now();
    let first = load.recovered_after(t0, Duration::from_secs(30));
    pause(1000);
    let start = Instant::now();
    load.no_failures_since(
        t0 + first + Duration::from_millis(100),
        "before the rotation",
    );

    // Out of order: nothing to drop or re-issue yet.
    let confirm = ["--confirm", "127.153.1.5:15000"];
    let with = |verb: &'static str| -> Vec<&str> {
        let mut a = vec![verb, "--dir", d.as_str()];
        a.extend(confirm);
        a
    };
    let (code, _, err) = rotate(&with("drop"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("run `strait ca rotate add`"), "{err}");

    // Each stage: files written, then every component confirms.
    let mut new_root = String::new();
    for (stage, expect_next) in [("add", "reissue"), ("reissue", "drop"), ("drop", "")] {
        let (code, v, err) = rotate(&with(stage));
        assert_eq!(code, Some(0), "ca rotate {stage} failed: {err}");
        assert_eq!(v["stage"], stage, "{v:#}");
        let comps = v["components"].as_array().unwrap();
        let who: Vec<&str> = comps.iter().map(|c| c["who"].as_str().unwrap()).collect();
        assert_eq!(
            who,
            [
                "controller east",
                "gateway east",
                "dns east",
                "egress east",
                "controller west",
                "gateway west",
                "dns west",
                "egress west",
                "sidecar demo/echo west",
                "component"
            ],
            "{v:#}"
        );
        assert!(comps.iter().all(|c| c["confirmed"] == true), "{v:#}");
        assert!(
            err.contains(&format!("stage {stage} confirmed by every component")),
            "{err}"
        );
        if !expect_next.is_empty() {
            assert!(
                err.contains(&format!("next: strait ca rotate {expect_next}")),
                "{err}"
            );
        }
        // Only the client's certificate is a file; every other role got
        // (and renewed) its own at the CA service.
        assert_eq!(v["certificate_dirs"].as_array().unwrap().len(), 1, "{v:#}");
        assert_eq!(v["old_roots"], serde_json::json!([old_root]), "{v:#}");
        new_root = v["new_root"].as_str().unwrap().to_owned();
        assert_ne!(new_root, old_root);
        if stage == "add" {
            // Out of order again: drop needs the re-issue first.
            let (code, _, err) = rotate(&with("drop"));
            assert_eq!(code, Some(1));
            assert!(err.contains("run `strait ca rotate reissue`"), "{err}");
        }
    }
    load.no_failures_since(start, "during add, reissue and drop");
    eprintln!("rotation took {:?} with no failed request", start.elapsed());

    // Every component trusts only the new root and presents a certificate under it.
    let (code, v, err) = rotate(&with("status"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["rotation"]["stage"], "drop", "{v:#}");
    assert_eq!(v["rotation"]["confirmed"], true, "{v:#}");
    assert_eq!(v["next"], "strait ca rotate add", "{v:#}");
    let comps = v["components"].as_array().unwrap();
    assert_eq!(comps.len(), 10, "{v:#}");
    for c in comps {
        assert_eq!(c["trust"]["roots"], serde_json::json!([new_root]), "{c:#}");
        assert_eq!(c["trust"]["presented_root"], new_root, "{c:#}");
    }
    // The CA directory's root is the new one; re-issued chains verify
    // against it and an old chain no longer does.
    assert_eq!(fingerprint_of(&dir.join("ca/root.pem")), new_root);
    let ca = dir.join("ca").display().to_string();
    let chain = client_certs.join("chain.pem").display().to_string();
    ok(root, &["ca", "verify", "--ca-dir", &ca, "--chain", &chain]);
    std::fs::write(tmp.path().join("old-chain.pem"), old_client_chain).unwrap();
    let old = tmp.path().join("old-chain.pem").display().to_string();
    fails(root, &["ca", "verify", "--ca-dir", &ca, "--chain", &old]);

    // A new workload joins under the new root only: echo's sidecar,
    // removed and added again (a new join token, the CA's new bundle), is
    // reached again through the gateway.
    ok(
        root,
        &[
            "sidecar",
            "rm",
            "echo",
            "-n",
            "demo",
            "--cluster",
            "west",
            "--dir",
            &d,
        ],
    );
    let restarted = Instant::now();
    add_echo();
    let took = load.recovered_after(restarted, Duration::from_secs(15));
    assert!(
        took < Duration::from_secs(15),
        "traffic back only after {took:?}"
    );
    drop(load);
}

#[test]
fn a_stage_times_out_naming_who_did_not_confirm_and_the_next_stage_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, &["east"]);
    issue(
        d,
        "east",
        "spiffe://strait.local/ns/demo/sa/web",
        "certs/web",
    );
    // Nothing listens on this address.
    let silent = std::net::TcpListener::bind("127.153.9.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    drop(silent);
    let args = |verb: &'static str| {
        let ca = d.join("ca").display().to_string();
        let certs = d.join("certs").display().to_string();
        vec![
            verb.to_owned(),
            "--ca-dir".into(),
            ca,
            "--certs".into(),
            certs,
            "--confirm".into(),
            addr.clone(),
            "--timeout".into(),
            "1s".into(),
        ]
    };
    let run = |verb: &'static str| {
        let a = args(verb);
        rotate(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, _, err) = run("reissue");
    assert_eq!(code, Some(1));
    assert!(err.contains("no root rotation is in progress"), "{err}");
    let (code, _, err) = run("add");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("timed out after 1s: 1 of 1 component(s)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("component {addr}: unreachable")),
        "{err}"
    );
    assert!(err.contains("run `strait ca rotate add` again"), "{err}");
    // The files were written: the bundle holds both roots.
    let bundle = std::fs::read_to_string(d.join("certs/web/bundle.pem")).unwrap();
    assert_eq!(strait_ca::pem::certs(&bundle).len(), 2);
    // Not confirmed: reissue refuses and names the stage to run.
    let (code, _, err) = run("reissue");
    assert_eq!(code, Some(1));
    assert!(err.contains("stage `add` is not confirmed yet"), "{err}");
    assert!(err.contains("run `strait ca rotate add`"), "{err}");
    let (code, v, _) = run("status");
    assert_eq!(code, Some(0));
    assert_eq!(v["rotation"]["stage"], "add", "{v:#}");
    assert_eq!(v["rotation"]["confirmed"], false, "{v:#}");
    assert_eq!(v["components"][0]["confirmed"], false, "{v:#}");
    assert!(
        v["components"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{v:#}"
    );
    // Human status names the stage and the component.
    let a = args("status");
    let mut full = vec!["ca", "rotate"];
    full.extend(a.iter().map(String::as_str));
    let human = ok(d, &full);
    assert!(
        human.contains("stage add (not confirmed yet); next: strait ca rotate add"),
        "{human}"
    );
    assert!(human.contains(&addr), "{human}");
}

#[test]
fn strait_controller_reloads_its_identity_files_and_refuses_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, &["east"]);
    let id = "spiffe://strait.local/ns/strait-system/sa/controller-east";
    issue(d, "east", id, "ctl");
    std::fs::write(
        d.join("east.yaml"),
        format!(
            "cluster: east\ntrust_domain: strait.local\nstate_dir: state\n\
             listen: 127.153.5.1:8610\nadmin_listen: 127.153.5.1:8611\n{}",
            identity_files("ctl")
        ),
    )
    .unwrap();
    let _ctl = spawn(d, &["controller", "--config", "east.yaml"], "ctl.log");
    wait_for("127.153.5.1:8611".parse().unwrap());
    let trust = || {
        let (code, v, err) = rotate(&[
            "status",
            "--ca-dir",
            d.join("ca").to_str().unwrap(),
            "--confirm",
            "127.153.5.1:8611",
        ]);
        assert_eq!(code, Some(0), "{err}");
        v["components"][0]["trust"].clone()
    };
    let before = trust();
    assert_eq!(before["trusted_roots"], 1, "{before:#}");
    assert_eq!(before["spiffe_id"], id, "{before:#}");
    let log = || std::fs::read_to_string(d.join("ctl.log")).unwrap();

    // A broken chain: refused with a log line, the identity stays.
    std::fs::write(d.join("ctl/chain.pem"), "garbage").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains("new identity files refused") {
        assert!(Instant::now() < deadline, "no refusal logged: {}", log());
        pause(100);
    }
    assert_eq!(trust(), before);
    // Another identity: refused too, naming who it must be.
    issue(d, "east", "spiffe://strait.local/ns/demo/sa/web", "ctl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log().contains(&format!("this component must present {id}")) {
        assert!(Instant::now() < deadline, "no refusal logged: {}", log());
        pause(100);
    }
    assert_eq!(trust(), before);

    // Its own identity again, with a second root in the bundle: taken.
    issue(d, "east", id, "ctl");
    ok(d, &["ca", "init", "--out", "next"]);
    let both = std::fs::read_to_string(d.join("ca/bundle.pem")).unwrap()
        + &std::fs::read_to_string(d.join("next/bundle.pem")).unwrap();
    std::fs::write(d.join("ctl/bundle.pem"), both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = trust();
        if now["trusted_roots"] == 2 {
            assert_eq!(now["presented_root"], before["presented_root"], "{now:#}");
            break;
        }
        assert!(Instant::now() < deadline, "bundle not reloaded: {now:#}");
        pause(100);
    }
}
