//! The rewrite of one pod template (`metadata` + `spec`): the sidecar
//! container, explicit-proxy env on every app container, the identity and
//! config volumes, and an annotation naming the injected image.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    ProjectedVolumeSource, SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use serde_json::{Map, Value};

use crate::install::common::{self, ADMIN_PROBE, Probe};
use crate::keys;

/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "strait-proxy";
/// Volume names the injector owns.
pub const IDENTITY_VOLUME: &str = "strait-identity";
pub const CONFIG_VOLUME: &str = "strait-proxy-config";
/// The projected ServiceAccount token (identity `token` only).
pub const TOKEN_VOLUME: &str = "strait-token";
/// Where the sidecar finds its projected token: `TOKEN_DIR/token`.
pub const TOKEN_DIR: &str = "/var/run/strait/token";
/// The audience the CA's TokenReview asks for.
pub const TOKEN_AUDIENCE: &str = "strait";
/// Where the sidecar finds its config and identity.
pub const CONFIG_DIR: &str = "/etc/strait/proxy";
pub const IDENTITY_DIR: &str = "/var/run/strait/identity";
/// The sidecar's listeners (its `sidecar.yaml` must use these).
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;

/// What every injected sidecar gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectOptions {
    /// The Strait image (the sidecar runs its `strait proxy`).
    pub image: String,
    /// CPU request of the sidecar, e.g. `50m`.
    #[serde(default = "default_cpu")]
    pub cpu_request: String,
    /// Memory limit (and twice less as request), e.g. `256Mi`.
    #[serde(default = "default_memory")]
    pub memory_limit: String,
    /// How the sidecar gets its certificate (pod annotation
    /// `strait.io/identity` overrides it).
    #[serde(default)]
    pub identity: IdentityMode,
    /// Lifetime of the projected token (`token` identity), 600 s to 48 h;
    /// the kubelet refreshes it at 80 %.
    #[serde(default = "default_token_seconds")]
    pub token_seconds: i64,
}

/// Where an injected sidecar's certificate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// Files of the Secret `strait-identity-<serviceaccount>`.
    #[default]
    Secret,
    /// From the cluster's CA with the pod's projected ServiceAccount token
    /// (audience `strait`): the sidecar's config names
    /// `identity: { ca: { token_file: token/token, keep: identity, ... } }`;
    /// `identity/` is then an `emptyDir` where the certificate is kept.
    Token,
}

impl std::str::FromStr for IdentityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "secret" => Ok(Self::Secret),
            "token" => Ok(Self::Token),
            other => Err(format!(
                "{other:?} is not an identity mode (secret or token)"
            )),
        }
    }
}

fn default_token_seconds() -> i64 {
    3600
}

/// The shortest and longest projected token the API server issues.
pub const TOKEN_SECONDS_RANGE: (i64, i64) = (600, 172_800);

fn default_cpu() -> String {
    "50m".into()
}
fn default_memory() -> String {
    "256Mi".into()
}

impl InjectOptions {
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            cpu_request: default_cpu(),
            memory_limit: default_memory(),
            identity: IdentityMode::Secret,
            token_seconds: default_token_seconds(),
        }
    }

    /// Checks what a config file may get wrong.
    pub fn check(&self) -> Result<(), String> {
        let (lo, hi) = TOKEN_SECONDS_RANGE;
        if !(lo..=hi).contains(&self.token_seconds) {
            return Err(format!(
                "token_seconds: {} is out of range ({lo} to {hi}, what the API server issues)",
                self.token_seconds
            ));
        }
        Ok(())
    }
}

/// `None` when the template gets the sidecar, else why not.
pub fn decide(template: &Value) -> Option<String> {
    let meta = template.get("metadata").cloned().unwrap_or(Value::Null);
    if super::disabled(&meta) {
        return Some(format!("{}: disabled", keys::INJECT));
    }
    if template.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Some("hostNetwork pods share the node's ports; not injected".into());
    }
    None
}

/// The explicit-proxy env every app container gets.
pub fn proxy_env() -> Vec<EnvVar> {
    let proxy = format!("http://127.0.0.1:{OUTBOUND_PORT}");
    // Loopback stays direct, so exec probes (`curl localhost:8080/health`)
    // and the app's own local calls never go through the sidecar.
    let direct = "localhost,127.0.0.1,::1";
    [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("NO_PROXY", direct),
        ("no_proxy", direct),
    ]
    .into_iter()
    .map(|(n, v)| EnvVar {
        name: n.into(),
        value: Some(v.into()),
        value_from: None,
    })
    .collect()
}

/// The sidecar: `strait proxy` as a native sidecar (init container with
/// `restartPolicy: Always`).
pub fn sidecar(opts: &InjectOptions) -> Container {
    let mut c = common::container(
        SIDECAR_NAME,
        &opts.image,
        &["proxy", "--config", &format!("{CONFIG_DIR}/sidecar.yaml")],
    );
    c.restart_policy = Some("Always".into());
    c.ports = Some(vec![
        port("strait-inbound", INBOUND_PORT),
        port("strait-admin", ADMIN_PORT),
    ]);
    // The app starts once the sidecar listens (`/live`), not once it has
    // config: a controller outage must not keep apps from starting.
    let live = Probe::http(ADMIN_PORT, "/live");
    c.startup_probe = Some(live.startup());
    c.liveness_probe = Some(live.liveness());
    c.readiness_probe = Some(Probe::http(ADMIN_PORT, ADMIN_PROBE).readiness());
    c.resources = Some(common::resources(
        &opts.cpu_request,
        &half(&opts.memory_limit),
        "1",
        &opts.memory_limit,
    ));
    let mut mounts = vec![
        mount(CONFIG_VOLUME, CONFIG_DIR),
        mount(IDENTITY_VOLUME, IDENTITY_DIR),
    ];
    if opts.identity == IdentityMode::Token {
        // The kept certificate is written here.
        mounts[1].read_only = None;
        mounts.push(mount(TOKEN_VOLUME, TOKEN_DIR));
    }
    c.volume_mounts = Some(mounts);
    c
}

