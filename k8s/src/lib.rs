//! Strait on Kubernetes: what `strait install kubernetes`, `strait inject`
//! and `strait injector` produce and serve.
//!
//! - [`install`]: every object of a cluster's install (namespace, CRDs,
//!   RBAC, Deployments, Services, ConfigMaps the roles really parse, the
//!   injection webhook, CA Secrets), built from typed k8s-openapi objects,
//!   never from text templates.
//! - [`inject`]: the pure rewrite that adds the sidecar to a pod template
//!   (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
//!   CronJobs, Lists); idempotent.
//! - [`patch`]: the JSON Patch between an object and its injected form.
//! - [`injector`]: the mutating admission webhook (AdmissionReview v1 over
//!   TLS) answering with that patch.
//! - [`check`]: `strait install kubernetes --check` (CRDs established,
//!   Deployments ready, the webhook's Service with a ready endpoint).
//! - [`tokenreview`]: the CA's check of projected ServiceAccount tokens (a
//!   `TokenReview` against the API server).
//!
//! What it is not: the controller's Kubernetes catalog and its leader
//! election (that is `strait_federation::kube`).

pub mod check;
pub mod crds;
pub mod inject;
pub mod injector;
pub mod install;
pub mod patch;
pub mod tokenreview;
pub mod yaml;

/// Label and annotation keys Strait reads and writes.
pub mod keys {
    /// Opt-in (`enabled`, namespace or pod label) and opt-out (`disabled`,
    /// pod label or annotation).
    pub const INJECT: &str = "strait.io/inject";
    /// Set on injected pod templates: the sidecar image.
    pub const INJECTED: &str = "strait.io/injected";
    /// The ConfigMap holding the sidecar's `sidecar.yaml`.
    pub const PROXY_CONFIG: &str = "strait.io/proxy-config";
    /// The Secret holding the sidecar's `chain.pem`, `key.pem`, `bundle.pem`.
    pub const IDENTITY_SECRET: &str = "strait.io/identity-secret";
    /// How the sidecar gets its certificate: `secret` (the Secret's
    /// files) or `token` (the CA, with the projected ServiceAccount token).
    pub const IDENTITY: &str = "strait.io/identity";
    /// Sidecar resource overrides, e.g. `100m` and `64Mi`.
    pub const PROXY_CPU: &str = "strait.io/proxy-cpu-request";
    pub const PROXY_MEMORY: &str = "strait.io/proxy-memory-limit";
}
