//! The injection webhook: its serving certificate (a CA of its own, made
//! at install time, whose certificate is the webhook's `caBundle`), the
//! injector Deployment and Service, and the MutatingWebhookConfiguration.
//!
//! Opt-in is by label: a namespace labelled `strait.io/inject=enabled`
//! (webhook `namespace.inject.strait.io`, path `/inject/namespace`), or a
//! pod labelled so in a namespace that is neither opted in nor out
//! (`pod.inject.strait.io`, `/inject/pod`). A pod opts out with
//! `strait.io/inject: disabled` as a label (the selectors skip it) or an
//! annotation (the injector skips it).
//!
//! `failurePolicy: Fail`: a pod of an opted-in namespace that started
//! without its sidecar would talk plain text and have no identity, which
//! is worse than waiting for the injector. Strait's own namespace and
//! `kube-system` never match, so the injector itself and the cluster's DNS
//! can always start; the injector runs two replicas with a
//! PodDisruptionBudget.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServicePort};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::common::{self, Probe, meta, selector};
use super::rbac::INJECTOR_SA;
use super::roles::{config_and_identity, deployment, service};
use super::{InstallError, InstallOptions, Manifest};
use crate::inject::InjectOptions;
use crate::injector::{InjectorFile, TlsFiles};
use crate::keys;

pub const INJECTOR: &str = "strait-injector";
pub const TLS_SECRET: &str = "strait-injector-tls";
pub const PORT: u16 = 8443;

/// The webhook's serving certificate and the CA that signed it.
#[derive(Debug, Clone)]
pub struct WebhookTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl WebhookTls {
    /// A new CA and a certificate for `strait-injector.<ns>.svc`, valid
    /// for `days`.
    pub fn generate(ns: &str, days: i64) -> Result<Self, InstallError> {
        let e = |e: rcgen::Error| InstallError::Certificate(e.to_string());
        let now = time::OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.distinguished_name
            .push(DnType::CommonName, format!("strait injector CA ({ns})"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - time::Duration::hours(1);
        ca.not_after = now + time::Duration::days(days);
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(e)?;
        let mut leaf = CertificateParams::new(vec![
            format!("{INJECTOR}.{ns}.svc"),
            format!("{INJECTOR}.{ns}.svc.cluster.local"),
        ])
        .map_err(e)?;
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{INJECTOR}.{ns}.svc"));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.not_before = now - time::Duration::hours(1);
        leaf.not_after = now + time::Duration::days(days);
        let cert = leaf.signed_by(&key, &issuer).map_err(e)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `injector.yaml` (paths relative to the container's working directory).
pub fn injector_file(o: &InstallOptions) -> InjectorFile {
    InjectorFile {
        listen: std::net::SocketAddr::from(([0, 0, 0, 0], PORT)),
        namespace: o.namespace.clone(),
        tls: TlsFiles {
            cert: PathBuf::from("identity/tls.crt"),
            key: PathBuf::from("identity/tls.key"),
        },
        inject: InjectOptions::new(o.image.clone()),
    }
}

fn selector_req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn webhook(
    name: &str,
    path: &str,
    ns: &str,
    ca: &str,
    namespace_selector: LabelSelector,
    object_selector: LabelSelector,
) -> MutatingWebhook {
    MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: WebhookClientConfig {
            ca_bundle: Some(ByteString(ca.as_bytes().to_vec())),
            service: Some(ServiceReference {
                name: INJECTOR.into(),
                namespace: ns.into(),
                path: Some(path.into()),
                port: Some(443),
            }),
            url: None,
        },
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(namespace_selector),
        object_selector: Some(object_selector),
        reinvocation_policy: Some("Never".into()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

pub fn configuration(ns: &str, ca: &str) -> MutatingWebhookConfiguration {
    let never = ["kube-system", "kube-public", "kube-node-lease", ns];
    let not_system = selector_req("kubernetes.io/metadata.name", "NotIn", &never);
    let by_namespace = webhook(
        "namespace.inject.strait.io",
        "/inject/namespace",
        ns,
        ca,
        LabelSelector {
            match_labels: Some(BTreeMap::from([(keys::INJECT.into(), "enabled".into())])),
            match_expressions: Some(vec![not_system.clone()]),
        },
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![selector_req(keys::INJECT, "NotIn", &["disabled"])]),
        },
    );
    let by_pod = webhook(
        "pod.inject.strait.io",
        "/inject/pod",
        ns,
        ca,
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                not_system,
                selector_req(keys::INJECT, "NotIn", &["enabled", "disabled"]),
            ]),
        },
        LabelSelector {
            match_labels: Some(BTreeMap::from([(keys::INJECT.into(), "enabled".into())])),
            match_expressions: None,
        },
    );
    MutatingWebhookConfiguration {
        metadata: meta(&format!("{ns}-{INJECTOR}"), None, INJECTOR),
        webhooks: Some(vec![by_namespace, by_pod]),
    }
}

/// Secret, ConfigMap, Service, Deployment (2 replicas), PDB, webhook.
pub fn objects(o: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    let ns = o.namespace.as_str();
    let tls = &o.webhook_tls;
    let secret = Secret {
        metadata: meta(TLS_SECRET, Some(ns), INJECTOR),
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), tls.cert_pem.clone()),
            ("tls.key".to_owned(), tls.key_pem.clone()),
            ("ca.crt".to_owned(), tls.ca_pem.clone()),
        ])),
        ..Default::default()
    };
    let text = serde_yaml_ng::to_string(&injector_file(o))
        .map_err(|e| InstallError::Encode("injector.yaml".into(), e.to_string()))?;
    let cm = ConfigMap {
        metadata: meta(INJECTOR, Some(ns), INJECTOR),
        data: Some(BTreeMap::from([("injector.yaml".to_owned(), text)])),
        ..Default::default()
    };
    let (volumes, mounts) = config_and_identity(INJECTOR, "/etc/strait/injector", TLS_SECRET);
    let mut c = common::container(
        "injector",
        &o.image,
        &["injector", "--config", "/etc/strait/injector/injector.yaml"],
    );
    c.ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
        name: Some("webhook".into()),
        container_port: i32::from(PORT),
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    c.readiness_probe = Some(Probe::https(PORT, "/ready").readiness());
    c.liveness_probe = Some(Probe::https(PORT, "/live").liveness());
    c.resources = Some(common::resources("50m", "32Mi", "1", "128Mi"));
    c.volume_mounts = Some(mounts);
    let dep = deployment(INJECTOR, ns, INJECTOR_SA, 2, c, volumes);
    let svc = service(
        INJECTOR,
        ns,
        "ClusterIP",
        vec![ServicePort {
            name: Some("webhook".into()),
            port: 443,
            target_port: Some(IntOrString::Int(i32::from(PORT))),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
    );
    let pdb = PodDisruptionBudget {
        metadata: meta(INJECTOR, Some(ns), INJECTOR),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(INJECTOR)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(vec![
        Manifest::new(&secret)?,
        Manifest::new(&cm)?,
        Manifest::new(&svc)?,
        Manifest::new(&dep)?,
        Manifest::new(&pdb)?,
        Manifest::new(&configuration(ns, &tls.ca_pem))?,
    ])
}
