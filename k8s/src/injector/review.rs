//! The decision of the webhook, pure: an AdmissionReview v1 request in,
//! the AdmissionReview response out (a JSON Patch that, applied to the
//! request's object, gives what `strait inject` gives for it).

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::{self, InjectOptions};
use crate::keys;

/// Which webhook of the configuration called: the namespace opted in (its
/// label matched the namespaceSelector; the API server does not send
/// namespace labels, so the path says it), or the pod did (its label is
/// checked here again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    Namespace,
    Pod,
}

impl OptIn {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/inject/namespace" => Some(Self::Namespace),
            "/inject/pod" => Some(Self::Pod),
            _ => None,
        }
    }
}

/// A review the webhook cannot answer (HTTP 400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("admission review refused: {0}")]
pub struct ReviewError(pub String);

/// Namespaces never injected, whatever their labels say.
pub const NEVER: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Answers one AdmissionReview. `own_namespace` (Strait's) is never
/// injected either.
pub fn review(
    body: &[u8],
    opt_in: OptIn,
    own_namespace: &str,
    opts: &InjectOptions,
) -> Result<Value, ReviewError> {
    let bad = |s: String| ReviewError(s);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    match (v["apiVersion"].as_str(), v["kind"].as_str()) {
        (Some("admission.k8s.io/v1"), Some("AdmissionReview")) => {}
        (a, k) => {
            return Err(bad(format!(
                "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {}, {}",
                a.unwrap_or("none"),
                k.unwrap_or("none")
            )));
        }
    }
    let req = v
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad("request: missing".into()))?;
    let uid = req["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("request.uid: missing".into()))?;
    let answer = |patch: Option<Vec<crate::patch::Op>>, denied: Option<String>| {
        let mut resp = json!({ "uid": uid, "allowed": denied.is_none() });
        if let Some(msg) = denied {
            resp["status"] = json!({ "code": 400, "message": msg });
        }
        if let Some(ops) = patch.filter(|p| !p.is_empty()) {
            let text = serde_json::to_vec(&ops).unwrap_or_default();
            resp["patchType"] = json!("JSONPatch");
            resp["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
        json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp })
    };
    if req["operation"].as_str() != Some("CREATE") {
        return Ok(answer(None, None));
    }
    let namespace = req["namespace"].as_str().unwrap_or_default();
    if NEVER.contains(&namespace) || namespace == own_namespace {
        return Ok(answer(None, None));
    }
    let Some(object) = req.get("object").filter(|o| o.is_object()) else {
        return Err(bad("request.object: missing".into()));
    };
    let (api_version, kind) = (
        object["apiVersion"].as_str().unwrap_or_default(),
        object["kind"].as_str().unwrap_or_default(),
    );
    let Some(ptr) = inject::template_pointer(api_version, kind) else {
        return Ok(answer(None, None));
    };
    if opt_in == OptIn::Pod {
        let template = object.pointer(ptr).cloned().unwrap_or(Value::Null);
        if inject::pod::labels(&template)
            .get(keys::INJECT)
            .map(String::as_str)
            != Some("enabled")
        {
            return Ok(answer(None, None));
        }
    }
    match inject::inject_object(object, opts) {
        Ok((injected, _)) => Ok(answer(Some(crate::patch::diff(object, &injected)), None)),
        Err(e) => Ok(answer(None, Some(format!("strait injector: {e}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "web-", "labels": labels, "annotations": annotations },
            "spec": { "containers": [{ "name": "web", "image": "web:1" }] }
        })
    }

    fn request(object: Value, namespace: &str, op: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": { "uid": "u-1", "operation": op, "namespace": namespace,
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "object": object }
        }))
        .unwrap()
    }

    fn patched(resp: &Value) -> bool {
        resp["response"]["patch"].is_string()
    }

    #[test]
    fn decisions() {
        let o = InjectOptions::new("strait:test");
        let on = json!({ "strait.io/inject": "enabled" });
        let off = json!({ "strait.io/inject": "disabled" });
        let none = json!({});
        let cases = [
            (
                "namespace opt-in",
                pod(none.clone(), none.clone()),
                "shop",
                "CREATE",
                OptIn::Namespace,
                true,
            ),
            (
                "pod opt-in",
                pod(on.clone(), none.clone()),
                "shop",
                "CREATE",
                OptIn::Pod,
                true,
            ),
            (
                "pod path without the pod label",
                pod(none.clone(), none.clone()),
                "shop",
                "CREATE",
                OptIn::Pod,
                false,
            ),
            (
                "opt-out annotation",
                pod(none.clone(), off.clone()),
                "shop",
                "CREATE",
                OptIn::Namespace,
                false,
            ),
            (
                "opt-out label",
                pod(off.clone(), none.clone()),
                "shop",
                "CREATE",
                OptIn::Namespace,
                false,
            ),
            (
                "kube-system",
                pod(on.clone(), none.clone()),
                "kube-system",
                "CREATE",
                OptIn::Pod,
                false,
            ),
            (
                "strait's own namespace",
                pod(none.clone(), none.clone()),
                "strait-system",
                "CREATE",
                OptIn::Namespace,
                false,
            ),
            (
                "update",
                pod(none.clone(), none.clone()),
                "shop",
                "UPDATE",
                OptIn::Namespace,
                false,
            ),
        ];
        for (name, obj, ns, op, path, want) in cases {
            let r = review(&request(obj, ns, op), path, "strait-system", &o).unwrap();
            assert_eq!(r["response"]["uid"], "u-1", "{name}");
            assert_eq!(r["response"]["allowed"], true, "{name}");
            assert_eq!(patched(&r), want, "{name}: {r}");
        }
    }

    #[test]
    fn bad_reviews_are_refused_with_a_reason() {
        let o = InjectOptions::new("strait:test");
        let cases: [(&[u8], &str); 5] = [
            (b"{", "not JSON"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#, "admission.k8s.io/v1beta1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "request: missing"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#, "request.uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","operation":"CREATE","namespace":"a"}}"#, "request.object"),
        ];
        for (body, want) in cases {
            let e = review(body, OptIn::Namespace, "strait-system", &o).unwrap_err();
            assert!(e.0.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_pod_that_cannot_be_injected_is_denied_with_the_reason() {
        let o = InjectOptions::new("strait:test");
        let obj = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {},
            "spec": { "containers": [{ "name": "strait-proxy", "image": "x" }] } });
        let r = review(
            &request(obj, "shop", "CREATE"),
            OptIn::Namespace,
            "strait-system",
            &o,
        )
        .unwrap();
        assert_eq!(r["response"]["allowed"], false);
        let msg = r["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("reserves"), "{msg}");
    }
}
