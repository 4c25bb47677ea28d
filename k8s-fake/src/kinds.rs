//! The resource kinds the fake serves in discovery: the built-in kinds
//! Strait's install, catalog and identity touch, plus every kind a
//! `CustomResourceDefinition` applied to the fake declares (as a real API
//! server does once the CRD is established).
//!
//! Requests for a path whose kind is not in the table are still served
//! (the store is keyed by `group/plural` from the path), so tests may put
//! custom objects without their CRD; only discovery does not list them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One kind as discovery lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl Kind {
    fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    /// The store key, `group/plural` (the core group is empty).
    pub fn resource(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The built-in kinds.
pub fn builtin() -> Vec<Kind> {
    let k = Kind::new;
    vec![
        k("", "v1", "Namespace", "namespaces", false),
        k("", "v1", "Node", "nodes", false),
        k("", "v1", "Service", "services", true),
        k("", "v1", "Pod", "pods", true),
        k("", "v1", "Secret", "secrets", true),
        k("", "v1", "ConfigMap", "configmaps", true),
        k("", "v1", "ServiceAccount", "serviceaccounts", true),
        k("", "v1", "Endpoints", "endpoints", true),
        k("apps", "v1", "Deployment", "deployments", true),
        k("apps", "v1", "StatefulSet", "statefulsets", true),
        k("apps", "v1", "DaemonSet", "daemonsets", true),
        k("apps", "v1", "ReplicaSet", "replicasets", true),
        k(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
        ),
        k("coordination.k8s.io", "v1", "Lease", "leases", true),
        k(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        ),
        k(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        ),
        k(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        k(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        k("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        k(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        k(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
        ),
        k(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
        k(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            false,
        ),
    ]
}

/// The kinds a CRD object declares (one per served version).
pub fn of_crd(crd: &Value) -> Vec<Kind> {
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (group, kind, plural) = (
        s(&spec["group"]),
        s(&spec["names"]["kind"]),
        s(&spec["names"]["plural"]),
    );
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let namespaced = spec["scope"] != "Cluster";
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] != false)
        .filter_map(|v| v["name"].as_str())
        .map(|v| Kind::new(&group, v, &kind, &plural, namespaced))
        .collect()
}

/// The store key of an object: from the table when its kind is known,
/// else a plural guessed from the kind.
pub fn resource_of(kinds: &[Kind], obj: &Value) -> String {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = obj["kind"].as_str().unwrap_or_default();
    if let Some(k) = kinds.iter().find(|k| k.group == group && k.kind == kind) {
        return k.resource();
    }
    let kind = kind.to_ascii_lowercase();
    let plural = if kind.ends_with('y') {
        format!("{}ies", kind.trim_end_matches('y'))
    } else {
        format!("{kind}s")
    };
    format!("{group}/{plural}")
}

/// `(apiVersion, kind)` of a store key, for objects sent without them.
pub fn type_of(kinds: &[Kind], resource: &str) -> Option<(String, String)> {
    kinds
        .iter()
        .find(|k| k.resource() == resource)
        .map(|k| (k.group_version(), k.kind.clone()))
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "get",
    "list",
    "patch",
    "update",
    "watch",
    "deletecollection",
];

/// `GET /api`.
pub fn core_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

/// `GET /apis`: every non-core group.
pub fn groups(kinds: &[Kind]) -> Value {
    let mut by_group: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for k in kinds.iter().filter(|k| !k.group.is_empty()) {
        let v = by_group.entry(&k.group).or_default();
        if !v.contains(&k.version.as_str()) {
            v.push(&k.version);
        }
    }
    let groups: Vec<Value> = by_group
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = versions[0].clone();
            json!({"name": g, "versions": versions, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `/apis/G/V`; `None` for an unknown group version.
pub fn resources(kinds: &[Kind], group: &str, version: &str) -> Option<Value> {
    let list: Vec<Value> = kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| {
            let verbs: &[&str] = if k.kind == "TokenReview" {
                &["create"]
            } else {
                &VERBS
            };
            let short: &[&str] = match k.plural.as_str() {
                "namespaces" => &["ns"],
                "services" => &["svc"],
                "configmaps" => &["cm"],
                "serviceaccounts" => &["sa"],
                "nodes" => &["no"],
                "pods" => &["po"],
                "deployments" => &["deploy"],
                "customresourcedefinitions" => &["crd", "crds"],
                "poddisruptionbudgets" => &["pdb"],
                "networkpolicies" => &["netpol"],
                _ => &[],
            };
            json!({"name": k.plural, "singularName": k.kind.to_ascii_lowercase(),
                   "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs,
                   "shortNames": short})
        })
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": list}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crd_adds_its_kind_per_served_version() {
        let crd = json!({"spec": {"group": "strait.io", "scope": "Namespaced",
            "names": {"kind": "TrafficPolicy", "plural": "trafficpolicies"},
            "versions": [{"name": "v1alpha1", "served": true}, {"name": "v0", "served": false}]}});
        let kinds = of_crd(&crd);
        assert_eq!(kinds.len(), 1);
        assert_eq!(kinds[0].resource(), "strait.io/trafficpolicies");
        assert!(kinds[0].namespaced);
    }

    #[test]
    fn objects_map_to_their_resource() {
        let kinds = builtin();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"});
        assert_eq!(resource_of(&kinds, &lease), "coordination.k8s.io/leases");
        let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"});
        assert_eq!(
            resource_of(&kinds, &np),
            "networking.k8s.io/networkpolicies"
        );
        let unknown = json!({"apiVersion": "strait.io/v1alpha1", "kind": "GlobalService"});
        assert_eq!(resource_of(&kinds, &unknown), "strait.io/globalservices");
    }

    #[test]
    fn discovery_lists_groups_and_resources() {
        let kinds = builtin();
        let g = groups(&kinds);
        assert!(
            g["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "apps")
        );
        let core = resources(&kinds, "", "v1").unwrap();
        assert_eq!(core["groupVersion"], "v1");
        assert!(resources(&kinds, "nope.io", "v1").is_none());
    }
}
