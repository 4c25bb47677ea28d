//! Meshes of `strait cluster up` clusters on this host, as an operator
//! builds them from docs/operations.md: clusters on `<net>.<i>.1`, apps (a
//! real Python HTTP server) and sidecars (`strait proxy`) on `<net>.<i>.5`,
//! certificates from `strait ca issue`, registrations by `strait service
//! register`. Everything started here stops on drop, also when a test
//! panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, cluster_pids, ok, pause, spawn, strait, wait_for};

const APP: &str = r#"
import http.server, sys
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), H).serve_forever()
"#;

/// False (with a printed SKIPPED line) when python3, the apps' runtime, is
/// missing.
pub fn have_python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: python3 is not installed (the app of this test)");
    }
    ok
}

/// A Python app answering every GET with its cluster's name on
/// `ip:18080`, killed on drop.
pub struct App(Child);

impl App {
    pub fn start(dir: &Path, cluster: &str, ip: &str) -> Self {
        let child = Command::new("python3")
            .args(["-c", APP, cluster, ip, "18080"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_for(format!("{ip}:18080").parse().unwrap());
        Self(child)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strait cluster up` clusters under `dir`; brought down on drop, and
/// what is left is killed, so a failing test leaves no process behind.
pub struct Clusters {
    pub dir: PathBuf,
    pub net: String,
    pub names: Vec<&'static str>,
}

impl Clusters {
    /// `strait sidecar add NAME -n demo --cluster CLUSTER` through the
    /// binary (with `--app APP --port 8080/http1 --export all` when an app
    /// is given): the JSON it prints.
    pub fn add_sidecar(&self, name: &str, cluster: &str, app: Option<&str>) -> serde_json::Value {
        let d = self.dir.display().to_string();
        let mut args = vec![
            "-o",
            "json",
            "sidecar",
            "add",
            name,
            "-n",
            "demo",
            "--cluster",
            cluster,
            "--dir",
            &d,
        ];
        if let Some(a) = app {
            args.extend(["--app", a, "--port", "8080/http1", "--export", "all"]);
        }
        let out = ok(&self.dir, &args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Brings up `(name, region)` number i (from 1) on `<net>.<i>.1`.
    pub fn up(dir: &Path, net: &str, clusters: &[(&'static str, &str)]) -> Self {
        let mut me = Self {
            dir: dir.to_owned(),
            net: net.to_owned(),
            names: Vec::new(),
        };
        let d = dir.display().to_string();
        for (i, (c, region)) in clusters.iter().enumerate() {
            me.names.push(c);
            let ip = format!("{net}.{}.1", i + 1);
            let zone = format!("{region}-1a");
            ok(
                Path::new("/"),
                &[
                    "cluster", "up", c, "--dir", &d, "--ip", &ip, "--region", region, "--zone",
                    &zone,
                ],
            );
        }
        me
    }

    /// east (us-east), west (us-west) and central (eu-central) on
    /// `<net>.{1,2,3}.1`, east linked with the other two.
    pub fn east_west_central(dir: &Path, net: &str) -> Self {
        let me = Self::up(
            dir,
            net,
            &[
                ("east", "us-east"),
                ("west", "us-west"),
                ("central", "eu-central"),
            ],
        );
        for to in ["west", "central"] {
            me.link("east", to);
        }
        me
    }

    /// The `<net>.<i>` prefix of `cluster`.
    pub fn prefix(&self, cluster: &str) -> String {
        let i = self
            .names
            .iter()
            .position(|n| *n == cluster)
            .expect("a cluster of this mesh");
        format!("{}.{}", self.net, i + 1)
    }

    /// `strait link --from --to`.
    pub fn link(&self, from: &str, to: &str) {
        let d = self.dir.display().to_string();
        ok(
            &self.dir,
            &["link", "--from", from, "--to", to, "--dir", &d],
        );
    }

    /// Runs `strait ARGS --cluster CLUSTER --dir DIR`.
    pub fn op(&self, cluster: &str, args: &[&str]) -> String {
        let d = self.dir.display().to_string();
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--cluster", cluster, "--dir", &d])
            .collect();
        ok(&self.dir, &all)
    }

    /// `strait status` of `cluster` as JSON.
    pub fn status(&self, cluster: &str) -> serde_json::Value {
        let admin = format!("{}.1:8611", self.prefix(cluster));
        let out = strait(&self.dir, &["-o", "json", "status", "--controller", &admin]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map_or(serde_json::Value::Null, |v| v[0].clone())
    }

    /// Waits until `cluster`'s status shows `echo` healthy in every one of
    /// `serving`.
    pub fn wait_healthy(&self, cluster: &str, serving: &[&str]) {
        let started = Instant::now();
        loop {
            let s = self.status(cluster);
            if serving.iter().all(|c| healthy_in(&s, c)) {
                eprintln!(
                    "{cluster}: echo healthy in {serving:?} after {:?}",
                    started.elapsed()
                );
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{cluster}'s status never showed echo healthy in {serving:?}: {s:#}"
            );
            pause(100);
        }
    }

    /// Issues a workload certificate `spiffe://strait.local/ns/demo/sa/<sa>`
    /// of `cluster` into `dir/pods/<pod>` and returns that directory.
    pub fn issue(&self, cluster: &str, sa: &str, pod: &str) -> PathBuf {
        let home = self.dir.join("pods").join(pod);
        let id = format!("spiffe://strait.local/ns/demo/sa/{sa}");
        let ca_dir = self.dir.join("ca").display().to_string();
        let out = home.display().to_string();
        ok(
            &self.dir,
            &[
                "ca",
                "issue",
                "--ca-dir",
                &ca_dir,
                "--cluster",
                cluster,
                "--spiffe-id",
                &id,
                "--out",
                &out,
            ],
        );
        home
    }

    /// A pod of `cluster` on `<prefix>.5`: a sidecar following the
    /// cluster's controller, with the `echo` app behind it (registered
    /// with `registration_extra` and exported to all) when `app`.
    pub fn pod(&self, cluster: &str, region: &str, app: bool, registration_extra: &str) -> Pod {
        let ip = format!("{}.5", self.prefix(cluster));
        let home = self.issue(cluster, if app { "echo" } else { "client" }, cluster);
        std::fs::write(
            home.join("sidecar.yaml"),
            sidecar_yaml(&home, &ip, cluster, region, app),
        )
        .unwrap();
        let app = app.then(|| {
            let a = App::start(&self.dir, cluster, &ip);
            std::fs::write(
                home.join("service.yaml"),
                format!(
                    "name: echo\nnamespace: demo\nports: [{{ port: 8080, protocol: http1 }}]\n\
                     endpoints: [{{ address: \"{ip}:15006\" }}]\nexport: all\n{registration_extra}\n"
                ),
            )
            .unwrap();
            let file = home.join("service.yaml").display().to_string();
            self.op(cluster, &["service", "register", "-f", &file]);
            a
        });
        let config = home.join("sidecar.yaml").display().to_string();
        let sidecar = spawn(
            &self.dir,
            &["proxy", "--config", &config],
            &format!("{cluster}-sidecar.log"),
        );
        wait_for(format!("{ip}:15001").parse().unwrap());
        Pod {
            ip,
            app,
            _sidecar: sidecar,
        }
    }

    /// The pid of `cluster`'s gateway.
    pub fn gateway_pid(&self, cluster: &str) -> u32 {
        cluster_pids(&self.dir, cluster)
            .into_iter()
            .find(|(r, _)| r == "gateway")
            .map(|(_, p)| p as u32)
            .expect("a gateway pid")
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for c in &self.names {
            let pids = cluster_pids(&self.dir, c);
            let d = self.dir.display().to_string();
            let _ = strait(Path::new("/"), &["cluster", "down", c, "--dir", &d]);
            for (_, pid) in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// An app (or none) and its sidecar on `ip`; both stop on drop.
pub struct Pod {
    pub ip: String,
    pub app: Option<App>,
    _sidecar: Proc,
}

impl Pod {
    /// The sidecar's explicit proxy.
    pub fn proxy(&self) -> std::net::SocketAddr {
        format!("{}:15001", self.ip).parse().unwrap()
    }
}

/// Whether `status` shows `echo` with endpoints in `cluster`, all healthy.
pub fn healthy_in(status: &serde_json::Value, cluster: &str) -> bool {
    status["services"].as_array().is_some_and(|svcs| {
        svcs.iter().any(|s| {
            s["name"] == "echo"
                && s["clusters"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["cluster"] == cluster
                            && c["endpoints"].as_array().is_some_and(|e| {
                                !e.is_empty() && e.iter().all(|e| e["health"] == "healthy")
                            })
                    })
                })
        })
    })
}

/// A sidecar config following `cluster`'s controller on `<prefix>.1`.
pub fn sidecar_yaml(home: &Path, ip: &str, cluster: &str, region: &str, app: bool) -> String {
    let app = if app {
        format!(
            "local_service: echo.demo\napp: [{{ port: 8080, protocol: http1, target: \"{ip}:18080\" }}]\n"
        )
    } else {
        String::new()
    };
    format!(
        "trust_domain: strait.local\n\
         identity: {{ files: {{ chain: {h}/chain.pem, key: {h}/key.pem, bundle: {h}/bundle.pem }} }}\n\
         listeners: {{ inbound: \"{ip}:15006\", outbound: \"{ip}:15001\", admin: \"{ip}:15000\", bind_vips: false }}\n\
         controller: {{ address: \"{net}.1:8610\", cluster: {cluster}, locality: {region}/{region}-1a }}\n{app}",
        h = home.display(),
        net = ip.rsplit_once('.').unwrap().0,
    )
}

/// A sidecar of `cluster` on `ip` that ignores every controller: its
/// snapshot (a file) sends `echo` straight to `endpoint` through
/// `gateway`, as a workload holding a valid certificate can always do.
/// Certificates in `home`.
pub fn static_sidecar(
    dir: &Path,
    home: &Path,
    ip: &str,
    cluster: &str,
    endpoint: &str,
    gateway: &str,
) -> Proc {
    let snapshot = format!(
        "version: 1\nlocal: {{ cluster: {cluster} }}\nclusters: [west]\nservices:\n\
         \x20 - name: echo\n    namespace: demo\n    vip: 127.99.0.5\n\
         \x20   ports: [{{ port: 8080, protocol: http1 }}]\n\
         \x20   endpoints: [{{ address: \"{endpoint}\", cluster: west, \
         identity: spiffe://strait.local/ns/demo/sa/echo, gateways: [\"{gateway}\"] }}]\n"
    );
    std::fs::write(home.join("snapshot.yaml"), snapshot).unwrap();
    std::fs::write(
        home.join("sidecar.yaml"),
        format!(
            "trust_domain: strait.local\n\
             identity: {{ files: {{ chain: {h}/chain.pem, key: {h}/key.pem, bundle: {h}/bundle.pem }} }}\n\
             listeners: {{ inbound: \"{ip}:15006\", outbound: \"{ip}:15001\", admin: \"{ip}:15000\", bind_vips: false }}\n\
             snapshot_file: {h}/snapshot.yaml\n",
            h = home.display()
        ),
    )
    .unwrap();
    let config = home.join("sidecar.yaml").display().to_string();
    let log = format!(
        "{}-static-sidecar.log",
        home.file_name().unwrap().to_string_lossy()
    );
    let p = spawn(dir, &["proxy", "--config", &config], &log);
    wait_for(format!("{ip}:15001").parse().unwrap());
    p
}
