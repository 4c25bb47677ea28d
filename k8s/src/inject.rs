//! `strait inject`: add the sidecar to every pod template of a YAML stream.
//!
//! Pure: objects in, objects out. Pods, Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs and CronJobs get the sidecar in their pod
//! template; `List`s are walked; any other kind passes through unchanged.
//! Injecting an injected object changes nothing (the sidecar, env entries
//! and volumes are replaced in place, never appended twice).
//!
//! What the sidecar gets (see [`pod`]): a native sidecar container (an
//! init container with `restartPolicy: Always`, so it starts before the
//! app and stops after it) running `strait proxy --config`, its config
//! from a ConfigMap and its identity (chain, key, bundle) from a Secret
//! volume, both named by annotations. Capture is explicit-proxy env
//! (`HTTP_PROXY`) until transparent capture exists; identity bootstrap by
//! ServiceAccount token is not built yet, hence the Secret.

use serde_json::Value;

use crate::keys;

pub mod pod;

pub use pod::{IdentityMode, InjectOptions, SIDECAR_NAME};

/// Why an object could not be injected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `deployment/web`, `pod/(generated)`.
    pub object: String,
    pub result: Decision,
}

/// Whether a pod template gets the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Injected,
    /// Left unchanged, with the reason.
    Skipped(String),
    /// Not a kind with a pod template; passed through.
    NotAWorkload,
}

/// Where the pod template of a kind lives, as a JSON pointer ("" is the
/// object itself, for a Pod).
pub fn template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        ("v1", "Pod") => Some(""),
        ("apps/v1", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch/v1", "Job") => Some("/spec/template"),
        ("batch/v1", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects one object (a `List`'s items one by one), returning the new
/// object and an outcome per workload.
pub fn inject_object(
    obj: &Value,
    opts: &InjectOptions,
) -> Result<(Value, Vec<Outcome>), InjectError> {
    let mut out = obj.clone();
    let mut outcomes = Vec::new();
    inject_in_place(&mut out, opts, &mut outcomes)?;
    Ok((out, outcomes))
}

fn inject_in_place(
    obj: &mut Value,
    opts: &InjectOptions,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), InjectError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(generated)")
        .to_owned();
    let object = format!("{}/{name}", kind.to_lowercase());
    if kind.ends_with("List") && obj.get("items").is_some() {
        let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) else {
            return Err(InjectError::Invalid {
                object,
                reason: "items: must be a list".into(),
            });
        };
        for item in items {
            inject_in_place(item, opts, outcomes)?;
        }
        return Ok(());
    }
    let Some(ptr) = template_pointer(&api_version, &kind) else {
        outcomes.push(Outcome {
            object,
            result: Decision::NotAWorkload,
        });
        return Ok(());
    };
    let Some(template) = obj.pointer_mut(ptr) else {
        return Err(InjectError::Invalid {
            object,
            reason: format!("{kind} without a pod template at {ptr}"),
        });
    };
    let result = match pod::decide(template) {
        Some(reason) => Decision::Skipped(reason),
        None => {
            pod::inject_template(template, opts).map_err(|reason| InjectError::Invalid {
                object: object.clone(),
                reason,
            })?;
            Decision::Injected
        }
    };
    outcomes.push(Outcome { object, result });
    Ok(())
}

/// `strait inject` on a whole YAML stream: the injected stream and the
/// outcomes, in document order.
pub fn inject_yaml(
    text: &str,
    opts: &InjectOptions,
) -> Result<(String, Vec<Outcome>), InjectError> {
    let docs = crate::yaml::documents(text)?;
    let mut out = Vec::with_capacity(docs.len());
    let mut outcomes = Vec::new();
    for doc in &docs {
        let (d, o) = inject_object(doc, opts)?;
        out.push(d);
        outcomes.extend(o);
    }
    Ok((crate::yaml::write(&out)?, outcomes))
}

/// Whether a label or annotation map says `strait.io/inject: disabled`.
pub(crate) fn disabled(meta: &Value) -> bool {
    ["labels", "annotations"].iter().any(|m| {
        meta.pointer(&format!("/{m}/{}", keys::INJECT.replace('/', "~1")))
            .and_then(Value::as_str)
            == Some("disabled")
    })
}

#[cfg(test)]
mod tests;
