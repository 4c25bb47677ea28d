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

use support::clusters::Clusters;
use support::kubeapi::*;
use support::*;

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
        "FAIL  Deployment strait-system/strait-ca: 0/2 ready",
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
        "strait-ca",
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
            "catalog kubernetes (kubeconfig kubeconfig, namespaces shop, services mesh=strait, links in the client's namespace)"
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

#[test]
fn strait_ca_serve_signs_for_a_service_account_token_after_a_token_review() {
    use rustls_pki_types::UnixTime;
    use strait_ca::client::{CaClient, ClientError};
    use strait_ca::{CaDir, CertStore, SharedBundle};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca(dir, &["east"]);
    let api = Api::start(dir, "127.178.7.2");
    // A projected token of shop/web for audience strait (JWT-shaped; the
    // fake knows it by value).
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.c2lnLXdlYg";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    api.api.add_token(
        token,
        strait_k8s_fake::TokenFacts {
            namespace: "shop".into(),
            service_account: "web".into(),
            audiences: vec!["strait".into()],
            expires: now + 3600,
        },
    );
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
            "127.178.7.1:8600",
            "--token-review",
            "kubeconfig",
        ],
        "ca.log",
    );
    wait_for("127.178.7.1:8600".parse().unwrap());
    let bundle = SharedBundle::new(CaDir::open(&dir.join("ca")).unwrap().bundle().unwrap());
    let csr = |id: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        p.serialize_request(&key).unwrap().der().to_vec()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = "127.178.7.1:8600".parse().unwrap();
        let mut client = CaClient::connect(addr, &bundle, &CertStore::empty())
            .await
            .unwrap();
        let signed = client
            .sign(csr("spiffe://strait.local/ns/shop/sa/web"), token, None)
            .await
            .expect("signed after the token review");
        let id = bundle
            .get()
            .verify(
                &signed.chain,
                UnixTime::now(),
                strait_ca::verify::Usage::Client,
            )
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://strait.local/ns/shop/sa/web");
        match client
            .sign(csr("spiffe://strait.local/ns/shop/sa/db"), token, None)
            .await
        {
            Err(ClientError::Refused {
                reason, message, ..
            }) => {
                assert_eq!(reason, "token_wrong_identity", "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
    let log = std::fs::read_to_string(dir.join("ca.log")).unwrap();
    assert!(log.contains("checked by TokenReview"), "{log}");
}
