//! Traffic policy of one service: ordered failover and `distribute` weights
//! in one object (Istio refuses that combination; Strait does not).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use strait_api::ClusterName;
use strait_api::snapshot::{Distribute, LocalityPattern, TrafficPolicy};

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
        Ok(())
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
