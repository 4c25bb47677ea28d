//! Policy of one service: ordered failover and `distribute` weights in one
//! object (Istio refuses that combination; Strait does not), and who may
//! call it (`authorization`, enforced by this cluster's sidecars of the
//! service; not synced to peers), and per path-prefix timeouts and retries
//! (`routes`, enforced by this cluster's callers of the service, local or
//! imported).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use strait_api::ClusterName;
use strait_api::snapshot::{
    AuthorizationPolicy, AuthzRule, Distribute, LocalityPattern, OutlierDetection, PathPolicy,
    PrincipalPattern, Route, ServicePort, SnapshotError, TrafficPolicy, validate_authorization,
    validate_outlier, validate_routes,
};

use super::{FieldError, ServiceKey, check_label};

/// One policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Clusters to fail over to, in order.
    #[serde(default)]
    pub failover: Vec<ClusterName>,
    /// Locality weights; the first rule whose `from` matches the caller wins.
    #[serde(default)]
    pub distribute: Vec<Distribute>,
    #[serde(default = "default_factor")]
    pub overprovisioning_factor: f64,
    /// Who may call the service: deny rules first, then, if any allow rule
    /// exists for a port, one must match. The sidecars of this cluster's
    /// endpoints enforce it; other clusters never see it.
    #[serde(default)]
    pub authorization: Vec<AuthorizationPolicy>,
    /// Timeout and retries per path prefix (the longest matching prefix
    /// wins; unmatched paths get the default route). Enforced by the
    /// calling sidecars of this cluster, for local and imported services.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Passive ejection of this service's endpoints by this cluster's
    /// callers: consecutive failures before an ejection and how long it
    /// lasts (base, doubling up to max), and the share that may be out at
    /// once. Left out: 5 failures, 30 s, 300 s, 100%. An ejection also
    /// ends as soon as the endpoint's health check passes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

fn default_namespace() -> String {
    "default".to_owned()
}
fn default_factor() -> f64 {
    TrafficPolicy::default().overprovisioning_factor
}

impl PolicySpec {
    pub fn new(key: &ServiceKey) -> Self {
        Self {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            failover: Vec::new(),
            distribute: Vec::new(),
            overprovisioning_factor: default_factor(),
            authorization: Vec::new(),
            routes: Vec::new(),
            outlier_detection: None,
        }
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }

    /// Uniqueness, weight sums and ranges. Clusters in `failover` need not
    /// be linked yet; the snapshot builder skips unknown ones and says so.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_label("name", &self.name)?;
        check_label("namespace", &self.namespace)?;
        let mut seen = HashSet::new();
        for (i, c) in self.failover.iter().enumerate() {
            if !seen.insert(c) {
                return Err(FieldError::new(
                    format!("failover[{i}]"),
                    c,
                    "duplicate cluster",
                ));
            }
        }
        let f = self.overprovisioning_factor;
        if !(f.is_finite() && (1.0..=10.0).contains(&f)) {
            let why = "must be between 1.0 and 10.0";
            return Err(FieldError::new("overprovisioning_factor", f, why));
        }
        let mut froms = HashSet::new();
        for (i, d) in self.distribute.iter().enumerate() {
            if !froms.insert(&d.from) {
                let why = "duplicate `from` pattern";
                return Err(FieldError::new(
                    format!("distribute[{i}].from"),
                    &d.from,
                    why,
                ));
            }
            if d.to.is_empty() {
                let why = "needs at least one locality";
                return Err(FieldError::new(format!("distribute[{i}].to"), "{}", why));
            }
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                let why = "weights must sum to 100";
                return Err(FieldError::new(format!("distribute[{i}].to"), sum, why));
            }
        }
        validate_routes("routes", &self.routes).map_err(field_error)?;
        if let Some(o) = &self.outlier_detection {
            validate_outlier("outlier_detection", o).map_err(field_error)?;
        }
        validate_authorization("authorization", &self.authorization, None).map_err(field_error)
    }

    /// Checks `authorization` against the service's ports: named ports
    /// exist, and paths, methods and hosts are only used on HTTP ports.
    pub fn validate_for_ports(&self, ports: &[ServicePort]) -> Result<(), FieldError> {
        validate_authorization("authorization", &self.authorization, Some(ports))
            .map_err(field_error)
    }

    /// The authorization the sidecars of a service with `ports` enforce.
    /// A policy that does not fit the service (a port it lacks, HTTP rules
    /// on a TCP port) fails closed: the service then denies every caller,
    /// and the error says why.
    pub fn authorization_for(
        &self,
        ports: &[ServicePort],
    ) -> (Vec<AuthorizationPolicy>, Option<FieldError>) {
        match self.validate_for_ports(ports) {
            Ok(()) => (self.authorization.clone(), None),
            Err(e) => (vec![deny_all("strait-invalid-policy")], Some(e)),
        }
    }

    /// The snapshot form, keeping only failover clusters in `known`.
    pub fn to_traffic(&self, known: &dyn Fn(&ClusterName) -> bool) -> TrafficPolicy {
        TrafficPolicy {
            failover: self.failover.iter().filter(|c| known(c)).cloned().collect(),
            distribute: self.distribute.clone(),
            overprovisioning_factor: self.overprovisioning_factor,
            ..TrafficPolicy::default()
        }
    }
}

