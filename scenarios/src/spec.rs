//! The scenario file format (YAML; documented in `docs/scenarios.md`).
//! Parsed with unknown fields refused, then validated with errors that name
//! the field.

use std::time::Duration;

use serde::Deserialize;
use strait_api::snapshot::{AuthorizationPolicy, Protocol, duration_str};
use strait_federation::catalog::Export;

/// `Option<Duration>` in the snapshot's duration syntax (`250ms`, `3s`).
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            strait_api::snapshot::duration_str::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a duration (e.g. 250ms, 3s, 1m)"))
            })
        })
        .transpose()
    }
}

fn default_namespace() -> String {
    "default".into()
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(with = "duration_str")]
    pub duration: Duration,
    /// Lease of imported catalog data (short, so partitions show quickly).
    #[serde(default = "default_lease", with = "duration_str")]
    pub lease: Duration,
    pub clusters: Vec<ClusterSpec>,
    #[serde(default)]
    pub links: Vec<[String; 2]>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub assertions: Vec<Assertion>,
}

fn default_lease() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    pub zone: String,
    #[serde(default = "one")]
    pub gateways: usize,
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub service: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default = "one")]
    pub replicas: usize,
    #[serde(default)]
    pub export: Export,
    #[serde(default, with = "opt_duration")]
    pub latency: Option<Duration>,
    #[serde(default)]
    pub failure_rate: f64,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub authorization: Vec<AuthorizationPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub cluster: String,
    pub service: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub failover: Vec<String>,
    /// CLI form: `[FROM->]TO=W,TO=W;...`, e.g. `us-east/*=80,us-west/*=20`.
    #[serde(default)]
    pub distribute: Option<String>,
    /// Request timeout of the service's route `/` (default 15 s).
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Retries to another endpoint for idempotent requests (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    pub name: String,
    /// The cluster whose client sidecar sends the traffic.
    pub from: String,
    pub service: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Requests per second.
    pub rate: u32,
}

