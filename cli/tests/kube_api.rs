//! `strait` on a Kubernetes API server, through the binary: the real
//! `kubectl` applies `strait install kubernetes`'s output and the app's
//! objects (server-side apply) to the fake API server of
//! `strait-k8s-fake` (TLS with its own CA, a bearer token, discovery), and
//! `strait controller` with `catalog: { kubernetes: ... }` reads them from
//! there and serves the `ServiceExport`ed Service to a linked `strait
//! cluster up` cluster. Addresses: 127.178.0.0/16 only.
//!
//! No real cluster: the API server is the fake (see its crate docs for
//! what it does and does not do); the clients (`kubectl` 1.32, kube-rs)
//! are real.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_k8s_fake::{FakeApi, Options};
use support::clusters::Clusters;
use support::*;

const TOKEN: &str = "kubectl-and-controller-token";

/// The fake API server and the runtime it runs on (dropped together).
struct Api {
    api: FakeApi,
    _rt: tokio::runtime::Runtime,
}

impl Api {
    fn start(dir: &Path, ip: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bind = format!("{ip}:0").parse().unwrap();
        let api = rt.block_on(FakeApi::start_with(Options::secure(bind, TOKEN)));
        api.write_kubeconfig(&dir.join("kubeconfig"), TOKEN, "default")
            .unwrap();
        Self { api, _rt: rt }
    }
}

/// False (with a printed SKIPPED line) when kubectl is missing.
fn have_kubectl() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: kubectl is not installed (scripts/test.sh installs it)");
    }
    ok
}

