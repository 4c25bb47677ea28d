//! `strait install kubernetes --check`: is the install that
//! [`crate::install::manifests`] describes running? For each of its CRDs:
//! established; each Deployment: every replica ready; the injection
//! webhook: its configuration is there and its Service has a ready
//! endpoint to send admission reviews to.
//!
//! The decisions ([`crd_established`], [`deployment_ready`],
//! [`webhook_served`]) are pure functions over the objects as the API
//! server returns them; [`run`] fetches them.
//!
//! What it is not: it does not dial the webhook itself (from outside the
//! cluster its Service address is not reachable; the API server is what
//! calls it), and it does not compare the running objects' specs with the
//! manifests (`kubectl diff` does).

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;

use crate::install::Manifest;

/// One checked object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `Kind namespace/name` (or `Kind name`).
    pub object: String,
    /// What is fine, or what is wrong.
    pub result: Result<String, String>,
}

/// A CRD's `Established` condition.
pub fn crd_established(crd: Option<&Value>) -> Result<String, String> {
    let crd = crd.ok_or("not found: apply the install".to_owned())?;
    let conditions = crd["status"]["conditions"].as_array();
    let established = conditions
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Established");
    match established {
        Some(c) if c["status"] == "True" => Ok("established".into()),
        Some(c) => Err(format!(
            "not established: {}",
            c["message"].as_str().unwrap_or("no message")
        )),
        None => Err("not established yet (no Established condition)".into()),
    }
}

/// Every wanted replica of a Deployment ready.
pub fn deployment_ready(d: Option<&Value>) -> Result<String, String> {
    let d = d.ok_or("not found: apply the install".to_owned())?;
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let ready = d["status"]["readyReplicas"].as_i64().unwrap_or(0);
    if ready >= want {
        Ok(format!("{ready}/{want} ready"))
    } else {
        Err(format!(
            "{ready}/{want} ready (kubectl -n {} describe deploy {})",
            d["metadata"]["namespace"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        ))
    }
}

/// The webhook configuration exists and the Service it names has a ready
/// endpoint (`slices`: that Service's EndpointSlices).
pub fn webhook_served(cfg: Option<&Value>, slices: &[Value]) -> Result<String, String> {
    let cfg = cfg.ok_or("not found: apply the install".to_owned())?;
    let hooks = cfg["webhooks"].as_array().map_or(&[][..], Vec::as_slice);
    if hooks.is_empty() {
        return Err("has no webhooks".into());
    }
    for h in hooks {
        if h["clientConfig"]["caBundle"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            return Err(format!(
                "webhook {} has no caBundle",
                h["name"].as_str().unwrap_or_default()
            ));
        }
    }
    let ready = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] != false)
        .count();
    let svc = &hooks[0]["clientConfig"]["service"];
    let svc = format!(
        "{}/{}",
        svc["namespace"].as_str().unwrap_or_default(),
        svc["name"].as_str().unwrap_or_default()
    );
    if ready == 0 {
        Err(format!(
            "service {svc} has no ready endpoint: pod creation in opted-in namespaces fails (failurePolicy: Fail)"
        ))
    } else {
        Ok(format!(
            "{} webhook(s), service {svc} has {ready} ready endpoint(s)",
            hooks.len()
        ))
    }
}

fn json<T: Serialize>(v: Option<T>) -> Option<Value> {
    v.and_then(|v| serde_json::to_value(v).ok())
}

/// Checks the running objects the manifests describe.
pub async fn run(client: kube::Client, manifests: &[Manifest]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in manifests {
        let ns = m.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let name = m.name.as_str();
        let fetched =
            |r: Result<Option<Value>, kube::Error>| r.map_err(|e| format!("cannot read it: {e}"));
        let (object, result) = match m.kind.as_str() {
            "CustomResourceDefinition" => {
                let api: Api<CustomResourceDefinition> = Api::all(client.clone());
                let got = fetched(api.get_opt(name).await.map(json));
                (
                    format!("CustomResourceDefinition {name}"),
                    got.and_then(|c| crd_established(c.as_ref())),
                )
            }
            "Deployment" => {
                let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
                let got = fetched(api.get_opt(name).await.map(json));
                (
                    format!("Deployment {ns}/{name}"),
                    got.and_then(|d| deployment_ready(d.as_ref())),
                )
            }
            "MutatingWebhookConfiguration" => {
                let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
                let got = fetched(api.get_opt(name).await.map(json));
                let svc = &m.value["webhooks"][0]["clientConfig"]["service"];
                let (sns, sname) = (
                    svc["namespace"].as_str().unwrap_or_default(),
                    svc["name"].as_str().unwrap_or_default(),
                );
                let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), sns);
                let lp =
                    ListParams::default().labels(&format!("kubernetes.io/service-name={sname}"));
                let listed = slices
                    .list(&lp)
                    .await
                    .map(|l| {
                        l.items
                            .into_iter()
                            .filter_map(|s| serde_json::to_value(s).ok())
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| format!("cannot list the webhook service's endpoints: {e}"));
                let result = got.and_then(|c| listed.and_then(|s| webhook_served(c.as_ref(), &s)));
                (format!("MutatingWebhookConfiguration {name}"), result)
            }
            _ => continue,
        };
        out.push(Finding { object, result });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn crds_deployments_and_the_webhook_are_judged_from_their_status() {
        let crd = |status: &str| json!({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": status, "message": "m"}]}});
        assert!(crd_established(Some(&crd("True"))).is_ok());
        assert!(
            crd_established(Some(&crd("False")))
                .unwrap_err()
                .contains("not established")
        );
        assert!(crd_established(Some(&json!({}))).is_err());
        assert!(crd_established(None).unwrap_err().contains("not found"));

        let deploy = |want: i64, ready: Option<i64>| {
            json!({"metadata": {"name": "strait-gateway", "namespace": "strait-system"},
            "spec": {"replicas": want}, "status": {"readyReplicas": ready}})
        };
        let table = [
            (2, Some(2), true),
            (2, Some(1), false),
            (2, None, false),
            (1, Some(3), true),
        ];
        for (want, ready, ok) in table {
            assert_eq!(
                deployment_ready(Some(&deploy(want, ready))).is_ok(),
                ok,
                "{want} {ready:?}"
            );
        }
        assert!(
            deployment_ready(Some(&deploy(2, Some(1))))
                .unwrap_err()
                .contains("1/2 ready")
        );

        let hook = |ca: &str| {
            json!({"webhooks": [{"name": "pod.inject.strait.io",
            "clientConfig": {"caBundle": ca, "service": {"namespace": "strait-system", "name": "strait-injector"}}}]})
        };
        let slice = |ready: bool| json!({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]});
        assert!(webhook_served(Some(&hook("LS0t")), &[slice(true)]).is_ok());
        let err = webhook_served(Some(&hook("LS0t")), &[slice(false)]).unwrap_err();
        assert!(
            err.contains("strait-system/strait-injector has no ready endpoint"),
            "{err}"
        );
        assert!(webhook_served(Some(&hook("LS0t")), &[]).is_err());
        assert!(
            webhook_served(Some(&hook("")), &[slice(true)])
                .unwrap_err()
                .contains("caBundle")
        );
        assert!(webhook_served(None, &[]).unwrap_err().contains("not found"));
    }
}