/// Half a quantity like `256Mi` (the request beside that limit); other
/// forms are used as they are.
fn half(q: &str) -> String {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    match q[..split].parse::<u64>() {
        Ok(n) if n >= 2 => format!("{}{}", n / 2, &q[split..]),
        _ => q.to_owned(),
    }
}

fn port(name: &str, p: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(p),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The two volumes: config (ConfigMap) and identity (Secret). The Secret's
/// files are mode 0444: only the sidecar mounts the volume, and it runs as
/// a different user than the Secret's owner (root) without an fsGroup we
/// would have to impose on the app's pod.
///
/// With the `token` identity the identity volume is an `emptyDir` (the
/// sidecar keeps the CA's certificate there) and a third volume projects
/// the ServiceAccount token for audience `strait`.
pub fn volumes(config_map: &str, secret: &str, opts: &InjectOptions) -> Vec<Volume> {
    let config = Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match opts.identity {
        IdentityMode::Secret => vec![
            config,
            Volume {
                name: IDENTITY_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.into()),
                    default_mode: Some(0o444),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        IdentityMode::Token => vec![
            config,
            Volume {
                name: IDENTITY_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: TOKEN_VOLUME.into(),
                projected: Some(ProjectedVolumeSource {
                    // Readable by the sidecar's user without an fsGroup.
                    default_mode: Some(0o444),
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(TOKEN_AUDIENCE.into()),
                            expiration_seconds: Some(opts.token_seconds),
                            path: "token".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode: {e}"))
}

/// Rewrites `template` (an object with `metadata` and `spec`) in place.
pub fn inject_template(template: &mut Value, opts: &InjectOptions) -> Result<(), String> {
    let Some(t) = template.as_object_mut() else {
        return Err("the pod template is not an object".into());
    };
    let sa = t
        .get("spec")
        .and_then(|s| s.get("serviceAccountName"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let meta = object_at(t, "metadata")?;
    let annotations = object_at(meta, "annotations")?;
    let config_map =
        annotation(annotations, keys::PROXY_CONFIG).unwrap_or_else(|| format!("strait-proxy-{sa}"));
    let secret = annotation(annotations, keys::IDENTITY_SECRET)
        .unwrap_or_else(|| format!("strait-identity-{sa}"));
    let mut opts = opts.clone();
    if let Some(cpu) = annotation(annotations, keys::PROXY_CPU) {
        opts.cpu_request = cpu;
    }
    if let Some(mem) = annotation(annotations, keys::PROXY_MEMORY) {
        opts.memory_limit = mem;
    }
    if let Some(mode) = annotation(annotations, keys::IDENTITY) {
        opts.identity = mode
            .parse()
            .map_err(|e| format!("annotation {}: {e}", keys::IDENTITY))?;
    }
    annotations.insert(keys::INJECTED.into(), Value::String(opts.image.clone()));

    let spec = object_at(t, "spec")?;
    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or("spec.containers: missing")?;
    let env: Vec<Value> = proxy_env().iter().map(to_value).collect::<Result<_, _>>()?;
    for c in containers.iter_mut() {
        if c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME) {
            return Err(format!(
                "spec.containers: {SIDECAR_NAME} is a container name Strait reserves for its sidecar"
            ));
        }
        let c = c.as_object_mut().ok_or("spec.containers: not an object")?;
        let list = array_at(c, "env")?;
        for e in &env {
            upsert_by_name(list, e.clone(), false);
        }
    }
    let inits = array_at(spec, "initContainers")?;
    upsert_by_name(inits, to_value(&sidecar(&opts))?, true);
    let vols = array_at(spec, "volumes")?;
    if opts.identity == IdentityMode::Secret {
        // Back from `token`: its projected token goes.
        vols.retain(|v| v.get("name").and_then(Value::as_str) != Some(TOKEN_VOLUME));
    }
    for v in volumes(&config_map, &secret, &opts) {
        upsert_by_name(vols, to_value(&v)?, false);
    }
    Ok(())
}

fn annotation(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn object_at<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let v = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
        .ok_or_else(|| format!("{key}: must be a map"))
}

fn array_at<'a>(m: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let v = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if v.is_null() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut()
        .ok_or_else(|| format!("{key}: must be a list"))
}

/// Replaces the entry with the same `name` where it is; else inserts it
/// first (`first`) or last.
fn upsert_by_name(list: &mut Vec<Value>, item: Value, first: bool) {
    let name = item.get("name").cloned();
    if let Some(slot) = list.iter_mut().find(|v| v.get("name") == name.as_ref()) {
        *slot = item;
    } else if first {
        list.insert(0, item);
    } else {
        list.push(item);
    }
}

/// Labels on a pod template, for the webhook's pod opt-in.
pub fn labels(template: &Value) -> BTreeMap<String, String> {
    template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