/// `kubectl ARGS` with the fake's kubeconfig, `stdin` piped in.
fn kubectl(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .env("HOME", dir)
        .env_remove("KUBECONFIG")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn kubectl_ok(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = kubectl(dir, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The app: a labelled Service with one ready endpoint (its pod on a
/// node labelled us-east/us-east-1c), its `ServiceExport`, a Service the
/// selector leaves out, and a pod in a namespace nobody watches.
const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: { topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: us-east-1c }
---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { serviceAccountName: web, nodeName: node-a, containers: [{ name: app, image: web }] }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, labels: { mesh: strait } }
spec: { selector: { app: web }, ports: [{ name: http, port: 8080, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-x1, namespace: shop, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: [127.178.2.5]
    conditions: { ready: true }
    nodeName: node-a
    targetRef: { kind: Pod, name: web-1, namespace: shop }
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: { name: web, namespace: shop }
---
apiVersion: v1
kind: Service
metadata: { name: hidden, namespace: shop }
spec: { ports: [{ name: http, port: 8080 }] }
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: { name: hidden, namespace: shop }
---
apiVersion: v1
kind: Namespace
metadata: { name: elsewhere }
---
apiVersion: v1
kind: Pod
metadata: { name: other-1, namespace: elsewhere }
spec: { serviceAccountName: other, containers: [{ name: app, image: other }] }
"#;

/// The endpoints `status` shows for `web.shop` in `cluster`.
fn web_endpoints(status: &Value, cluster: &str) -> Vec<Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web" && s["namespace"] == "shop")
        .flat_map(|s| s["clusters"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["cluster"] == cluster)
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn status(dir: &Path, admin: &str) -> Value {
    let out = strait(dir, &["-o", "json", "status", "--controller", admin]);
    serde_json::from_slice::<Value>(&out.stdout).map_or(Value::Null, |v| v[0].clone())
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let Some(last) = f() else { return };
        assert!(Instant::now() < deadline, "timed out: {what}\nlast: {last}");
        pause(200);
    }
}

/// The east controller's config: the Kubernetes catalog through the fake.
fn east_config(dir: &Path) -> String {
    issue(
        dir,
        "east",
        "spiffe://strait.local/ns/strait-system/sa/controller-east",
        "east-ctl",
    );
    format!(
        "cluster: east\nregion: us-east\nzone: us-east-1a\ntrust_domain: strait.local\n\
         state_dir: state/east-k8s\nlisten: 127.178.2.1:8610\nadmin_listen: 127.178.2.1:8611\n\
         gateways: [127.178.2.3:15443]\ndefault_health_check: false\n{}\
         catalog:\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespaces: [shop]\n    label_selector: mesh=strait\n",
        identity_files("east-ctl")
    )
}

#[test]
fn kubectl_applies_the_install_and_the_controller_serves_a_service_export_to_a_linked_cluster() {
    if !have_kubectl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // west: a plain-hosts cluster; it also makes the mesh's root CA.
    let west = Clusters::up(dir, "127.178", &[("west", "us-west")]);
    ok(
        dir,
        &["ca", "intermediate", "--ca-dir", "ca", "--cluster", "east"],
    );
    let api = Api::start(dir, "127.178.2.2");

    // 1. The whole install, applied by the real kubectl.
    let manifests = ok(
        dir,
        &[
            "install",
            "kubernetes",
            "--cluster",
            "east",
            "--ca-dir",
            "ca",
            "--region",
            "us-east",
            "--zone",
            "us-east-1a",
        ],
    );
    let applied = kubectl_ok(dir, &["apply", "--server-side", "-f", "-"], &manifests);
    let objects =
        manifests.matches("\nkind: ").count() + usize::from(manifests.starts_with("kind: "));
    assert_eq!(
        applied
            .lines()
            .filter(|l| l.contains("serverside-applied"))
            .count(),
        objects,
        "every object applied:\n{applied}"
    );
    let crd = api
        .api
        .get(
            "apiextensions.k8s.io/customresourcedefinitions",
            "",
            "serviceexports.multicluster.x-k8s.io",
        )
        .expect("the ServiceExport CRD was applied");
    assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    let deploy = api
        .api
        .get("apps/deployments", "strait-system", "strait-controller")
        .expect("the controller Deployment was applied");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "strait-controller"
    );
    // kubectl reads it back through discovery, get and the CRD's kind.
    let got = kubectl_ok(
        dir,
        &["get", "deployments", "-n", "strait-system", "-o", "name"],
        "",
    );
    assert!(got.contains("deployment.apps/strait-controller"), "{got}");

    // `install --check` on what was applied: the CRDs are established (the
    // fake marks them), nothing runs (no kubelet), so every Deployment and
    // the webhook fail, each named.
    let check_args = [
        "install",
        "kubernetes",
        "--cluster",
        "east",
        "--check",
        "--kubeconfig",
        "kubeconfig",
    ];
    let out = strait(dir, &check_args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "ok    CustomResourceDefinition serviceexports.multicluster.x-k8s.io: established",
        "FAIL  Deployment strait-system/strait-controller: 0/2 ready",
        "FAIL  Deployment strait-system/strait-injector: 0/2 ready",
        "FAIL  MutatingWebhookConfiguration strait-system-strait-injector: service strait-system/strait-injector has no ready endpoint",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    // What the kubelet and the EndpointSlice controller would write.
    for d in [
        "strait-controller",
        "strait-gateway",
        "strait-dns",
        "strait-injector",
    ] {
        kubectl_ok(
            dir,
            &[
                "patch",
                "deployment",
                d,
                "-n",
                "strait-system",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"replicas":2,"readyReplicas":2}}"#,
            ],
            "",
        );
    }
    kubectl_ok(
        dir,
        &["apply", "--server-side", "-f", "-"],
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: { name: strait-injector-x1, namespace: strait-system, labels: { kubernetes.io/service-name: strait-injector } }\n\
         addressType: IPv4\nendpoints: [{ addresses: [127.178.2.9], conditions: { ready: true } }]\n",
    );
    let text = ok(dir, &check_args);
    assert!(text.contains("install ok:"), "{text}");

    // 2. The app's objects, again with kubectl (the CRD's kind is now
    //    served, so ServiceExport resolves through discovery).
    kubectl_ok(dir, &["apply", "--server-side", "-f", "-"], APP);

    // 3. The controller on the Kubernetes catalog.
    std::fs::write(dir.join("east.yaml"), east_config(dir)).unwrap();
    let check = ok(dir, &["controller", "--config", "east.yaml", "--check"]);
    assert!(
        check.contains(
            "catalog kubernetes (kubeconfig kubeconfig, namespaces shop, services mesh=strait)"
        ),
        "{check}"
    );
    let _east = spawn(
        dir,
        &["controller", "--config", "east.yaml"],
        "east-k8s.log",
    );
    wait_for("127.178.2.1:8611".parse().unwrap());
    let east_status = status(dir, "127.178.2.1:8611");
    let eps = web_endpoints(&east_status, "east");
    assert_eq!(eps.len(), 1, "{east_status:#}");
    assert_eq!(eps[0]["address"], "127.178.2.5:15006", "{east_status:#}");
    assert_eq!(
        eps[0]["locality"], "us-east/us-east-1c",
        "from the node's labels: {east_status:#}"
    );
    let text = east_status.to_string();
    assert!(
        !text.contains("hidden"),
        "the label selector leaves it out: {east_status:#}"
    );

    // Scoped watches: namespaced, slices by label, nodes metadata-only,
    // nothing cluster-wide but nodes.
    let requests = api.api.requests();
    let watched = |path: &str, with: &str| {
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET {path}?")) && r.contains(with))
    };
    assert!(watched("/api/v1/namespaces/shop/pods", ""), "{requests:#?}");
    assert!(
        watched(
            "/api/v1/namespaces/shop/services",
            "labelSelector=mesh%3Dstrait"
        ),
        "{requests:#?}"
    );
    assert!(
        watched(
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
            "labelSelector=kubernetes.io%2Fservice-name"
        ),
        "{requests:#?}"
    );
    assert!(watched("/api/v1/nodes", "[metadata]"), "{requests:#?}");
    assert!(
        !watched("/api/v1/pods", ""),
        "no cluster-wide pod watch: {requests:#?}"
    );

    // 4. Linked with west, which then serves the exported service.
    ok(
        dir,
        &[
            "link",
            "--from",
            "east",
            "--to",
            "west",
            "--from-controller",
            "127.178.2.1:8611",
            "--from-state-dir",
            "state/east-k8s",
            "--dir",
            &dir.display().to_string(),
        ],
    );
    wait_until("west serves web.shop from east", 30, || {
        let s = west.status("west");
        let eps = web_endpoints(&s, "east");
        if eps.iter().any(|e| e["address"] == "127.178.2.5:15006") {
            None
        } else {
            Some(s.to_string())
        }
    });

    // 5. A change in Kubernetes reaches west: the export is deleted.
    kubectl_ok(dir, &["delete", "serviceexport", "web", "-n", "shop"], "");
    wait_until("west drops web.shop once un-exported", 30, || {
        let s = west.status("west");
        if web_endpoints(&s, "east").is_empty() {
            None
        } else {
            Some(s.to_string())
        }
    });
}

#[test]
fn a_bad_kubernetes_catalog_is_refused_by_check_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    let base = east_config(dir);
    let table = [
        (
            "namespaces: [shop]",
            "namespaces: [Shop_1]",
            "catalog.kubernetes.namespaces",
        ),
        (
            "label_selector: mesh=strait",
            "label_selector: 'mesh in (a)'",
            "catalog.kubernetes.label_selector",
        ),
        (
            "kubeconfig: kubeconfig",
            "kubeconfig: missing/kubeconfig",
            "catalog.kubernetes.kubeconfig",
        ),
        (
            "namespaces: [shop]",
            "namespace: shop",
            "unknown field `namespace`",
        ),
    ];
    std::fs::write(
        dir.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters: []\n",
    )
    .unwrap();
    for (from, to, want) in table {
        std::fs::write(dir.join("bad.yaml"), base.replace(from, to)).unwrap();
        let err = fails(dir, &["controller", "--config", "bad.yaml", "--check"]);
        assert!(err.contains(want), "{to}: {err}");
    }
}

/// A controller replica of east with leader election on a 4 s lease.
fn replica_config(name: &str, ip: &str) -> String {
    format!(
        "cluster: east\nregion: us-east\nzone: us-east-1a\ntrust_domain: strait.local\n\
         state_dir: state/{name}\nlisten: {ip}:8610\nadmin_listen: {ip}:8611\n\
         default_health_check: false\n{}\
         catalog:\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespaces: [shop]\n\
         \x20   leader_election: {{ namespace: strait-system, lease: 4s, identity: {name} }}\n",
        identity_files("east-ctl")
    )
}

/// `(status code, body)` of `GET path` on an admin port.
fn admin_code(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

fn holder(api: &FakeApi) -> (String, i64) {
    let lease = api
        .get(
            "coordination.k8s.io/leases",
            "strait-system",
            "strait-controller",
        )
        .unwrap_or_default();
    (
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
    )
}

#[test]
fn the_standby_controller_takes_over_within_the_lease_and_the_proxy_keeps_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    let api = Api::start(dir, "127.178.5.2");
    for doc in serde_yaml_ng::Deserializer::from_str(APP) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        api.api.apply(v);
    }
    std::fs::write(dir.join("east.yaml"), east_config(dir)).unwrap();
    let (a, b) = ("127.178.5.10", "127.178.5.11");
    std::fs::write(dir.join("a.yaml"), replica_config("ctl-a", a)).unwrap();
    std::fs::write(dir.join("b.yaml"), replica_config("ctl-b", b)).unwrap();
    let check = ok(dir, &["controller", "--config", "a.yaml", "--check"]);
    assert!(
        check.contains("leader election on lease strait-system/strait-controller (4s) as ctl-a"),
        "{check}"
    );
    let (a_admin, b_admin) = (format!("{a}:8611"), format!("{b}:8611"));

    let mut ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a.log");
    wait_until("ctl-a leads and is ready", 20, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let ctl_b = spawn(dir, &["controller", "--config", "b.yaml"], "ctl-b.log");
    wait_until("ctl-b stands by", 20, || {
        let (code, body) = admin_code(&b_admin, "/ready");
        (code != 503 || !body.contains("the leader is ctl-a")).then(|| format!("{code} {body}"))
    });
    assert_eq!(admin_code(&b_admin, "/live").0, 200, "the standby is alive");
    assert_eq!(
        admin_code(&b_admin, "/status").0,
        503,
        "the standby serves no status"
    );
    assert_eq!(holder(&api.api).0, "ctl-a");
    // The standby watches nothing: every catalog request so far is ctl-a's
    // one set of watches (one list of services).
    assert_eq!(api.api.lists("/services"), 1, "{:#?}", api.api.requests());

    // A proxy following the leader.
    issue(
        dir,
        "east",
        "spiffe://strait.local/ns/shop/sa/client",
        "client",
    );
    let home = dir.join("client");
    std::fs::write(
        home.join("sidecar.yaml"),
        format!(
            "trust_domain: strait.local\n{}\
             listeners: {{ inbound: \"127.178.5.20:15006\", outbound: \"127.178.5.20:15001\", admin: \"127.178.5.20:15000\", bind_vips: false }}\n\
             controller: {{ address: \"{a}:8610\", cluster: east, locality: us-east/us-east-1a }}\n",
            identity_files(&home.display().to_string())
        ),
    )
    .unwrap();
    let sidecar_cfg = home.join("sidecar.yaml").display().to_string();
    let _proxy = spawn(
        dir,
        &["proxy", "--config", &sidecar_cfg],
        "client-proxy.log",
    );
    let has_web = || admin_get("127.178.5.20:15000", "/config").contains("127.178.2.5");
    wait_until("the proxy has web's endpoint", 20, || {
        (!has_web()).then(String::new)
    });

    // Kill the leader: ctl-b leads within the lease (4 s) plus one retry
    // period (4/3 s) and a catalog sync.
    let killed = Instant::now();
    ctl_a.kill9();
    wait_until("ctl-b takes over", 15, || {
        assert!(
            has_web(),
            "the proxy kept its config while no controller led"
        );
        let (code, body) = admin_code(&b_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let took = killed.elapsed();
    eprintln!("ctl-b took over {took:?} after ctl-a was killed");
    assert!(
        took < Duration::from_millis(4000 + 1334 + 1500),
        "took {took:?}"
    );
    assert_eq!(holder(&api.api), ("ctl-b".to_owned(), 1));
    let s = status(dir, &b_admin);
    assert_eq!(web_endpoints(&s, "east").len(), 1, "{s:#}");
    assert!(has_web(), "the proxy kept its config");

    // SIGTERM hands the lease back: a restarted ctl-a leads at once.
    let _ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a-2.log");
    wait_until("ctl-a stands by", 20, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 503).then(|| format!("{code} {body}"))
    });
    let termed = Instant::now();
    let ok_kill = Command::new("kill")
        .args(["-TERM", &ctl_b.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok_kill.success());
    wait_until("ctl-a leads after ctl-b released the lease", 10, || {
        let (code, body) = admin_code(&a_admin, "/ready");
        (code != 200).then(|| format!("{code} {body}"))
    });
    let took = termed.elapsed();
    eprintln!("ctl-a led {took:?} after ctl-b's SIGTERM");
    assert!(
        took < Duration::from_secs(4),
        "released, not expired: {took:?}"
    );
    assert_eq!(holder(&api.api).0, "ctl-a");
}
