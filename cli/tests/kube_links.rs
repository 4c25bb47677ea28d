//! Links in Kubernetes objects: two `strait controller` replicas with
//! leader election on the fake API server (`strait-k8s-fake`); a link made
//! on the leader is stored as a `StraitLink` (and the peering Secret), not
//! in its `state_dir`; after the leader is killed the standby takes over,
//! loads that link and keeps syncing with the peer (a Service exported
//! only after the takeover reaches it); an unlink deletes the object. And
//! fencing: a leader that cannot renew stops serving before its lease
//! could pass to another replica.
//! Addresses: 127.183.0.0/16 only.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::clusters::Clusters;
use support::kubeapi::*;
use support::*;

/// A replica of east: both listen for gRPC on the one address peers dial
/// (the `strait-controller` Service in a cluster; only the leader binds
/// it), each has its own admin port and state directory.
fn replica_config(name: &str, admin_ip: &str, grpc: &str) -> String {
    format!(
        "cluster: east\nregion: us-east\nzone: us-east-1a\ntrust_domain: strait.local\n\
         state_dir: state/{name}\nlisten: {grpc}\nadmin_listen: {admin_ip}:8611\n\
         gateways: [127.183.5.3:15443]\ndefault_health_check: false\n{}\
         catalog:\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespaces: [shop]\n\
         \x20   leader_election: {{ namespace: strait-system, lease: 4s, identity: {name} }}\n",
        identity_files("east-ctl")
    )
}

/// `GET path` on an admin port: its status code.
fn ready(addr: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /ready HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The endpoints `status` shows for `name.shop` from `cluster`.
fn endpoints(status: &Value, name: &str, cluster: &str) -> Vec<Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == name && s["namespace"] == "shop")
        .flat_map(|s| s["clusters"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["cluster"] == cluster)
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A Service of `name` in shop with one ready endpoint at `ip`, exported.
fn exported_service(name: &str, ip: &str) -> Vec<Value> {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: shop }}\n\
         spec: {{ ports: [{{ name: http, port: 8080 }}] }}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{ name: {name}-x1, namespace: shop, labels: {{ kubernetes.io/service-name: {name} }} }}\n\
         addressType: IPv4\nports: [{{ name: http, port: 8080, protocol: TCP }}]\n\
         endpoints: [{{ addresses: [{ip}], conditions: {{ ready: true }} }}]\n---\n\
         apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
         metadata: {{ name: {name}, namespace: shop }}\n"
    );
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn a_link_made_on_the_leader_lives_in_kubernetes_and_the_new_leader_keeps_syncing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // west: a plain-hosts cluster; it also makes the mesh's root CA.
    let west = Clusters::up(dir, "127.183", &[("west", "us-west")]);
    ok(
        dir,
        &["ca", "intermediate", "--ca-dir", "ca", "--cluster", "east"],
    );
    let api = Api::start(dir, "127.183.5.2");
    // The CRDs of the install (StraitLink among them), then the app.
    let install = ok(dir, &["install", "kubernetes", "--cluster", "east"]);
    let mut crds = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&install) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "CustomResourceDefinition" {
            crds += 1;
            api.api.apply(v);
        }
    }
    assert!(install.contains("name: straitlinks.strait.io"), "{install}");
    assert_eq!(
        crds, 4,
        "GlobalService, TrafficPolicy, StraitLink, ServiceExport"
    );
    for doc in serde_yaml_ng::Deserializer::from_str(&APP.replace("127.178.", "127.183.")) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        api.api.apply(v);
    }
    issue(
        dir,
        "east",
        "spiffe://strait.local/ns/strait-system/sa/controller-east",
        "east-ctl",
    );
    let (a_admin, b_admin) = ("127.183.5.10:8611", "127.183.5.11:8611");
    std::fs::write(
        dir.join("a.yaml"),
        replica_config("ctl-a", "127.183.5.10", "127.183.5.1:8610"),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        replica_config("ctl-b", "127.183.5.11", "127.183.5.1:8610"),
    )
    .unwrap();
    let check = ok(dir, &["controller", "--config", "a.yaml", "--check"]);
    assert!(
        check.contains("links in namespace strait-system"),
        "{check}"
    );

    let mut ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a.log");
    wait_until("ctl-a leads", 20, || {
        (ready(a_admin) != 200).then(String::new)
    });
    let _ctl_b = spawn(dir, &["controller", "--config", "b.yaml"], "ctl-b.log");
    wait_until("ctl-b stands by", 20, || {
        (ready(b_admin) != 503).then(String::new)
    });

    // Link on the leader through its admin API.
    ok(
        dir,
        &[
            "link",
            "--from",
            "east",
            "--to",
            "west",
            "--from-controller",
            a_admin,
            "--from-state-dir",
            "state/ctl-a",
            "--dir",
            &dir.display().to_string(),
        ],
    );
    wait_until("west serves web.shop from east", 30, || {
        let s = west.status("west");
        (endpoints(&s, "web", "east").is_empty()).then(|| s.to_string())
    });
    // Stored in Kubernetes, not in the leader's state directory.
    let link = api
        .api
        .get("strait.io/straitlinks", "strait-system", "west")
        .expect("a StraitLink named after the peer");
    assert_eq!(link["spec"]["peer"], "west", "{link:#}");
    assert_eq!(link["spec"]["controller"], "127.183.1.1:8610", "{link:#}");
    assert_eq!(
        link["spec"]["peerIdentity"],
        "spiffe://strait.local/ns/strait-system/sa/controller-west"
    );
    assert_eq!(link["spec"]["failMode"], "fail-static");
    assert_eq!(
        link["status"]["conditions"][0]["type"], "Stored",
        "{link:#}"
    );
    assert_eq!(link["status"]["conditions"][0]["status"], "True");
    let links_dir = dir.join("state/ctl-a/links");
    let files = std::fs::read_dir(&links_dir).map_or(0, Iterator::count);
    assert_eq!(files, 0, "nothing in {}", links_dir.display());
    // A token issued by the leader: its hash, never the secret, in the
    // peering Secret.
    let token = ok(
        dir,
        &[
            "peering",
            "token",
            "--controller",
            a_admin,
            "--state-dir",
            "state/ctl-a",
        ],
    );
    let secret = api
        .api
        .get("/secrets", "strait-system", "strait-peering")
        .expect("the peering Secret");
    let pending = secret["data"]["pending.json"].as_str().unwrap_or_default();
    assert!(!pending.is_empty(), "{secret:#}");
    let decoded = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pending).unwrap(),
    )
    .unwrap();
    assert!(decoded.contains("\"pending\""), "{decoded}");
    let t = token.trim();
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, t).unwrap();
    let t: Value = serde_json::from_slice(&raw).unwrap();
    let s = t["secret"].as_str().unwrap();
    assert!(!decoded.contains(s), "only the hash is stored");

    // Kill the leader; ctl-b takes over and loads the link.
    ctl_a.kill9();
    wait_until("ctl-b takes over", 20, || {
        (ready(b_admin) != 200).then(String::new)
    });
    let b = status(dir, b_admin);
    let linked = b["links"].to_string();
    assert!(linked.contains("west"), "ctl-b has the link: {b:#}");
    // The token ctl-a issued is still pending on ctl-b.
    let b_token = ok(
        dir,
        &[
            "peering",
            "revoke",
            token.trim(),
            "--controller",
            b_admin,
            "--state-dir",
            "state/ctl-b",
        ],
    );
    assert!(b_token.contains("revoked 1 token(s)"), "{b_token}");
    // ctl-b syncs with west: a Service exported after the takeover
    // reaches it.
    for v in exported_service("api", "127.183.2.7") {
        api.api.apply(v);
    }
    wait_until("west serves api.shop from east through ctl-b", 30, || {
        let s = west.status("west");
        let eps = endpoints(&s, "api", "east");
        (!eps.iter().any(|e| e["address"] == "127.183.2.7:15006")).then(|| s.to_string())
    });

    // Unlinking on the new leader deletes the object.
    ok(
        dir,
        &[
            "unlink",
            "--peer",
            "west",
            "--controller",
            b_admin,
            "--state-dir",
            "state/ctl-b",
        ],
    );
    assert!(
        api.api
            .get("strait.io/straitlinks", "strait-system", "west")
            .is_none(),
        "the StraitLink is gone"
    );
}

