//! Just enough OpenAPI v3 for `kubectl`'s check that the server supports
//! server-side field validation (`fieldValidation` on each kind's PATCH,
//! found by the `x-kubernetes-group-version-kind` extension): with it,
//! `kubectl apply` sends `fieldValidation=Strict` instead of downloading
//! the schemas to validate on the client. No schemas are served.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::kinds::Kind;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: one entry per group version.
pub fn root(kinds: &[Kind]) -> Value {
    let gvs: BTreeSet<String> = kinds
        .iter()
        .map(|k| gv_path(&k.group, &k.version))
        .collect();
    let paths: serde_json::Map<String, Value> = gvs
        .into_iter()
        .map(|p| {
            let url = format!("/openapi/v3/{p}?hash=0");
            (p, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1 | apis/G/V>`; `None` for an unknown one.
pub fn group_version(kinds: &[Kind], path: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for k in kinds
        .iter()
        .filter(|k| gv_path(&k.group, &k.version) == path)
    {
        let scope = if k.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let p = format!("/{path}/{scope}{}/{{name}}", k.plural);
        paths.insert(
            p,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (strait fake)", "version": "v1.31.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