/// A timeline step: at a time, exactly one action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(with = "duration_str")]
    pub at: Duration,
    pub kill_workload: Option<Target>,
    pub restart_workload: Option<Target>,
    /// Freeze a workload's apps (they accept but never answer) / thaw them.
    pub pause_workload: Option<Target>,
    pub resume_workload: Option<Target>,
    pub kill_gateway: Option<GatewayTarget>,
    pub restart_gateway: Option<GatewayTarget>,
    pub kill_controller: Option<ClusterRef>,
    pub restart_controller: Option<ClusterRef>,
    pub partition: Option<Vec<String>>,
    pub heal: Option<Vec<String>>,
    pub unexport: Option<Target>,
    pub export: Option<Target>,
    pub rotate_certs: Option<ClusterRef>,
    pub rotate_root: Option<RotateRoot>,
    pub check_dns: Option<DnsCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub cluster: String,
    pub service: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTarget {
    pub cluster: String,
    #[serde(default)]
    pub replica: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRef {
    pub cluster: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRoot {}

/// Queries a cluster's DNS server and checks which cluster answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCheck {
    pub cluster: String,
    pub name: String,
    /// `endpoints` of this cluster, or its `gateway`.
    pub expect_cluster: String,
    #[serde(default)]
    pub expect: DnsExpect,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsExpect {
    #[default]
    Endpoints,
    Gateway,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Window {
    pub traffic: String,
    #[serde(default, with = "opt_duration")]
    pub from: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub to: Option<Duration>,
}

/// One assertion; exactly one kind per entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub success_rate: Option<SuccessRate>,
    pub share: Option<Share>,
    pub failover_time: Option<FailoverTime>,
    pub no_lost_requests: Option<Window>,
    pub status_share: Option<StatusShare>,
}

/// The share of requests answered with one HTTP status (e.g. 403 for a
/// denied caller).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusShare {
    #[serde(flatten)]
    pub window: Window,
    pub status: u16,
    pub min: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRate {
    #[serde(flatten)]
    pub window: Window,
    pub min: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    #[serde(flatten)]
    pub window: Window,
    pub cluster: String,
    pub expect: f64,
    pub tolerance: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverTime {
    pub traffic: String,
    #[serde(with = "duration_str")]
    pub after: Duration,
    pub to_cluster: String,
    #[serde(with = "duration_str")]
    pub max: Duration,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Scenario {
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        let s: Self =
            strait_api::yaml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.clusters.is_empty() {
            return Err(bad("clusters", "at least one cluster is needed"));
        }
        if self.clusters.len() > 8 {
            return Err(bad(
                "clusters",
                "at most 8 clusters fit one host's address plan",
            ));
        }
        let names: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        let known = |field: String, c: &str| -> Result<(), SpecError> {
            if names.contains(&c) {
                Ok(())
            } else {
                Err(bad(
                    field,
                    format!("unknown cluster {c:?} (clusters: {})", names.join(", ")),
                ))
            }
        };
        for (i, c) in self.clusters.iter().enumerate() {
            strait_api::ClusterName::new(&c.name)
                .map_err(|e| bad(format!("clusters[{i}].name"), e.to_string()))?;
            if c.workloads.len() > 50 {
                return Err(bad(
                    format!("clusters[{i}].workloads"),
                    "at most 50 workloads",
                ));
            }
            for (j, w) in c.workloads.iter().enumerate() {
                let f = format!("clusters[{i}].workloads[{j}]");
                if w.replicas == 0 || w.replicas > 50 {
                    return Err(bad(format!("{f}.replicas"), "must be 1..=50"));
                }
                if !(0.0..=1.0).contains(&w.failure_rate) {
                    return Err(bad(format!("{f}.failure_rate"), "must be between 0 and 1"));
                }
                if w.port == 0 || w.port == 15006 || w.port == 15001 {
                    return Err(bad(format!("{f}.port"), "0, 15001 and 15006 are reserved"));
                }
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            known(format!("links[{i}][0]"), &l[0])?;
            known(format!("links[{i}][1]"), &l[1])?;
            if l[0] == l[1] {
                return Err(bad(
                    format!("links[{i}]"),
                    "a cluster cannot link to itself",
                ));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            known(format!("policies[{i}].cluster"), &p.cluster)?;
            for (j, c) in p.failover.iter().enumerate() {
                known(format!("policies[{i}].failover[{j}]"), c)?;
            }
            if let Some(d) = &p.distribute {
                strait_federation::catalog::policy::parse_distribute(d).map_err(|e| {
                    bad(
                        format!("policies[{i}].distribute"),
                        format!("{}: {}", e.value, e.reason),
                    )
                })?;
            }
        }
        let traffic: Vec<&str> = self.traffic.iter().map(|t| t.name.as_str()).collect();
        for (i, t) in self.traffic.iter().enumerate() {
            known(format!("traffic[{i}].from"), &t.from)?;
            if t.rate == 0 || t.rate > 2000 {
                return Err(bad(
                    format!("traffic[{i}].rate"),
                    "must be 1..=2000 requests per second",
                ));
            }
        }
        for (i, s) in self.timeline.iter().enumerate() {
            let f = format!("timeline[{i}]");
            if s.at > self.duration {
                return Err(bad(format!("{f}.at"), "is after the end of the scenario"));
            }
            let set = [
                s.kill_workload.is_some(),
                s.restart_workload.is_some(),
                s.pause_workload.is_some(),
                s.resume_workload.is_some(),
                s.kill_gateway.is_some(),
                s.restart_gateway.is_some(),
                s.kill_controller.is_some(),
                s.restart_controller.is_some(),
                s.partition.is_some(),
                s.heal.is_some(),
                s.unexport.is_some(),
                s.export.is_some(),
                s.rotate_certs.is_some(),
                s.rotate_root.is_some(),
                s.check_dns.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set != 1 {
                return Err(bad(f, format!("needs exactly one action, found {set}")));
            }
            for c in s.partition.iter().chain(s.heal.iter()).flatten() {
                known(format!("{f}.partition"), c)?;
            }
        }
        for (i, a) in self.assertions.iter().enumerate() {
            let f = format!("assertions[{i}]");
            let windows = [
                a.success_rate.as_ref().map(|x| &x.window),
                a.share.as_ref().map(|x| &x.window),
                a.no_lost_requests.as_ref(),
                a.status_share.as_ref().map(|x| &x.window),
            ];
            let n = windows.iter().filter(|w| w.is_some()).count()
                + usize::from(a.failover_time.is_some());
            if n != 1 {
                return Err(bad(
                    f,
                    format!("needs exactly one assertion kind, found {n}"),
                ));
            }
            let tname = windows
                .iter()
                .flatten()
                .map(|w| w.traffic.as_str())
                .chain(a.failover_time.as_ref().map(|x| x.traffic.as_str()))
                .next()
                .unwrap_or_default();
            if !traffic.contains(&tname) {
                return Err(bad(
                    format!("{f}.traffic"),
                    format!("unknown traffic {tname:?}"),
                ));
            }
        }
        Ok(())
    }
}
