use serde_json::Value;

use super::*;

pub(crate) fn options() -> InstallOptions {
    InstallOptions {
        cluster: ClusterName::new("east").unwrap(),
        trust_domain: "strait.local".parse().unwrap(),
        namespace: "strait-system".into(),
        image: "strait:test".into(),
        controller_replicas: 2,
        region: Some("us-east".into()),
        zone: Some("us-east-1a".into()),
        controller_advertise: None,
        gateway_addresses: vec![],
        dns_ip: None,
        ca: None,
        webhook_tls: WebhookTls::generate("strait-system", 365).unwrap(),
    }
}

fn find<'a>(all: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    &all.iter()
        .find(|m| m.kind == kind && m.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .value
}

fn pod_specs(all: &[Manifest]) -> Vec<(&str, &Value)> {
    all.iter()
        .filter(|m| m.kind == "Deployment")
        .map(|m| (m.name.as_str(), &m.value["spec"]["template"]["spec"]))
        .collect()
}

#[test]
fn every_object_the_install_needs_is_there_in_apply_order() {
    let all = manifests(&options()).unwrap();
    let kinds: Vec<&str> = all.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds[0], "Namespace");
    assert_eq!(&kinds[1..5], ["CustomResourceDefinition"; 4]);
    assert_eq!(*kinds.last().unwrap(), "MutatingWebhookConfiguration");
    for (kind, name) in [
        ("Deployment", "strait-controller"),
        ("Deployment", "strait-gateway"),
        ("Deployment", "strait-dns"),
        ("Deployment", "strait-injector"),
        ("Deployment", "strait-ca"),
        ("Service", "strait-ca"),
        ("Service", "strait-gateway"),
        ("Service", "strait-dns"),
        ("Service", "strait-injector"),
        ("PodDisruptionBudget", "strait-gateway"),
        ("ConfigMap", "strait-controller"),
        ("ConfigMap", "strait-gateway"),
        ("ConfigMap", "strait-injector"),
        ("Secret", "strait-injector-tls"),
    ] {
        find(&all, kind, name);
    }
    assert_eq!(
        find(&all, "Deployment", "strait-controller")["spec"]["replicas"],
        2
    );
    assert_eq!(
        find(&all, "Deployment", "strait-gateway")["spec"]["replicas"],
        2
    );
    let gw = &find(&all, "Service", "strait-gateway")["spec"];
    assert_eq!(gw["type"], "LoadBalancer");
    assert_eq!(gw["ports"][0]["port"], 15443);
    // Without a CA dir no CA material is printed.
    assert!(
        !all.iter()
            .any(|m| m.kind == "Secret" && m.name == "strait-ca")
    );
}

#[test]
fn every_container_is_non_root_read_only_capability_free_with_probes_and_resources() {
    let all = manifests(&options()).unwrap();
    for (name, spec) in pod_specs(&all) {
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        for c in spec["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert!(c["readinessProbe"].is_object(), "{name}");
            assert!(c["livenessProbe"].is_object(), "{name}");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
            assert_eq!(c["command"][0], common::BINARY, "{name}");
        }
    }
}

#[test]
fn rbac_names_no_wildcard_and_only_what_is_watched() {
    let all = manifests(&options()).unwrap();
    let mut resources = Vec::new();
    for m in all
        .iter()
        .filter(|m| m.kind == "ClusterRole" || m.kind == "Role")
    {
        for r in m.value["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                let list = r[field].as_array().unwrap();
                assert!(
                    !list.iter().any(|v| v.as_str().unwrap().contains('*')),
                    "{m:?}"
                );
            }
            for res in r["resources"].as_array().unwrap() {
                resources.push(format!("{}:{}", m.kind, res.as_str().unwrap()));
            }
        }
    }
    resources.sort();
    assert_eq!(
        resources,
        [
            "ClusterRole:endpointslices",
            "ClusterRole:globalservices",
            "ClusterRole:nodes",
            "ClusterRole:pods",
            "ClusterRole:serviceexports",
            "ClusterRole:services",
            "ClusterRole:tokenreviews",
            "ClusterRole:trafficpolicies",
            "Role:leases",
            "Role:secrets",
            "Role:secrets",
            "Role:straitlinks",
            "Role:straitlinks/status",
        ]
    );
    // Secrets: create (RBAC cannot name what does not exist yet), and
    // read or replace only the peering Secret; never list or watch them.
    let role = all.iter().find(|m| m.kind == "Role").unwrap();
    let secret_rules: Vec<_> = role.value["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"][0] == "secrets")
        .collect();
    for r in &secret_rules {
        let verbs = r["verbs"].to_string();
        assert!(!verbs.contains("list") && !verbs.contains("watch"), "{r}");
        if r["verbs"] != serde_json::json!(["create"]) {
            assert_eq!(
                r["resourceNames"],
                serde_json::json!(["strait-peering"]),
                "{r}"
            );
        }
    }
    // Only the controller's and the CA's pods carry an API token.
    for (name, spec) in pod_specs(&all) {
        assert_eq!(
            spec["automountServiceAccountToken"],
            name == "strait-controller" || name == "strait-ca",
            "{name}"
        );
    }
}

