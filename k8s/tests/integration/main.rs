//! The injection webhook over real TLS: AdmissionReview v1 requests shaped
//! as the API server sends them, answers checked by applying their JSON
//! Patch with an independent implementation (the `json-patch` crate) and
//! comparing with what `strait inject` makes of the same object.

mod tokenreview;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use strait_k8s::inject::{self, InjectOptions};
use strait_k8s::injector::{self, InjectorConfig};
use strait_k8s::install::WebhookTls;

const NS: &str = "strait-system";

struct Webhook {
    handle: injector::Handle,
    client: Arc<rustls::ClientConfig>,
}

async fn webhook() -> Webhook {
    let tls = WebhookTls::generate(NS, 1).unwrap();
    let config = InjectorConfig {
        listen: "127.165.1.1:0".parse().unwrap(),
        namespace: NS.into(),
        tls: injector::server_tls(&tls.cert_pem, &tls.key_pem).unwrap(),
        inject: opts(),
    };
    let handle = injector::start(config).await.unwrap();
    // Trust only the webhook's own CA, as the API server does (caBundle).
    let mut roots = rustls::RootCertStore::empty();
    for c in strait_ca::pem::certs(&tls.ca_pem) {
        roots.add(c).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(strait_ca::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Webhook {
        handle,
        client: Arc::new(client),
    }
}

fn opts() -> InjectOptions {
    InjectOptions::new("localhost/strait:test")
}

impl Webhook {
    /// One HTTPS request to `strait-injector.strait-system.svc`.
    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        call(self.handle.addr, self.client.clone(), method, path, body).await
    }
}

async fn call(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(format!("strait-injector.{NS}.svc")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("strait-injector.{NS}.svc"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// A Pod as a ReplicaSet creates it, after the API server's defaulting.
fn replicaset_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8b6c5-",
            "namespace": "shop",
            "labels": { "app": "web", "pod-template-hash": "7d9f8b6c5" },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5",
                "uid": "5d3c1e0a-8f0e-4c7b-9a53-2c1f0d6e9b11", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "web",
            "serviceAccount": "web",
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.4.2",
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
                "env": [{ "name": "LOG_LEVEL", "value": "info" }],
                "readinessProbe": {
                    "httpGet": { "path": "/healthz", "port": "http", "scheme": "HTTP" },
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3
                },
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{
                    "name": "kube-api-access-x7k2p",
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
                }]
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ],
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": { "defaultMode": 420, "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } }
                ]}
            }]
        },
        "status": {}
    })
}

/// An AdmissionReview v1 request as kube-apiserver sends it for a pod
/// CREATE.
fn review(object: &Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "name": "",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "b9a4c0a4-4a3c-4d1b-9a8f-6f0d8c2f1e11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kube-controller-manager" }
        }
    }))
    .unwrap()
}

/// The response's patch applied to `object` (None when there is none).
fn applied(object: &Value, answer: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(answer).unwrap();
    let r = &v["response"];
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true, "{v}");
    let patch = r.get("patch")?;
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    Some(doc)
}

#[tokio::test]
async fn the_patch_applied_to_the_pod_equals_strait_inject_output() {
    let w = webhook().await;
    let pod = replicaset_pod();
    let (status, body) = w
        .call("POST", "/inject/namespace", review(&pod, "shop"))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let patched = applied(&pod, &body).expect("a patch");
    let (expected, _) = inject::inject_object(&pod, &opts()).unwrap();
    assert_eq!(patched, expected);
    // The same through `strait inject`'s YAML path.
    let yaml = serde_yaml_ng::to_string(&pod).unwrap();
    let (out, _) = inject::inject_yaml(&yaml, &opts()).unwrap();
    let from_yaml: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(patched, from_yaml);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "strait-proxy");
    w.handle.stop().await;
}

#[tokio::test]
async fn a_pod_of_an_injected_deployment_gets_no_patch_and_opt_outs_are_honoured() {
    let w = webhook().await;
    // The pod a Deployment that `strait inject` rewrote creates: already
    // injected, so the answer carries no patch.
    let (injected, _) = inject::inject_object(&replicaset_pod(), &opts()).unwrap();
    let (_, body) = w
        .call("POST", "/inject/namespace", review(&injected, "shop"))
        .await;
    assert_eq!(applied(&injected, &body), None);

    let mut opted_out = replicaset_pod();
    opted_out["metadata"]["annotations"] = json!({ "strait.io/inject": "disabled" });
    let (_, body) = w
        .call("POST", "/inject/namespace", review(&opted_out, "shop"))
        .await;
    assert_eq!(applied(&opted_out, &body), None);

    // Pod opt-in: only a pod carrying the label is injected.
    let plain = replicaset_pod();
    let (_, body) = w.call("POST", "/inject/pod", review(&plain, "shop")).await;
    assert_eq!(applied(&plain, &body), None);
    let mut labelled = replicaset_pod();
    labelled["metadata"]["labels"]["strait.io/inject"] = json!("enabled");
    let (_, body) = w
        .call("POST", "/inject/pod", review(&labelled, "shop"))
        .await;
    assert!(applied(&labelled, &body).is_some());

    // Strait's own namespace never.
    let (_, body) = w
        .call("POST", "/inject/namespace", review(&plain, NS))
        .await;
    assert_eq!(applied(&plain, &body), None);
    w.handle.stop().await;
}

#[tokio::test]
async fn bad_reviews_get_a_clear_refusal_and_the_webhook_keeps_serving() {
    let w = webhook().await;
    let cases: [(&str, &str, Vec<u8>, u16, &str); 5] = [
        (
            "POST",
            "/inject/namespace",
            b"{\"kind\":".to_vec(),
            400,
            "not JSON",
        ),
        (
            "POST",
            "/inject/namespace",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#
                .to_vec(),
            400,
            "admission.k8s.io/v1",
        ),
        (
            "POST",
            "/inject/namespace",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "request: missing",
        ),
        (
            "POST",
            "/mutate",
            review(&replicaset_pod(), "shop"),
            404,
            "/inject/namespace",
        ),
        (
            "POST",
            "/inject/pod",
            vec![b' '; injector::MAX_BODY + 1],
            413,
            "at most",
        ),
    ];
    for (method, path, body, want, reason) in cases {
        let (status, text) = w.call(method, path, body).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, want, "{path}: {text}");
        assert!(text.contains(reason), "{path}: {reason} not in {text}");
    }
    // A plain-text client is dropped at the handshake; nothing breaks.
    let mut tcp = tokio::net::TcpStream::connect(w.handle.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    let (status, text) = w.call("GET", "/ready", Vec::new()).await;
    assert_eq!((status, text.as_slice()), (200, b"ok\n".as_slice()));
    w.handle.stop().await;
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_denied_with_the_reason() {
    let w = webhook().await;
    let mut pod = replicaset_pod();
    pod["spec"]["containers"][0]["name"] = json!("strait-proxy");
    let (status, body) = w
        .call("POST", "/inject/namespace", review(&pod, "shop"))
        .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert_eq!(v["response"]["status"]["code"], 400);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("reserves"),
        "{v}"
    );
    w.handle.stop().await;
}
