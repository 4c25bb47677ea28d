//! `strait install kubernetes`, `strait inject` and `strait injector`
//! through the binary.
//!
//! No Kubernetes runs here, so the tests do the next most real things:
//! every generated Deployment is run as its pod would run it (its
//! ConfigMaps and Secrets written where the pod mounts them, under a
//! temporary root; the pod's address is a loopback address of
//! 127.165.0.0/16) and must pass its own readiness probe; every role's
//! config passes that role's `--check`; every manifest and every `strait
//! inject` output validates against the official Kubernetes 1.31 schemas
//! (kubernetes-validate, strict), and example custom resources against the
//! CRDs' own schemas (jsonschema).

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use strait_k8s_fake::{FakeApi, Options};
use support::*;

/// The Kubernetes version the schemas are pinned to.
const K8S_VERSION: &str = "1.31.0";
const CONTROLLER_IP: &str = "127.165.0.1";

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A CA with an intermediate for `east`, and the install printed with it.
fn install(dir: &Path) -> (String, Vec<Value>) {
    ca(dir, &["east"]);
    let text = ok(
        dir,
        &[
            "install",
            "kubernetes",
            "--cluster",
            "east",
            "--ca-dir",
            "ca",
            "--image",
            "localhost/strait:test",
            "--region",
            "us-east",
            "--zone",
            "us-east-1a",
        ],
    );
    let all = docs(&text);
    (text, all)
}

/// How a pod's address replaces the wildcard and loopback in its files
/// and arguments (every pod has its own loopback; here they share one).
struct Net<'a> {
    pod_ip: &'a str,
    /// Rewrite listen addresses (to run), or keep them (to `--check`).
    rewrite: bool,
}

impl Net<'_> {
    fn apply(&self, s: &str) -> String {
        let s = s.replace("$(STRAIT_CONTROLLER_SERVICE_HOST)", CONTROLLER_IP);
        if !self.rewrite {
            return s;
        }
        s.replace("0.0.0.0:", &format!("{}:", self.pod_ip))
            .replace("127.0.0.1:", &format!("{}:", self.pod_ip))
            .replace("10.96.0.10:", &format!("{CONTROLLER_IP}:"))
    }
}

/// Writes what `container` of `pod_spec` mounts under `root` and returns
/// its working directory and arguments (absolute paths under `root`).
fn materialize(
    root: &Path,
    objects: &[Value],
    pod_spec: &Value,
    container: &Value,
    net: &Net<'_>,
) -> (PathBuf, Vec<String>) {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    for m in container["volumeMounts"].as_array().unwrap() {
        let dir = under(m["mountPath"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let vol = pod_spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let data = if let Some(cm) = vol["configMap"]["name"].as_str() {
            find(objects, "ConfigMap", cm)["data"].clone()
        } else if let Some(s) = vol["secret"]["secretName"].as_str() {
            find(objects, "Secret", s)["stringData"].clone()
        } else {
            assert!(vol["emptyDir"].is_object(), "{vol}");
            continue;
        };
        for (k, v) in data.as_object().unwrap() {
            std::fs::write(dir.join(k), net.apply(v.as_str().unwrap())).unwrap();
        }
    }
    let workdir = under(container["workingDir"].as_str().unwrap());
    std::fs::create_dir_all(&workdir).unwrap();
    assert_eq!(container["command"], json!(["/usr/local/bin/strait"]));
    let args = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = net.apply(a.as_str().unwrap());
            if a.starts_with('/') {
                under(&a).display().to_string()
            } else {
                a
            }
        })
        .collect();
    (workdir, args)
}

fn deployment_pod(all: &[Value], name: &str) -> (Value, Value) {
    let spec = find(all, "Deployment", name)["spec"]["template"]["spec"].clone();
    let c = spec["containers"][0].clone();
    (spec, c)
}

/// Polls the container's readiness probe as the kubelet would.
fn probe_passes(container: &Value, ip: &str) {
    let p = &container["readinessProbe"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = if let Some(h) = p.get("httpGet") {
            let scheme = h["scheme"].as_str().unwrap().to_lowercase();
            let url = format!(
                "{scheme}://{ip}:{}{}",
                h["port"],
                h["path"].as_str().unwrap()
            );
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &url,
                ])
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout) == "200"
        } else {
            let port = p["tcpSocket"]["port"].as_u64().unwrap();
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        };
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: readiness probe {p} on {ip} never passed",
            container["name"]
        );
        pause(200);
    }
}

