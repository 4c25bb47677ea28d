use serde_json::json;

use super::*;

fn opts() -> InjectOptions {
    InjectOptions::new("ghcr.example/strait:0.1.0")
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: { app: web }
  template:
    metadata:
      labels: { app: web }
    spec:
      serviceAccountName: web
      initContainers:
        - name: migrate
          image: web:1
      containers:
        - name: web
          image: web:1
          env:
            - { name: MODE, value: prod }
          ports: [{ containerPort: 8080 }]
          readinessProbe:
            httpGet: { path: /healthz, port: 8080 }
"#;

#[test]
fn a_deployment_gets_the_sidecar_env_and_volumes() {
    let (out, outcomes) = inject_yaml(DEPLOYMENT, &opts()).unwrap();
    assert_eq!(
        outcomes,
        vec![Outcome {
            object: "deployment/web".into(),
            result: Decision::Injected
        }]
    );
    let d = &crate::yaml::documents(&out).unwrap()[0];
    let spec = &d["spec"]["template"]["spec"];
    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], SIDECAR_NAME);
    assert_eq!(inits[0]["restartPolicy"], "Always");
    assert_eq!(
        inits[0]["args"],
        json!(["proxy", "--config", "/etc/strait/proxy/sidecar.yaml"])
    );
    assert_eq!(
        inits[1]["name"], "migrate",
        "the app's init containers stay, after the sidecar"
    );
    let env = spec["containers"][0]["env"].as_array().unwrap();
    assert_eq!(env[0], json!({"name": "MODE", "value": "prod"}));
    assert!(env.contains(&json!({"name": "HTTP_PROXY", "value": "http://127.0.0.1:15001"})));
    assert!(env.contains(&json!({"name": "no_proxy", "value": "localhost,127.0.0.1,::1"})));
    let vols = spec["volumes"].as_array().unwrap();
    assert_eq!(vols[0]["configMap"]["name"], "strait-proxy-web");
    assert_eq!(vols[1]["secret"]["secretName"], "strait-identity-web");
    // Nothing captures the pod's inbound traffic (explicit-proxy mode),
    // so the kubelet's probe still reaches the app as written.
    assert_eq!(
        spec["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}})
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"][keys::INJECTED],
        "ghcr.example/strait:0.1.0"
    );
}

#[test]
fn injecting_twice_changes_nothing_byte_for_byte() {
    let stream = format!(
        "{DEPLOYMENT}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {{ name: p }}\n  spec: {{ containers: [{{ name: a, image: a }}] }}\n---\napiVersion: v1\nkind: Service\nmetadata: {{ name: web }}\nspec: {{ ports: [{{ port: 80 }}] }}\n"
    );
    let (once, _) = inject_yaml(&stream, &opts()).unwrap();
    let (twice, outcomes) = inject_yaml(&once, &opts()).unwrap();
    assert_eq!(once, twice);
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(outcomes[2].result, Decision::NotAWorkload);
}

#[test]
fn a_new_image_replaces_the_sidecar_in_place() {
    let (once, _) = inject_yaml(DEPLOYMENT, &opts()).unwrap();
    let (again, _) = inject_yaml(&once, &InjectOptions::new("strait:0.2.0")).unwrap();
    let d = &crate::yaml::documents(&again).unwrap()[0];
    let inits = d["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[0]["image"], "strait:0.2.0");
}

#[test]
fn kinds_and_opt_outs() {
    let pod = |meta: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {"containers": [{"name": "a", "image": "a"}]}})
    };
    let tmpl = |api: &str, kind: &str, path: &str| {
        let mut v = json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}});
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut cur = &mut v;
        for p in &parts[..parts.len() - 1] {
            cur = cur.as_object_mut().unwrap().entry(*p).or_insert(json!({}));
        }
        cur[parts[parts.len() - 1]] = t;
        v
    };
    let injected = |v: &serde_json::Value| inject_object(v, &opts()).unwrap().1[0].result.clone();
    assert_eq!(injected(&pod(json!({}))), Decision::Injected);
    assert!(matches!(
        injected(&pod(
            json!({"annotations": {"strait.io/inject": "disabled"}})
        )),
        Decision::Skipped(_)
    ));
    assert!(matches!(
        injected(&pod(json!({"labels": {"strait.io/inject": "disabled"}}))),
        Decision::Skipped(_)
    ));
    for (api, kind, path) in [
        ("apps/v1", "StatefulSet", "/spec/template"),
        ("apps/v1", "DaemonSet", "/spec/template"),
        ("apps/v1", "ReplicaSet", "/spec/template"),
        ("batch/v1", "Job", "/spec/template"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
    ] {
        let v = tmpl(api, kind, path);
        let (out, o) = inject_object(&v, &opts()).unwrap();
        assert_eq!(o[0].result, Decision::Injected, "{kind}");
        let spec = out.pointer(&format!("{path}/spec")).unwrap();
        assert_eq!(spec["initContainers"][0]["name"], SIDECAR_NAME, "{kind}");
    }
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    assert_eq!(inject_object(&cm, &opts()).unwrap().0, cm);
}