#[test]
fn a_leader_that_cannot_renew_stops_serving_before_its_lease_runs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    issue(
        dir,
        "east",
        "spiffe://strait.local/ns/strait-system/sa/controller-east",
        "east-ctl",
    );
    let api = Api::start(dir, "127.183.6.2");
    for doc in serde_yaml_ng::Deserializer::from_str(&APP.replace("127.178.", "127.183.")) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        api.api.apply(v);
    }
    let grpc = "127.183.6.1:8610";
    std::fs::write(
        dir.join("a.yaml"),
        replica_config("ctl-a", "127.183.6.10", grpc),
    )
    .unwrap();
    let mut ctl_a = spawn(dir, &["controller", "--config", "a.yaml"], "ctl-a.log");
    wait_until("ctl-a leads", 20, || {
        (ready("127.183.6.10:8611") != 200).then(String::new)
    });
    wait_for(grpc.parse().unwrap());
    // The API server goes away: no renewal can succeed from now on.
    let cut = Instant::now();
    api.api.set_down(true);
    let deadline = cut + Duration::from_secs(10);
    while std::net::TcpStream::connect(grpc).is_ok() {
        assert!(Instant::now() < deadline, "ctl-a kept serving gRPC");
        pause(50);
    }
    let stopped = cut.elapsed();
    eprintln!("ctl-a stopped serving {stopped:?} after the api server went down (lease 4 s)");
    // Renew deadline: 2/3 of 4 s after the last renewal began, which was
    // at most one retry period (4/3 s) before the cut.
    assert!(
        stopped < Duration::from_secs(4),
        "stopped only after its lease could have passed: {stopped:?}"
    );
    assert!(
        stopped > Duration::from_millis(1000),
        "no step-down before the renew deadline: {stopped:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = ctl_a.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ctl-a did not exit");
        pause(100);
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("ctl-a.log")).unwrap();
    assert!(log.contains("lost the leader-election lease"), "{log}");
}