fn spawn_in(workdir: &Path, args: &[String], log: &Path) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .current_dir(workdir)
        .env_remove("STRAIT_LOG")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start strait");
    Proc(child)
}

#[test]
fn install_writes_one_private_file_per_object_and_refuses_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, printed) = install(tmp.path());
    ok(
        tmp.path(),
        &[
            "install",
            "kubernetes",
            "--cluster",
            "east",
            "--ca-dir",
            "ca",
            "--out",
            "east",
        ],
    );
    let mut files: Vec<_> = std::fs::read_dir(tmp.path().join("east"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), printed.len());
    assert!(
        files[0].ends_with("01-namespace-strait-system.yaml"),
        "{files:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}", f.display());
        assert_eq!(docs(&std::fs::read_to_string(f).unwrap()).len(), 1);
    }
    let err = fails(
        tmp.path(),
        &["install", "kubernetes", "--cluster", "East_1"],
    );
    assert!(err.contains("--cluster"), "{err}");
    let err = fails(
        tmp.path(),
        &[
            "install",
            "kubernetes",
            "--cluster",
            "west",
            "--ca-dir",
            "ca",
        ],
    );
    assert!(err.contains("no intermediate"), "{err}");
    let err = fails(
        tmp.path(),
        &["install", "kubernetes", "--cluster", "east", "--coredns"],
    );
    assert!(err.contains("--dns-ip"), "{err}");
    let out = ok(
        tmp.path(),
        &[
            "install",
            "kubernetes",
            "--cluster",
            "east",
            "--coredns",
            "--dns-ip",
            "10.96.0.53",
        ],
    );
    assert!(out.contains("forward . 10.96.0.53"), "{out}");
}