#[test]
fn bad_workloads_get_a_clear_error() {
    let cases = [
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}),
            "without a pod template",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}),
            "spec.containers: missing",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "strait-proxy"}]}}),
            "reserves",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": []}, "spec": {"containers": []}}),
            "annotations: must be a map",
        ),
        (
            json!({"apiVersion": "v1", "kind": "List", "items": {}}),
            "items: must be a list",
        ),
    ];
    for (v, want) in cases {
        let e = inject_object(&v, &opts()).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn annotations_choose_config_identity_and_resources() {
    let v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {
            "strait.io/proxy-config": "my-cfg", "strait.io/identity-secret": "my-id",
            "strait.io/proxy-cpu-request": "200m", "strait.io/proxy-memory-limit": "512Mi"}},
        "spec": {"containers": [{"name": "a", "image": "a"}]}});
    let (out, _) = inject_object(&v, &opts()).unwrap();
    assert_eq!(out["spec"]["volumes"][0]["configMap"]["name"], "my-cfg");
    assert_eq!(out["spec"]["volumes"][1]["secret"]["secretName"], "my-id");
    let r = &out["spec"]["initContainers"][0]["resources"];
    assert_eq!(r["requests"]["cpu"], "200m");
    assert_eq!(r["requests"]["memory"], "256Mi");
    assert_eq!(r["limits"]["memory"], "512Mi");
}

fn token_opts() -> InjectOptions {
    let mut o = opts();
    o.identity = IdentityMode::Token;
    o
}

#[test]
fn the_token_identity_projects_a_service_account_token_for_the_ca() {
    let (out, _) = inject_yaml(DEPLOYMENT, &token_opts()).unwrap();
    let d = &crate::yaml::documents(&out).unwrap()[0];
    let spec = &d["spec"]["template"]["spec"];
    let vols = spec["volumes"].as_array().unwrap();
    let names: Vec<_> = vols.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["strait-proxy-config", "strait-identity", "strait-token"]
    );
    assert_eq!(vols[1]["emptyDir"], json!({"medium": "Memory"}), "{vols:?}");
    assert!(vols[1].get("secret").is_none(), "no identity Secret");
    assert_eq!(
        vols[2]["projected"],
        json!({"defaultMode": 0o444, "sources": [{"serviceAccountToken":
            {"audience": "strait", "expirationSeconds": 3600, "path": "token"}}]})
    );
    let mounts = spec["initContainers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(mounts.contains(&json!({"name": "strait-token",
        "mountPath": "/var/run/strait/token", "readOnly": true})));
    assert!(
        mounts
            .contains(&json!({"name": "strait-identity", "mountPath": "/var/run/strait/identity"})),
        "the kept certificate is written there: {mounts:?}"
    );
    // Idempotent, and the annotation and a re-injection switch modes in place.
    let (again, _) = inject_yaml(&out, &token_opts()).unwrap();
    assert_eq!(again, out);
    let (back, _) = inject_yaml(&out, &opts()).unwrap();
    let (plain, _) = inject_yaml(DEPLOYMENT, &opts()).unwrap();
    assert_eq!(back, plain, "back to the Secret: the token volume goes");
    let annotated = DEPLOYMENT.replace(
        "      labels: { app: web }\n",
        "      labels: { app: web }\n      annotations: { strait.io/identity: token }\n",
    );
    let (by_pod, _) = inject_yaml(&annotated, &opts()).unwrap();
    assert!(by_pod.contains("serviceAccountToken"), "{by_pod}");
}

#[test]
fn bad_identity_settings_are_refused_by_name() {
    let annotated = DEPLOYMENT.replace(
        "      labels: { app: web }\n",
        "      labels: { app: web }\n      annotations: { strait.io/identity: jwt }\n",
    );
    let err = inject_yaml(&annotated, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("annotation strait.io/identity") && err.contains("\"jwt\""),
        "{err}"
    );
    for (secs, ok) in [(599, false), (600, true), (172_800, true), (172_801, false)] {
        let mut o = token_opts();
        o.token_seconds = secs;
        assert_eq!(o.check().is_ok(), ok, "{secs}");
    }
}