#[test]
fn the_webhook_opts_in_by_label_and_never_matches_system_namespaces() {
    let all = manifests(&options()).unwrap();
    let w = find(
        &all,
        "MutatingWebhookConfiguration",
        "strait-system-strait-injector",
    );
    let hooks = w["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["sideEffects"], "None");
        let never = h["namespaceSelector"]["matchExpressions"][0]["values"].to_string();
        assert!(
            never.contains("kube-system") && never.contains("strait-system"),
            "{never}"
        );
        assert!(h["clientConfig"]["caBundle"].is_string());
    }
    assert_eq!(
        hooks[0]["clientConfig"]["service"]["path"],
        "/inject/namespace"
    );
    assert_eq!(hooks[1]["clientConfig"]["service"]["path"], "/inject/pod");
}

#[test]
fn bad_options_are_refused_naming_the_field() {
    let mut o = options();
    o.namespace = "Strait_System".into();
    assert!(
        manifests(&o)
            .unwrap_err()
            .to_string()
            .starts_with("namespace:")
    );
    let mut o = options();
    o.image = "two words".into();
    assert!(manifests(&o).unwrap_err().to_string().starts_with("image:"));
    let mut o = options();
    o.region = None;
    assert!(manifests(&o).unwrap_err().to_string().starts_with("zone:"));
}

#[test]
fn coredns_block_forwards_clusterset_local_to_the_fixed_dns_ip() {
    let ip: std::net::IpAddr = "10.96.0.53".parse().unwrap();
    let m = coredns::config_map("coredns-custom", Some(ip)).unwrap();
    let block = m.value["data"]["strait.server"].as_str().unwrap();
    assert!(block.starts_with("clusterset.local:53 {"), "{block}");
    assert!(block.contains("forward . 10.96.0.53"), "{block}");
    assert!(
        coredns::config_map("coredns-custom", None)
            .unwrap_err()
            .to_string()
            .contains("--dns-ip")
    );
    let mut o = options();
    o.dns_ip = Some(ip);
    let all = manifests(&o).unwrap();
    assert_eq!(
        find(&all, "Service", "strait-dns")["spec"]["clusterIP"],
        "10.96.0.53"
    );
}

#[test]
fn the_ca_serves_token_reviews_from_the_secret_unpacked_by_its_init_container() {
    let all = manifests(&options()).unwrap();
    let spec = &find(&all, "Deployment", "strait-ca")["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "strait-ca");
    let init = &spec["initContainers"][0];
    assert_eq!(
        init["args"],
        serde_json::json!([
            "ca",
            "unpack",
            "--from",
            "/etc/strait/ca-secret",
            "--ca-dir",
            "ca",
            "--cluster",
            "east"
        ])
    );
    let c = &spec["containers"][0];
    let args = c["args"].to_string();
    assert!(
        args.contains("\"--token-review\",\"in-cluster\"") && args.contains("0.0.0.0:8600"),
        "{args}"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8601);
    // The Secret is only in the init container; the CA reads the copy.
    let mounts = c["volumeMounts"].to_string();
    assert!(!mounts.contains("ca-secret"), "{mounts}");
    let vols = spec["volumes"].as_array().unwrap();
    assert_eq!(vols[0]["secret"]["secretName"], "strait-ca");
    assert_eq!(vols[1]["emptyDir"]["medium"], "Memory");
    let svc = &find(&all, "Service", "strait-ca")["spec"];
    assert_eq!(svc["ports"][0]["port"], 8600);
}