#[test]
fn every_role_config_of_the_install_passes_that_roles_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, all) = install(tmp.path());
    for name in ["strait-controller", "strait-gateway", "strait-injector"] {
        let root = tmp.path().join(format!("check-{name}"));
        let (spec, c) = deployment_pod(&all, name);
        let (workdir, mut args) = materialize(
            &root,
            &all,
            &spec,
            &c,
            &Net {
                pod_ip: "",
                rewrite: false,
            },
        );
        args.push("--check".into());
        let out = Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(&args)
            .current_dir(&workdir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("config ok"),
            "{name}: strait {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_installed_pods_and_an_injected_sidecar_start_and_pass_their_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut all) = install(tmp.path());
    // Run in dependency order: the controller first (others dial it).
    let pods = [
        ("strait-controller", CONTROLLER_IP),
        ("strait-gateway", "127.165.0.2"),
        ("strait-dns", "127.165.0.3"),
        ("strait-injector", "127.165.0.4"),
    ];
    // The controller's catalog is the Kubernetes API: in a pod through its
    // service account, here through a kubeconfig for the fake API server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeApi::start_with(Options::secure(
        "127.178.30.1:0".parse().unwrap(),
        "controller-token",
    )));
    let kubeconfig = tmp.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "controller-token", "strait-system")
        .unwrap();
    let mut procs = Vec::new();
    for (name, ip) in pods {
        let root = tmp.path().join(format!("pod-{name}"));
        let (spec, c) = deployment_pod(&all, name);
        let (workdir, args) = materialize(
            &root,
            &all,
            &spec,
            &c,
            &Net {
                pod_ip: ip,
                rewrite: true,
            },
        );
        if name == "strait-controller" {
            let file = root.join("etc/strait/controller/controller.yaml");
            let text = std::fs::read_to_string(&file).unwrap();
            let with = format!("  kubernetes:\n    kubeconfig: {}\n", kubeconfig.display());
            assert!(text.contains("  kubernetes:\n"), "{text}");
            std::fs::write(&file, text.replace("  kubernetes:\n", &with)).unwrap();
        }
        procs.push(spawn_in(&workdir, &args, &root.join("log")));
        probe_passes(&c, ip);
        if name == "strait-controller" {
            exec_peering_token(&workdir, &c, ip);
        }
        if name == "strait-dns" {
            // It answers for clusterset.local (nothing exported: NXDOMAIN).
            let out = Command::new("dig")
                .args([
                    &format!("@{ip}"),
                    "-p",
                    "8653",
                    "+time=2",
                    "+tries=3",
                    "web.shop.svc.clusterset.local",
                ])
                .output()
                .expect("dig");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("status: NXDOMAIN") && text.contains("flags: qr aa"),
                "{text}"
            );
        }
    }
    // The CA: its init container lays the Secret out as a CA directory,
    // then it serves (TokenReviews through the fake's kubeconfig instead
    // of the pod's service account).
    let ca_ip = "127.183.9.6";
    let root = tmp.path().join("pod-strait-ca");
    let (spec, c) = deployment_pod(&all, "strait-ca");
    let net = Net {
        pod_ip: ca_ip,
        rewrite: true,
    };
    let init = spec["initContainers"][0].clone();
    let (workdir, args) = materialize(&root, &all, &spec, &init, &net);
    let unpacked = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(&args)
        .current_dir(&workdir)
        .output()
        .unwrap();
    assert!(
        unpacked.status.success(),
        "{}",
        String::from_utf8_lossy(&unpacked.stderr)
    );
    let (workdir, mut args) = materialize(&root, &all, &spec, &c, &net);
    for a in &mut args {
        if a == "in-cluster" {
            *a = kubeconfig.display().to_string();
        }
    }
    procs.push(spawn_in(&workdir, &args, &root.join("log")));
    probe_passes(&c, ca_ip);
    let log = std::fs::read_to_string(root.join("log")).unwrap_or_default();
    assert!(log.contains("checked by TokenReview"), "{log}");

    // An app injected by `strait inject`, with the sidecar ConfigMap of the
    // docs and an identity Secret for its ServiceAccount.
    issue(
        tmp.path(),
        "east",
        "spiffe://strait.local/ns/shop/sa/web",
        "web-id",
    );
    let read = |f: &str| std::fs::read_to_string(tmp.path().join("web-id").join(f)).unwrap();
    all.push(json!({"kind": "Secret", "metadata": {"name": "strait-identity-web"},
        "stringData": {"chain.pem": read("chain.pem"), "key.pem": read("key.pem"), "bundle.pem": read("bundle.pem")}}));
    all.extend(docs(
        &std::fs::read_to_string(example("sidecar-config.yaml")).unwrap(),
    ));
    let injected = ok(
        tmp.path(),
        &[
            "inject",
            "-f",
            example("app.yaml").to_str().unwrap(),
            "--image",
            "localhost/strait:test",
        ],
    );
    let injected = docs(&injected);
    let spec = find(&injected, "Deployment", "web")["spec"]["template"]["spec"].clone();
    let sidecar = spec["initContainers"][0].clone();
    let root = tmp.path().join("pod-web");
    let ip = "127.165.0.5";
    let (workdir, args) = materialize(
        &root,
        &all,
        &spec,
        &sidecar,
        &Net {
            pod_ip: ip,
            rewrite: true,
        },
    );
    procs.push(spawn_in(&workdir, &args, &root.join("log")));
    probe_passes(&sidecar, ip);
    // The sidecar follows the installed controller: its config shows up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://{ip}:15000/config"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("\"east\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot from the controller: {text}"
        );
        pause(200);
    }
    drop(procs);
    // The installed controller led: it holds the Lease.
    let lease = api
        .get(
            "coordination.k8s.io/leases",
            "strait-system",
            "strait-controller",
        )
        .expect("the controller took the lease");
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );
}