/// A policy that denies every caller on every port.
pub fn deny_all(name: &str) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.to_owned(),
        ports: Vec::new(),
        deny: vec![AuthzRule {
            from: vec![PrincipalPattern::Any],
            ..AuthzRule::default()
        }],
        allow: Vec::new(),
        path: PathPolicy::default(),
    }
}

fn field_error(e: SnapshotError) -> FieldError {
    match e {
        SnapshotError::Invalid {
            field,
            value,
            reason,
        } => FieldError::new(field, value, reason),
        SnapshotError::Duplicate { field, what, value } => {
            FieldError::new(field, value, format!("duplicate {what}"))
        }
        other => {
            let field = other.field().unwrap_or("authorization").to_owned();
            FieldError::new(field, "", other.to_string())
        }
    }
}

/// Parses the CLI form of `distribute`: rules separated by `;`, each
/// `[FROM->]TO=W,TO=W` (FROM defaults to `*`), e.g.
/// `us-east/*->us-east/*=80,us-west/*=20`.
pub fn parse_distribute(s: &str) -> Result<Vec<Distribute>, FieldError> {
    let mut rules = Vec::new();
    for (i, rule) in s
        .split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .enumerate()
    {
        let f = format!("distribute[{i}]");
        let (from, to) = rule.split_once("->").unwrap_or(("*", rule));
        let from: LocalityPattern = from
            .trim()
            .parse()
            .map_err(|e| FieldError::new(format!("{f}.from"), from, format!("{e}")))?;
        let mut weights = BTreeMap::new();
        for part in to.split(',').map(str::trim) {
            let Some((pat, w)) = part.split_once('=') else {
                let why = "expected LOCALITY=WEIGHT";
                return Err(FieldError::new(format!("{f}.to"), part, why));
            };
            let pat: LocalityPattern = pat
                .trim()
                .parse()
                .map_err(|e| FieldError::new(format!("{f}.to"), pat, format!("{e}")))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| FieldError::new(format!("{f}.to"), w, "weight must be an integer"))?;
            weights.insert(pat, w);
        }
        rules.push(Distribute { from, to: weights });
    }
    Ok(rules)
}

/// The command-line form of one authorization policy: callers to allow
/// and to deny, each list narrowed to the same ports, paths and methods,
/// and how the ports' request paths are canonicalized and matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzFlags {
    pub name: String,
    pub allow_from: Vec<String>,
    pub deny_from: Vec<String>,
    pub ports: Vec<u16>,
    pub paths: Vec<String>,
    pub methods: Vec<String>,
    pub path: PathPolicy,
}

impl AuthzFlags {
    /// True when neither a rule nor path handling is asked for.
    pub fn is_empty(&self) -> bool {
        self.allow_from.is_empty() && self.deny_from.is_empty() && self.path.is_default()
    }

    /// One policy with a deny rule (`deny_from`) and an allow rule
    /// (`allow_from`), each with the paths and methods (upper-cased).
    pub fn to_policy(&self) -> Result<AuthorizationPolicy, FieldError> {
        let rule = |kind: &str, from: &[String]| -> Result<Vec<AuthzRule>, FieldError> {
            if from.is_empty() {
                return Ok(Vec::new());
            }
            let from = from
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<PrincipalPattern>().map_err(|e| {
                        FieldError::new(format!("{kind}[0].from[{i}]"), s, e.to_string())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![AuthzRule {
                from,
                paths: self.paths.clone(),
                methods: self.methods.iter().map(|m| m.to_uppercase()).collect(),
                hosts: Vec::new(),
            }])
        };
        let policy = AuthorizationPolicy {
            name: self.name.clone(),
            ports: self.ports.clone(),
            deny: rule("deny", &self.deny_from)?,
            allow: rule("allow", &self.allow_from)?,
            path: self.path,
        };
        let f = format!("authorization[{}]", self.name);
        validate_authorization(&f, std::slice::from_ref(&policy), None).map_err(field_error)?;
        Ok(policy)
    }
}

impl PolicySpec {
    /// Adds `policy`, replacing the one of the same name.
    pub fn upsert_authorization(&mut self, policy: AuthorizationPolicy) {
        match self
            .authorization
            .iter_mut()
            .find(|p| p.name == policy.name)
        {
            Some(p) => *p = policy,
            None => self.authorization.push(policy),
        }
    }

    /// Adds `route`, replacing the one with the same path prefix.
    pub fn upsert_route(&mut self, route: Route) {
        match self
            .routes
            .iter_mut()
            .find(|r| r.path_prefix == route.path_prefix)
        {
            Some(r) => *r = route,
            None => self.routes.push(route),
        }
    }
}
