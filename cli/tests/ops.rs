//! Role commands and operator verbs against real `strait controller`
//! processes on loopback (127.150.x.y), driven as an operator would.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Cluster {
    name: &'static str,
    admin: String,
    state: PathBuf,
    _proc: Proc,
}

impl Cluster {
    /// `--controller ADDR --state-dir DIR` of this cluster.
    fn conn(&self) -> Vec<String> {
        vec![
            "--controller".into(),
            self.admin.clone(),
            "--state-dir".into(),
            self.state.display().to_string(),
        ]
    }
}

fn start_controller(dir: &Path, name: &'static str, net: u8, region: &str) -> Cluster {
    let id = format!("spiffe://strait.local/ns/strait-system/sa/controller-{name}");
    let certs = format!("{name}-ctl");
    issue(dir, name, &id, &certs);
    let ip = format!("127.150.{net}.1");
    let yaml = format!(
        "cluster: {name}\nregion: {region}\nzone: {region}-1a\ntrust_domain: strait.local\n\
         state_dir: state/{name}\nlisten: {ip}:8610\nadmin_listen: {ip}:8611\n\
         gateways: [\"127.150.{net}.10:15443\"]\n\
         identity: {{ files: {{ chain: {certs}/chain.pem, key: {certs}/key.pem, bundle: {certs}/bundle.pem }} }}\n"
    );
    let file = format!("{name}.yaml");
    std::fs::write(dir.join(&file), yaml).unwrap();
    let check = ok(dir, &["controller", "--config", &file, "--check"]);
    assert!(
        check.contains(&format!("config ok: cluster {name}")),
        "{check}"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["controller", "--config", &file])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start controller");
    let proc = Proc(child);
    let admin = format!("{ip}:8611");
    wait_for(admin.parse().unwrap());
    // The token is written before the admin port opens.
    assert!(dir.join("state").join(name).join("admin-token").exists());
    Cluster {
        name,
        admin,
        state: dir.join("state").join(name),
        _proc: proc,
    }
}

fn status(dir: &Path, c: &Cluster) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&ok(
        dir,
        &["-o", "json", "status", "--controller", &c.admin],
    ))
    .unwrap();
    v[0].clone()
}

/// Polls `strait status` until `pred` holds (at most 15 s).
fn eventually(dir: &Path, c: &Cluster, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(dir, c);
        if pred(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status of {} is {s:#}",
            c.name
        );
        pause(200);
    }
}

fn with(args: &[&str], conn: &[String]) -> Vec<String> {
    args.iter()
        .map(|s| (*s).to_owned())
        .chain(conn.iter().cloned())
        .collect()
}

fn run_ok(dir: &Path, args: Vec<String>) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(dir, &refs)
}

/// `strait policy show echo -n demo` as JSON, from `c`'s controller.
fn policy_of_echo(dir: &Path, c: &Cluster) -> serde_json::Value {
    serde_json::from_str(&run_ok(
        dir,
        with(
            &["-o", "json", "policy", "show", "echo", "-n", "demo"],
            &c.conn(),
        ),
    ))
    .unwrap()
}

