//! A fake Kubernetes API server for `strait` tests (cli/tests/kube_api.rs,
//! kube_leader.rs): the fake of `strait-k8s-fake` on a runtime of its own,
//! the real `kubectl` pointed at it, and the objects and configs those
//! tests share. Addresses: 127.178.0.0/16 only.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_k8s_fake::{FakeApi, Options};

use super::{identity_files, issue, pause, strait};

pub const TOKEN: &str = "kubectl-and-controller-token";

/// The fake API server and the runtime it runs on (dropped together).
pub struct Api {
    pub api: FakeApi,
    _rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn start(dir: &Path, ip: &str) -> Self {
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
pub fn have_kubectl() -> bool {
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
pub fn kubectl(dir: &Path, args: &[&str], stdin: &str) -> Output {
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

pub fn kubectl_ok(dir: &Path, args: &[&str], stdin: &str) -> String {
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
pub const APP: &str = r#"
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
pub fn web_endpoints(status: &Value, cluster: &str) -> Vec<Value> {
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

pub fn status(dir: &Path, admin: &str) -> Value {
    let out = strait(dir, &["-o", "json", "status", "--controller", admin]);
    serde_json::from_slice::<Value>(&out.stdout).map_or(Value::Null, |v| v[0].clone())
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let Some(last) = f() else { return };
        assert!(Instant::now() < deadline, "timed out: {what}\nlast: {last}");
        pause(200);
    }
}

/// The east controller's config: the Kubernetes catalog through the fake.
pub fn east_config(dir: &Path) -> String {
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
