//! Which services a sidecar may call: its config's `scope.services`
//! (`name.namespace` or `*.namespace`), sent as `Node.scope`. An empty
//! scope is every service. A scoped node never receives a service outside
//! its scope; its own service is added by the controller.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DeltaError;
use crate::label;

/// One entry of a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ScopePattern {
    /// `name.namespace`.
    Service { name: String, namespace: String },
    /// `*.namespace`: every service of the namespace.
    Namespace(String),
}

impl ScopePattern {
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        match self {
            Self::Service {
                name: n,
                namespace: ns,
            } => n == name && ns == namespace,
            Self::Namespace(ns) => ns == namespace,
        }
    }
}

impl FromStr for ScopePattern {
    type Err = DeltaError;
    fn from_str(s: &str) -> Result<Self, DeltaError> {
        let bad = |reason: String| DeltaError::Field {
            field: "scope.services".into(),
            value: format!("{s:?}"),
            reason,
        };
        let (name, namespace) = s
            .split_once('.')
            .ok_or_else(|| bad("a scope entry is name.namespace or *.namespace".into()))?;
        if !label::is_service_label(namespace) {
            return Err(bad(format!("the namespace {}", label::SERVICE_LABEL_RULE)));
        }
        if name == "*" {
            return Ok(Self::Namespace(namespace.to_owned()));
        }
        if !label::is_service_label(name) {
            return Err(bad(format!(
                "the service name {} (or is *)",
                label::SERVICE_LABEL_RULE
            )));
        }
        Ok(Self::Service {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }
}

impl TryFrom<String> for ScopePattern {
    type Error = DeltaError;
    fn try_from(s: String) -> Result<Self, DeltaError> {
        s.parse()
    }
}

impl From<ScopePattern> for String {
    fn from(p: ScopePattern) -> Self {
        p.to_string()
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { name, namespace } => write!(f, "{name}.{namespace}"),
            Self::Namespace(ns) => write!(f, "*.{ns}"),
        }
    }
}

/// A node's scope: every service when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    patterns: Vec<ScopePattern>,
}

impl Scope {
    /// Every service.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn new(patterns: Vec<ScopePattern>) -> Self {
        Self { patterns }
    }

    /// From `Node.scope.services`, naming the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, DeltaError> {
        Ok(Self {
            patterns: entries
                .iter()
                .map(|e| e.parse())
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Adds `name.namespace` (a narrowed scope only: "all" stays all).
    pub fn with(mut self, namespace: &str, name: &str) -> Self {
        if !self.is_all() && !self.contains(namespace, name) {
            self.patterns.push(ScopePattern::Service {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            });
        }
        self
    }

    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.is_all() || self.patterns.iter().any(|p| p.matches(namespace, name))
    }

    pub fn patterns(&self) -> &[ScopePattern] {
        &self.patterns
    }
}