#[test]
fn operator_links_exports_sets_policy_and_unlinks_two_controllers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, &["east", "west"]);
    let east = start_controller(d, "east", 1, "us-east");
    let west = start_controller(d, "west", 2, "us-west");

    std::fs::write(
        d.join("echo.yaml"),
        "name: echo\nnamespace: demo\nports: [{ port: 8080, protocol: http1 }]\n\
         endpoints: [{ address: \"127.150.2.5:15006\" }]\n",
    )
    .unwrap();
    let out = run_ok(
        d,
        with(&["service", "register", "-f", "echo.yaml"], &west.conn()),
    );
    assert!(
        out.contains("registered demo/echo (1 endpoint(s))"),
        "{out}"
    );

    let out = run_ok(
        d,
        vec![
            "link".into(),
            "--from".into(),
            "east".into(),
            "--to".into(),
            "west".into(),
            "--from-controller".into(),
            east.admin.clone(),
            "--from-state-dir".into(),
            east.state.display().to_string(),
            "--to-controller".into(),
            west.admin.clone(),
            "--to-state-dir".into(),
            west.state.display().to_string(),
        ],
    );
    assert!(out.contains("linked with west"), "{out}");
    let s = status(d, &east);
    assert_eq!(s["links"][0]["peer"], "west", "{s:#}");

    let out = run_ok(
        d,
        with(
            &["export", "echo", "-n", "demo", "--to", "east"],
            &west.conn(),
        ),
    );
    assert_eq!(out.trim(), "demo/echo: export east");
    eventually(d, &east, "echo imported from west", |s| {
        s["services"].as_array().is_some_and(|svcs| {
            svcs.iter()
                .any(|x| x["name"] == "echo" && x["clusters"][0]["cluster"] == "west")
        })
    });

    let out = run_ok(
        d,
        with(
            &[
                "policy",
                "set",
                "echo",
                "-n",
                "demo",
                "--failover",
                "west",
                "--distribute",
                "us-east/*=80,us-west/*=20",
            ],
            &east.conn(),
        ),
    );
    assert!(out.contains("failover    west"), "{out}");
    let shown = policy_of_echo(d, &east);
    assert_eq!(shown["failover"][0], "west");
    assert_eq!(shown["distribute"][0]["to"]["us-east/*"], 80, "{shown:#}");

    // Authorization flags change only the authorization; traffic flags
    // keep it.
    let out = run_ok(
        d,
        with(
            &[
                "policy",
                "set",
                "echo",
                "-n",
                "demo",
                "--deny-from",
                "spiffe://strait.local/ns/guest/*",
                "--paths",
                "/admin",
            ],
            &east.conn(),
        ),
    );
    assert!(out.contains("failover    west"), "{out}");
    assert!(
        out.contains("authorization cli (ports all)")
            && out.contains("deny  from spiffe://strait.local/ns/guest/* paths /admin"),
        "{out}"
    );
    run_ok(
        d,
        with(
            &["policy", "set", "echo", "-n", "demo", "--failover", "west"],
            &east.conn(),
        ),
    );
    let shown = policy_of_echo(d, &east);
    assert_eq!(
        shown["authorization"][0]["deny"][0]["paths"][0], "/admin",
        "{shown:#}"
    );
    assert_eq!(
        shown["distribute"].as_array().map(Vec::len),
        Some(0),
        "{shown:#}"
    );
    let out = run_ok(
        d,
        with(
            &["policy", "set", "echo", "-n", "demo", "--clear-authz"],
            &east.conn(),
        ),
    );
    assert!(out.contains("authorization (none"), "{out}");

    // Routes: read-modify-write of the route of one prefix.
    let out = run_ok(
        d,
        with(
            &[
                "policy",
                "set",
                "echo",
                "-n",
                "demo",
                "--path-prefix",
                "/api",
                "--timeout",
                "2s",
                "--retries",
                "3",
                "--retry-on",
                "5xx,connect-failure",
            ],
            &east.conn(),
        ),
    );
    assert!(
        out.contains("route /api") && out.contains("timeout 2s retries 3 on 5xx,connect-failure"),
        "{out}"
    );
    run_ok(
        d,
        with(
            &["policy", "set", "echo", "-n", "demo", "--timeout", "500ms"],
            &east.conn(),
        ),
    );
    run_ok(
        d,
        with(
            &[
                "policy",
                "set",
                "echo",
                "-n",
                "demo",
                "--path-prefix",
                "/api",
                "--retries",
                "1",
            ],
            &east.conn(),
        ),
    );
    let shown = policy_of_echo(d, &east);
    let routes = &shown["routes"];
    assert_eq!(routes.as_array().map(Vec::len), Some(2), "{shown:#}");
    assert_eq!(routes[0]["path_prefix"], "/api", "{shown:#}");
    assert_eq!(routes[0]["timeout"], "2s", "timeout kept: {shown:#}");
    assert_eq!(routes[0]["retry"]["attempts"], 1, "{shown:#}");
    assert_eq!(
        routes[0]["retry"]["retry_on"],
        serde_json::json!(["5xx", "connect-failure"]),
        "{shown:#}"
    );
    assert_eq!(routes[1]["path_prefix"], "/", "{shown:#}");
    assert_eq!(routes[1]["timeout"], "500ms", "{shown:#}");
    assert_eq!(shown["failover"][0], "west", "other parts kept: {shown:#}");
    let out = run_ok(
        d,
        with(
            &["policy", "set", "echo", "-n", "demo", "--clear-routes"],
            &east.conn(),
        ),
    );
    assert!(out.contains("routes (none"), "{out}");

    let out = run_ok(d, with(&["unexport", "echo", "-n", "demo"], &west.conn()));
    assert_eq!(out.trim(), "demo/echo: export none");
    eventually(d, &east, "echo withdrawn", |s| {
        s["services"]
            .as_array()
            .is_some_and(|svcs| svcs.iter().all(|x| x["name"] != "echo"))
    });

    let out = run_ok(d, with(&["unlink", "--peer", "west"], &east.conn()));
    assert_eq!(out.trim(), "unlinked west (it removed its side too)");
    // An unlink on one side ends the link on both.
    for side in [&east, &west] {
        let s = status(d, side);
        assert_eq!(s["links"].as_array().map(Vec::len), Some(0), "{s:#}");
    }

    // A token never used can be revoked: establishing with it is refused.
    let token = run_ok(d, with(&["peering", "token", "--ttl", "5m"], &west.conn()));
    let revoke = |side: &Cluster, what: &str| with(&["peering", "revoke", what], &side.conn());
    let out = run_ok(d, revoke(&west, token.trim()));
    assert_eq!(out.trim(), "revoked 1 token(s); 0 unused token(s) left");
    let err = fails(
        d,
        &with(&["peering", "establish", token.trim()], &east.conn())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        err.contains("peering secret is unknown, expired or already used"),
        "{err}"
    );
    let out = run_ok(d, revoke(&west, token.trim()));
    assert!(out.starts_with("nothing to revoke"), "{out}");
    let err = fails(
        d,
        &revoke(&east, token.trim())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("issued by cluster west, not east"), "{err}");
    run_ok(d, with(&["peering", "token"], &west.conn()));
    run_ok(d, with(&["peering", "token"], &west.conn()));
    let out = run_ok(d, revoke(&west, "--all"));
    assert_eq!(out.trim(), "revoked 2 token(s); 0 unused token(s) left");

    // Peering by hand: token on one side, establish on the other.
    let token = run_ok(d, with(&["peering", "token", "--ttl", "5m"], &west.conn()));
    let out = run_ok(
        d,
        with(&["peering", "establish", token.trim()], &east.conn()),
    );
    assert!(out.contains("linked with west"), "{out}");
    assert!(out.contains("default lease"), "{out}");
    // The lease of west's data is set per link, and shown in status.
    let out = run_ok(
        d,
        with(
            &["peering", "set", "--peer", "west", "--lease", "45s"],
            &east.conn(),
        ),
    );
    assert!(out.contains("lease 45s"), "{out}");
    let s = status(d, &east);
    assert_eq!(s["links"][0]["lease_secs"], 45, "{s:#}");
    let err = fails(
        d,
        &with(
            &["peering", "set", "--peer", "west", "--lease", "0s"],
            &east.conn(),
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(err.contains("between 1s and 24h"), "{err}");
    let err = fails(
        d,
        &with(&["peering", "establish", token.trim()], &east.conn())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("refused"), "a token is used once: {err}");

    // A wrong token is refused with 401 and the file it came from.
    let bad = d.join("bad-state");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("admin-token"), "not-the-token\n").unwrap();
    let err = fails(
        d,
        &[
            "export",
            "echo",
            "-n",
            "demo",
            "--controller",
            &west.admin,
            "--state-dir",
            bad.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("wrong or missing admin token (read from"),
        "{err}"
    );
    assert!(err.contains("bad-state/admin-token"), "{err}");
    // Reading the policy needs no token; an unknown service is named.
    let err = fails(d, &["policy", "show", "nope", "--controller", &east.admin]);
    assert!(
        err.contains("no traffic policy is set for service default/nope"),
        "{err}"
    );
}

#[test]
fn gateway_learns_its_export_table_from_the_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, &["north"]);
    let north = start_controller(d, "north", 3, "eu-north");
    std::fs::write(
        d.join("api.yaml"),
        "name: api\nports: [{ port: 9000, protocol: http1 }]\n\
         endpoints: [{ address: \"127.150.3.5:15006\" }]\nexport: all\n",
    )
    .unwrap();
    run_ok(
        d,
        with(&["service", "register", "-f", "api.yaml"], &north.conn()),
    );
    issue(
        d,
        "north",
        "spiffe://strait.local/ns/strait-system/sa/gateway-north",
        "gw",
    );
    // The gateway follows the controller's config push (its gRPC port),
    // as the cluster's gateway identity.
    let yaml = "cluster: north\ntrust_domain: strait.local\n\
         controller: { address: \"127.150.3.1:8610\" }\n\
         identity: { files: { chain: gw/chain.pem, key: gw/key.pem, bundle: gw/bundle.pem } }\n\
         listeners: { public: \"127.150.3.10:15443\", admin: \"127.150.3.10:15021\" }\n";
    std::fs::write(d.join("gw.yaml"), yaml).unwrap();
    let check = ok(d, &["gateway", "--config", "gw.yaml", "--check"]);
    assert!(
        check.contains("exports from controller 127.150.3.1:8610"),
        "{check}"
    );
    // The old form (the controller's admin address) is refused, saying why.
    std::fs::write(
        d.join("old.yaml"),
        yaml.replace("{ address: \"127.150.3.1:8610\" }", &north.admin),
    )
    .unwrap();
    let err = fails(d, &["gateway", "--config", "old.yaml", "--check"]);
    assert!(err.contains("controller: is now { address:"), "{err}");
    let _gw = spawn(d, &["gateway", "--config", "gw.yaml"], "gw.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exports = admin_get("127.150.3.10:15021", "/exports");
        if exports.contains("\"name\":\"api\"") && exports.contains("127.150.3.5:15006") {
            // No link yet: no cluster is admitted.
            assert!(exports.contains("\"linked\":[]"), "{exports}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no export table from the controller; /exports says {exports}; log:\n{}",
            std::fs::read_to_string(d.join("gw.log")).unwrap_or_default()
        );
        pause(100);
    }
}