/// `kubectl exec deploy/strait-controller -- strait peering token`: the
/// container's env and working directory lead `strait` to its admin API
/// and token.
fn exec_peering_token(workdir: &Path, container: &Value, ip: &str) {
    let net = Net {
        pod_ip: ip,
        rewrite: true,
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.args(["peering", "token", "--ttl", "5m"])
        .current_dir(workdir);
    for e in container["env"].as_array().unwrap() {
        cmd.env(
            e["name"].as_str().unwrap(),
            net.apply(e["value"].as_str().unwrap()),
        );
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success() && out.stdout.len() > 100,
        "peering token through the controller pod's env: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../k8s/examples")
        .join(name)
}

fn inject_stdin(dir: &Path, input: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["inject", "--image", "localhost/strait:test"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn inject_reads_stdin_and_is_idempotent_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let app = std::fs::read_to_string(example("app.yaml")).unwrap();
    let once = inject_stdin(tmp.path(), &app);
    let twice = inject_stdin(tmp.path(), &once);
    assert_eq!(once, twice);
    let from_file = ok(
        tmp.path(),
        &[
            "inject",
            "-f",
            example("app.yaml").to_str().unwrap(),
            "--image",
            "localhost/strait:test",
        ],
    );
    assert_eq!(once, from_file);
    let d = docs(&once);
    assert_eq!(d.len(), 5);
    assert_eq!(
        d[0],
        docs(&app)[0],
        "a ServiceAccount passes through unchanged"
    );
    std::fs::write(
        tmp.path().join("bad.yaml"),
        "kind: Pod\napiVersion: v1\nspec: {}\n",
    )
    .unwrap();
    let err = fails(tmp.path(), &["inject", "-f", "bad.yaml"]);
    assert!(err.contains("spec.containers: missing"), "{err}");
}

/// Runs `k8s/tests/validate.py`; `None` when its Python packages are
/// missing and the run does not require them.
fn validate(args: &[&str]) -> Option<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/tests/validate.py");
    let out = match Command::new("python3").arg(script).args(args).output() {
        Ok(o) => o,
        Err(e) => return skip(&format!("python3: {e}")),
    };
    if out.status.code() == Some(3) {
        return skip(String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

fn skip(why: &str) -> Option<(bool, String)> {
    assert!(
        std::env::var_os("STRAIT_REQUIRE_KUBE_VALIDATE").is_none(),
        "schema validation required (STRAIT_REQUIRE_KUBE_VALIDATE) but {why}"
    );
    eprintln!(
        "skipped: Kubernetes schema validation: {why} (pip install kubernetes-validate jsonschema)"
    );
    None
}

#[test]
fn every_manifest_and_injected_workload_validates_against_the_kubernetes_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = install(tmp.path());
    let t = tmp.path();
    std::fs::write(t.join("install.yaml"), &text).unwrap();
    let coredns = ok(
        t,
        &[
            "install",
            "kubernetes",
            "--cluster",
            "east",
            "--coredns",
            "--dns-ip",
            "10.96.0.53",
        ],
    );
    std::fs::write(t.join("coredns.yaml"), coredns).unwrap();
    let app = std::fs::read_to_string(example("app.yaml")).unwrap();
    std::fs::write(t.join("injected.yaml"), inject_stdin(t, &app)).unwrap();
    let app_file = example("app.yaml").display().to_string();
    let with_token = ok(t, &["inject", "-f", &app_file, "--identity", "token"]);
    assert!(with_token.contains("serviceAccountToken"), "{with_token}");
    std::fs::write(t.join("injected-token.yaml"), with_token).unwrap();
    let files = [
        "install.yaml",
        "coredns.yaml",
        "injected.yaml",
        "injected-token.yaml",
    ]
    .map(|f| t.join(f).display().to_string());
    let sidecar = example("sidecar-config.yaml").display().to_string();
    let sidecar_token = example("sidecar-config-token.yaml").display().to_string();
    let mut args = vec!["k8s", K8S_VERSION];
    args.extend(files.iter().map(String::as_str));
    args.push(&sidecar);
    args.push(&sidecar_token);
    let Some((ok_, out)) = validate(&args) else {
        return;
    };
    assert!(ok_, "{out}");
    // The validator does refuse what is wrong.
    let mut broken = docs(&text);
    broken[0]["spec"] = json!({"finalizers": "kubernetes"});
    std::fs::write(
        t.join("broken.yaml"),
        serde_yaml_ng::to_string(&broken[0]).unwrap(),
    )
    .unwrap();
    let (ok_, out) =
        validate(&["k8s", K8S_VERSION, t.join("broken.yaml").to_str().unwrap()]).unwrap();
    assert!(!ok_ && out.contains("INVALID"), "{out}");
}

#[test]
fn example_custom_resources_validate_against_the_crds_own_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, _) = install(tmp.path());
    let crds = tmp.path().join("install.yaml");
    std::fs::write(&crds, text).unwrap();
    let valid = example("resources.yaml");
    let invalid = example("resources-invalid.yaml");
    let Some((ok_, out)) = validate(&[
        "crs",
        crds.to_str().unwrap(),
        valid.to_str().unwrap(),
        invalid.to_str().unwrap(),
    ]) else {
        return;
    };
    assert!(ok_, "{out}");
}

#[test]
fn kubernetes_commands_teach_by_example() {
    let d = tempfile::tempdir().unwrap();
    for (cmd, example) in [
        (
            &["install", "kubernetes", "--help"][..],
            "strait install kubernetes --cluster east | kubectl apply -f -",
        ),
        (&["inject", "--help"][..], "strait inject -f app.yaml"),
        (
            &["injector", "--help"][..],
            "strait injector --config injector.yaml",
        ),
    ] {
        let help = ok(d.path(), cmd);
        assert!(
            help.contains(example),
            "strait {cmd:?} shows no example ({example:?}):\n{help}"
        );
    }
    let version = ok(d.path(), &["--version"]);
    assert_eq!(version, format!("strait {}\n", env!("CARGO_PKG_VERSION")));
}
