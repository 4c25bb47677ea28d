//! The resources the Kubernetes source reads besides the core ones:
//! Strait's own CRDs (`GlobalService`, `TrafficPolicy`, group `strait.io`,
//! version `v1alpha1`) and the Multi-Cluster Services `ServiceExport`
//! (`multicluster.x-k8s.io/v1alpha1`), of which only the name matters.
//!
//! Every Strait resource is named after the Service it applies to, in the
//! Service's namespace, as `ServiceExport` is.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Export options of a Service that has a `ServiceExport`: which peers see
/// it and how the controller health-checks its endpoints. Without one, an
/// exported Service goes to every linked peer with no active check.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.io",
    version = "v1alpha1",
    kind = "GlobalService",
    namespaced,
    shortname = "gsvc"
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalServiceSpec {
    /// Peer clusters to export to; empty means every linked peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Active health check of every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

/// The CRD form of [`crate::catalog::HealthCheck`]; durations are written
/// like `5s` or `500ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// `http` or `tcp`.
    pub kind: String,
    /// HTTP path (http checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Check this port on the pod IP instead of the sidecar inbound port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// Ordered failover, `distribute` weights, authorization and routes of
/// one Service, in one object (the CRD form of [`crate::catalog::PolicySpec`]).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    shortname = "tp"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// Clusters to fail over to, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// Locality weights; the first rule whose `from` matches the caller wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<DistributeSpec>,
    /// Istio-like overprovisioning factor (1.0 to 10.0; default 1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<f64>,
    /// Who may call the Service, enforced by this cluster's sidecars of it:
    /// deny rules first, then, if a port has allow rules, one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationSpec>,
    /// Timeout and retries per path prefix, enforced by this cluster's
    /// callers of the Service (the longest matching prefix wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

/// One route (the CRD form of [`strait_api::snapshot::Route`]); unset
/// fields take the route defaults (prefix `/`, timeout `15s`, 2 retries on
/// connect-failure, refused-stream and gateway-error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `250ms`, `2s`, `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// Retries of a route; the retry budget keeps its defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first try (0 to 10; 0 disables retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// `connect-failure`, `refused-stream`, `reset`, `gateway-error`, `5xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
}

/// One authorization policy (the CRD form of
/// [`strait_api::snapshot::AuthorizationPolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSpec {
    pub name: String,
    /// Ports it applies to; empty means every port of the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AuthzRuleSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AuthzRuleSpec>,
    /// How request paths on these ports are canonicalized and matched
    /// (policies covering one port must agree; see docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
}

/// Path handling opt-ins of an authorization policy (the CRD form of
/// [`strait_api::snapshot::PathPolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathSpec {
    /// `%2F`, `%5C` and `\\`: `reject` (400, the default), `decode` (as
    /// `/`) or `keep` (encoded, as data of the segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<String>,
    /// `;` in a segment: `reject` (400, the default) or `keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<String>,
    /// Rule paths match ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A rule matches when every non-empty condition matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRuleSpec {
    /// Caller identities: an exact SPIFFE ID, `spiffe://td/ns/<ns>/*`,
    /// `spiffe://td/*` or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Normalized path prefixes (HTTP ports only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Upper-case HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// `from: us-east/*` -> `to: {"us-east/*": 80, "us-west/*": 20}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DistributeSpec {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

/// An MCS `ServiceExport`: its existence exports the Service of the same
/// name and namespace. Spec and status are not read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceExport {
    pub metadata: ObjectMeta,
}

impl kube::Resource for ServiceExport {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ServiceExport".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "multicluster.x-k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "serviceexports".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Why the CRD YAML could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("cannot render crd yaml: {0}")]
pub struct CrdYamlError(#[source] serde_yaml_ng::Error);

/// The `CustomResourceDefinition` YAML of Strait's CRDs, as one
/// multi-document stream (for `kubectl apply -f -` and the docs). The MCS
/// `ServiceExport` CRD comes from the MCS API project and is not included.
pub fn crd_yaml() -> Result<String, CrdYamlError> {
    let mut out = String::new();
    for crd in [
        GlobalService::crd(),
        TrafficPolicy::crd(),
        super::links::StraitLink::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).map_err(CrdYamlError)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    #[test]
    fn crd_yaml_parses_back_into_every_definition() {
        let yaml = crd_yaml().unwrap();
        let crds: Vec<CustomResourceDefinition> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| CustomResourceDefinition::deserialize(d).unwrap())
            .collect();
        let names: Vec<_> = crds
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                "globalservices.strait.io",
                "trafficpolicies.strait.io",
                "straitlinks.strait.io"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.group, "strait.io");
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions[0].name, "v1alpha1");
            assert!(crd.spec.versions[0].schema.is_some(), "has a schema");
        }
    }

    #[test]
    fn traffic_policy_reads_its_camel_case_yaml() {
        let yaml = r#"
apiVersion: strait.io/v1alpha1
kind: TrafficPolicy
metadata: { name: reviews, namespace: default }
spec:
  failover: [west, central]
  distribute:
    - from: "us-east/*"
      to: { "us-east/*": 80, "us-west/*": 20 }
  overprovisioningFactor: 1.2
  authorization:
    - name: no-guests
      ports: [9080]
      deny: [{ from: ["spiffe://strait.local/ns/guest/*"], paths: [/admin] }]
  routes:
    - { pathPrefix: /api, timeout: 2s, retry: { attempts: 3, retryOn: [5xx] } }
"#;
        let tp: TrafficPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(tp.spec.failover, ["west", "central"]);
        assert_eq!(tp.spec.distribute[0].to["us-west/*"], 20);
        assert_eq!(tp.spec.overprovisioning_factor, Some(1.2));
        let a = &tp.spec.authorization[0];
        assert_eq!(
            (a.name.as_str(), a.ports.as_slice()),
            ("no-guests", &[9080][..])
        );
        assert_eq!(a.deny[0].paths, ["/admin"]);
        assert!(a.allow.is_empty());
        let r = &tp.spec.routes[0];
        assert_eq!(
            (r.path_prefix.as_deref(), r.timeout.as_deref()),
            (Some("/api"), Some("2s"))
        );
        let retry = r.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, Some(3));
        assert_eq!(retry.retry_on.as_deref(), Some(&["5xx".to_owned()][..]));
    }
}