#[test]
fn bad_input_is_refused_with_the_offending_part_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let nobody = ["--controller", "127.150.9.9:8611", "--state-dir", "."];
    let err = fails(
        d,
        &[
            &[
                "policy",
                "set",
                "x",
                "--distribute",
                "us-east/*=80,us-west/*",
            ][..],
            &nobody,
        ]
        .concat(),
    );
    assert!(
        err.contains("--distribute") && err.contains("us-west/*"),
        "{err}"
    );
    let err = fails(
        d,
        &[
            &[
                "policy",
                "set",
                "x",
                "--allow-from",
                "spiffe://strait.local/ns/a/sa/*",
            ][..],
            &nobody,
        ]
        .concat(),
    );
    assert!(
        err.contains("--allow-from: \"spiffe://strait.local/ns/a/sa/*\""),
        "{err}"
    );
    let err = fails(
        d,
        &[
            &["policy", "set", "x", "--retry-on", "5xx,sometimes"][..],
            &nobody,
        ]
        .concat(),
    );
    assert!(err.contains("--retry-on: \"sometimes\""), "{err}");
    let err = fails(
        d,
        &[&["policy", "set", "x", "--timeout", "0s"][..], &nobody].concat(),
    );
    assert!(err.contains("--timeout: \"0s\" is invalid"), "{err}");
    let err = fails(
        d,
        &[&["policy", "set", "x", "--retries", "11"][..], &nobody].concat(),
    );
    assert!(err.contains("--retries: \"11\""), "{err}");
    let err = fails(
        d,
        &[&["export", "x", "--to", "west,No_Such"][..], &nobody].concat(),
    );
    assert!(err.contains("--to: bad cluster name \"No_Such\""), "{err}");
    std::fs::write(d.join("admin-token"), "t\n").unwrap();
    let err = fails(d, &[&["unexport", "x"][..], &nobody].concat());
    assert!(
        err.contains("cannot reach the controller admin port at 127.150.9.9:8611"),
        "{err}"
    );
    let err = fails(d, &["unlink", "--peer", "west"]);
    assert!(err.contains("which controller?"), "{err}");
    std::fs::write(d.join("demo.json"), r#"{"pid":1,"clusters":[{"name":"east","admin":"127.150.9.9:8611","dns":"127.0.0.1:1","outbound_proxy":"127.0.0.1:2","gateways":[]}]}"#).unwrap();
    let err = fails(
        d,
        &["link", "--from", "east", "--to", "north", "--dir", "."],
    );
    assert!(err.contains("no cluster \"north\" in the demo"), "{err}");
    std::fs::write(d.join("c.yaml"), "cluster: east\ntrust_domain: strait.local\nstate_dir: s\nidentity: { files: { chain: a, key: b, bundle: c } }\nport: 1\n").unwrap();
    let err = fails(d, &["controller", "--config", "c.yaml", "--check"]);
    assert!(err.contains("unknown field `port`"), "{err}");
}
