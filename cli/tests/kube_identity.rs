//! An injected sidecar's identity from its ServiceAccount token: the pod
//! spec `strait inject --identity token` makes (projected token for
//! audience `strait`), with the example sidecar ConfigMap, run as a real
//! `strait proxy` whose files sit where the pod mounts them; it gets
//! `spiffe://strait.local/ns/shop/sa/web` from a real `strait ca serve
//! --token-review` that asks the fake API server (`strait-k8s-fake`) to
//! review the token. A token of another service account is refused with
//! its reason. Addresses: 127.183.0.0/16 only.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::kubeapi::*;
use support::*;

const CA_ADDR: &str = "127.183.8.1:8600";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../k8s/examples")
        .join(name)
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Writes what the sidecar mounts under `root` (its ConfigMap with the
/// addresses of this test, the mesh's bundle, the projected `token`) and
/// returns its working directory and arguments.
fn materialize(
    dir: &Path,
    root: &Path,
    spec: &Value,
    sidecar: &Value,
    token: &str,
    pod_ip: &str,
) -> (PathBuf, Vec<String>) {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let cm =
        docs(&std::fs::read_to_string(example("sidecar-config-token.yaml")).unwrap()).remove(0);
    let bundle = std::fs::read_to_string(dir.join("ca/bundle.pem")).unwrap();
    for m in sidecar["volumeMounts"].as_array().unwrap() {
        let path = under(m["mountPath"].as_str().unwrap());
        std::fs::create_dir_all(&path).unwrap();
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        if vol["configMap"]["name"] == "strait-proxy-web" {
            let config = cm["data"]["sidecar.yaml"]
                .as_str()
                .unwrap()
                .replace("10.96.0.12:8600", CA_ADDR)
                .replace("10.96.0.10:8610", "127.183.8.9:8610")
                .replace("0.0.0.0", pod_ip)
                .replace("127.0.0.1:15001", &format!("{pod_ip}:15001"))
                .replace("/etc/strait/proxy/", &format!("{}/", path.display()));
            std::fs::write(path.join("sidecar.yaml"), config).unwrap();
            std::fs::write(path.join("bundle.pem"), &bundle).unwrap();
        } else if let Some(sources) = vol["projected"]["sources"].as_array() {
            let p = &sources[0]["serviceAccountToken"];
            assert_eq!(p["audience"], "strait", "{vol}");
            assert_eq!(p["expirationSeconds"], 3600, "{vol}");
            std::fs::write(path.join(p["path"].as_str().unwrap()), token).unwrap();
        } else {
            assert!(vol["emptyDir"].is_object(), "{vol}");
        }
    }
    let workdir = under(sidecar["workingDir"].as_str().unwrap());
    std::fs::create_dir_all(&workdir).unwrap();
    let args = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a.starts_with('/') {
                under(a).display().to_string()
            } else {
                a.to_owned()
            }
        })
        .collect();
    (workdir, args)
}

/// The startup probe the injected container declares: `GET /live` 200.
fn live(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn an_injected_sidecar_gets_its_service_account_identity_from_the_ca_with_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    let api = Api::start(dir, "127.183.8.2");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Projected tokens (JWT-shaped; the fake knows them by value).
    let (web_token, db_token) = (
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.d2ViLXRva2Vu",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkYiJ9.ZGItdG9rZW4",
    );
    for (token, sa) in [(web_token, "web"), (db_token, "db")] {
        api.api.add_token(
            token,
            strait_k8s_fake::TokenFacts {
                namespace: "shop".into(),
                service_account: sa.into(),
                audiences: vec!["strait".into()],
                expires: now + 3600,
            },
        );
    }
    let _ca = spawn(
        dir,
        &[
            "ca",
            "serve",
            "--ca-dir",
            "ca",
            "--cluster",
            "east",
            "--listen",
            CA_ADDR,
            "--token-review",
            "kubeconfig",
        ],
        "ca.log",
    );
    wait_for(CA_ADDR.parse().unwrap());

    let injected = ok(
        dir,
        &[
            "inject",
            "-f",
            example("app.yaml").to_str().unwrap(),
            "--identity",
            "token",
            "--image",
            "localhost/strait:test",
        ],
    );
    let all = docs(&injected);
    let web = all
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "web")
        .unwrap();
    let spec = web["spec"]["template"]["spec"].clone();
    let sidecar = spec["initContainers"][0].clone();
    assert_eq!(sidecar["name"], "strait-proxy");

    // The web pod: its sidecar gets its certificate and starts.
    let root = dir.join("pod-web");
    let (workdir, args) = materialize(dir, &root, &spec, &sidecar, web_token, "127.183.8.5");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _proxy = spawn(&workdir, &args, "proxy.log");
    let admin = "127.183.8.5:15000";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !live(admin) {
        let log = std::fs::read_to_string(workdir.join("proxy.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the sidecar never went live:\n{log}"
        );
        pause(200);
    }
    let kept = workdir.join("identity/chain.pem");
    let verified = ok(
        dir,
        &[
            "ca",
            "verify",
            "--ca-dir",
            "ca",
            "--chain",
            kept.to_str().unwrap(),
        ],
    );
    assert!(
        verified.contains("spiffe://strait.local/ns/shop/sa/web"),
        "{verified}"
    );
    let ca_log = std::fs::read_to_string(dir.join("ca.log")).unwrap();
    assert!(ca_log.contains("checked by TokenReview"), "{ca_log}");
    assert!(
        api.api
            .requests()
            .iter()
            .any(|r| r.contains("tokenreviews")),
        "the CA asked the API server: {:#?}",
        api.api.requests()
    );

    // The same sidecar config with db's token: refused, with the reason.
    let root = dir.join("pod-db");
    let (workdir, args) = materialize(dir, &root, &spec, &sidecar, db_token, "127.183.8.6");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refused = spawn(&workdir, &args, "proxy.log");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = refused.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the refused sidecar kept running"
        );
        pause(200);
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(workdir.join("proxy.log")).unwrap();
    assert!(log.contains("token_wrong_identity"), "{log}");
    assert!(!workdir.join("identity/chain.pem").exists());
}
