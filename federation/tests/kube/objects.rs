//! Kubernetes objects as the API server writes them (JSON with
//! `apiVersion` and `kind`).

use serde_json::{Value, json};

pub const NS: &str = "default";

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": NS})
}

/// A ClusterIP Service with `(name, port, appProtocol)` ports.
pub fn service(name: &str, ports: &[(&str, u16, Option<&str>)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, app)| json!({"name": n, "port": p, "protocol": "TCP", "appProtocol": app, "targetPort": p}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name),
           "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": ports}})
}

/// A pod with a service account and an IP; `zone` as a pod label.
pub fn pod(name: &str, sa: &str, ip: &str, zone: Option<&str>) -> Value {
    let mut labels = json!({"app": name});
    if let Some(z) = zone {
        labels["topology.kubernetes.io/zone"] = json!(z);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": labels},
           "spec": {"serviceAccountName": sa, "nodeName": "node-1",
                    "containers": [{"name": "app", "image": "echo"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// One endpoint of a slice: `(ip, pod, ready, zone)`.
pub type Ep<'a> = (&'a str, &'a str, bool, Option<&'a str>);

/// The EndpointSlice of a Service.
pub fn slice(svc: &str, port: u16, endpoints: &[Ep<'_>]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready, zone)| {
            json!({"addresses": [ip],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false},
                   "nodeName": "node-1", "zone": zone,
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-x1"), "namespace": NS,
                        "labels": {"kubernetes.io/service-name": svc,
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
           "addressType": "IPv4", "endpoints": eps,
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

/// An MCS ServiceExport (no spec, as the MCS API defines it).
pub fn service_export(name: &str) -> Value {
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
           "metadata": meta(name)})
}

pub fn global_service(name: &str, export_to: &[&str]) -> Value {
    json!({"apiVersion": "strait.io/v1alpha1", "kind": "GlobalService",
           "metadata": meta(name), "spec": {"exportTo": export_to}})
}

pub fn traffic_policy(name: &str, failover: &[&str], distribute: Value) -> Value {
    json!({"apiVersion": "strait.io/v1alpha1", "kind": "TrafficPolicy",
           "metadata": meta(name), "spec": {"failover": failover, "distribute": distribute}})
}
