//! SPIFFE identities: trust domains and SPIFFE IDs, parsed and validated per
//! the SPIFFE ID specification (SPIFFE-ID.md, sections 2.1-2.3).
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>`:
//! - the scheme is exactly `spiffe` (lower case);
//! - the trust domain uses only `a-z 0-9 . - _`, is at most 255 bytes, and has
//!   no port, user info or percent-encoding;
//! - the path is empty or a series of `/segment`s; segments are non-empty,
//!   never `.` or `..`, and use only `a-z A-Z 0-9 . - _`; no trailing slash;
//! - no query and no fragment; the whole URI is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID URI in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid trust domain or SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("spiffe id is empty")]
    Empty,
    #[error("spiffe id must start with \"spiffe://\" (scheme is case-sensitive): got {0:?}")]
    WrongScheme(String),
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain is {0} bytes long; the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong(usize),
    #[error(
        "trust domain contains {0:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    #[error("trust domain must not carry a port")]
    Port,
    #[error("trust domain must not carry user info ('@')")]
    UserInfo,
    #[error("spiffe id must not carry a query ('?')")]
    Query,
    #[error("spiffe id must not carry a fragment ('#')")]
    Fragment,
    #[error("spiffe id must not contain percent-encoded characters")]
    PercentEncoded,
    #[error("path segment {0} is empty (\"//\" is not allowed)")]
    EmptySegment(usize),
    #[error("path segment {0} is a dot segment ('.' or '..')")]
    DotSegment(usize),
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed in segments")]
    PathChar(char),
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("spiffe id is {0} bytes long; the limit is {MAX_SPIFFE_ID_LEN}")]
    TooLong(usize),
}

/// A SPIFFE trust domain, e.g. `strait.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://td`).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0).into(),
            td_len: self.0.len(),
        }
    }

    /// The conventional workload identity `spiffe://td/ns/<ns>/sa/<sa>`.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, IdentityError> {
        SpiffeId::parse(&format!(
            "{SCHEME}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }

    /// The identity of one of Strait's own components of `cluster`:
    /// `spiffe://td/ns/strait-system/sa/<component>-<cluster>`.
    pub fn component_id(&self, component: Component, cluster: &crate::ClusterName) -> SpiffeId {
        let uri = format!(
            "{SCHEME}{}/ns/{SYSTEM_NAMESPACE}/sa/{}-{cluster}",
            self.0,
            component.as_str()
        );
        SpiffeId {
            uri: uri.into(),
            td_len: self.0.len(),
        }
    }

    /// The controller of `cluster`.
    pub fn controller_id(&self, cluster: &crate::ClusterName) -> SpiffeId {
        self.component_id(Component::Controller, cluster)
    }

    /// The east-west gateways of `cluster`.
    pub fn gateway_id(&self, cluster: &crate::ClusterName) -> SpiffeId {
        self.component_id(Component::Gateway, cluster)
    }
}

/// The namespace of Strait's own components' identities.
pub const SYSTEM_NAMESPACE: &str = "strait-system";

/// Strait's own components, each with one identity per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Controller,
    Gateway,
    Dns,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Controller => "controller",
            Self::Gateway => "gateway",
            Self::Dns => "dns",
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_trust_domain(&s)?;
        Ok(Self(s))
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> Self {
        td.0
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://strait.local/ns/default/sa/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    /// Shared: an identity is cloned onto every endpoint that carries it
    /// (a catalog of 100,000 endpoints holds a few hundred identities).
    uri: Arc<str>,
    td_len: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(IdentityError::WrongScheme(
                s.chars().take(16).collect::<String>(),
            ));
        };
        // Query and fragment are checked first so that their characters are
        // reported as what they are rather than as a bad path character.
        if rest.contains('#') {
            return Err(IdentityError::Fragment);
        }
        if rest.contains('?') {
            return Err(IdentityError::Query);
        }
        if rest.contains('%') {
            return Err(IdentityError::PercentEncoded);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.into(),
            td_len: td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.td_len..]
    }

    /// Namespace of a `/ns/<ns>/sa/<sa>` identity.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// Service account of a `/ns/<ns>/sa/<sa>` identity.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.uri.as_ref().to_owned()
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    if td.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TrustDomainTooLong(td.len()));
    }
    // User info is reported as such even when it holds a ':' (user:pw@).
    if td.contains('@') {
        return Err(IdentityError::UserInfo);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(IdentityError::Port),
            '%' => return Err(IdentityError::PercentEncoded),
            other => return Err(IdentityError::TrustDomainChar(other)),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), IdentityError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        // "/" alone would be an empty segment too; report it as a trailing slash.
        return Err(IdentityError::TrailingSlash);
    }
    // path starts with '/' by construction; skip the empty piece before it.
    for (i, seg) in path.split('/').skip(1).enumerate() {
        let n = i + 1;
        if seg.is_empty() {
            return Err(IdentityError::EmptySegment(n));
        }
        if seg == "." || seg == ".." {
            return Err(IdentityError::DotSegment(n));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(IdentityError::PathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> IdentityError {
        SpiffeId::parse(s).expect_err(s)
    }

    #[test]
    fn accepts_well_formed_ids() {
        for ok in [
            "spiffe://strait.local",
            "spiffe://strait.local/ns/default/sa/web",
            "spiffe://a-b_c.9/x/Y.z-_/0",
            "spiffe://td/a",
        ] {
            let id = SpiffeId::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
        }
    }

    #[test]
    fn splits_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://strait.local/ns/prod/sa/api").unwrap();
        assert_eq!(id.trust_domain_str(), "strait.local");
        assert_eq!(id.path(), "/ns/prod/sa/api");
        assert_eq!(id.namespace(), Some("prod"));
        assert_eq!(id.service_account(), Some("api"));
        let other = SpiffeId::parse("spiffe://strait.local/ns/prod/sa/api/extra").unwrap();
        assert_eq!(other.namespace(), None);
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path(), "");
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(err(""), IdentityError::Empty);
    }

    #[test]
    fn rejects_wrong_or_upper_case_scheme() {
        assert!(matches!(err("https://td/x"), IdentityError::WrongScheme(_)));
        assert!(matches!(
            err("SPIFFE://td/x"),
            IdentityError::WrongScheme(_)
        ));
        assert!(matches!(err("spiffe:/td/x"), IdentityError::WrongScheme(_)));
        assert!(matches!(err("td/x"), IdentityError::WrongScheme(_)));
    }

    #[test]
    fn rejects_missing_trust_domain() {
        assert_eq!(err("spiffe://"), IdentityError::EmptyTrustDomain);
        assert_eq!(err("spiffe:///ns/a"), IdentityError::EmptyTrustDomain);
    }

    #[test]
    fn rejects_bad_trust_domain_characters() {
        assert_eq!(
            err("spiffe://Strait.local"),
            IdentityError::TrustDomainChar('S')
        );
        assert_eq!(err("spiffe://str ait"), IdentityError::TrustDomainChar(' '));
        assert_eq!(err("spiffe://tré"), IdentityError::TrustDomainChar('é'));
    }

    #[test]
    fn rejects_port_and_user_info() {
        assert_eq!(err("spiffe://td:443/x"), IdentityError::Port);
        assert_eq!(err("spiffe://user@td/x"), IdentityError::UserInfo);
        assert_eq!(err("spiffe://user:pw@td/x"), IdentityError::UserInfo);
    }

    #[test]
    fn rejects_query_and_fragment() {
        assert_eq!(err("spiffe://td/x?a=b"), IdentityError::Query);
        assert_eq!(err("spiffe://td?a"), IdentityError::Query);
        assert_eq!(err("spiffe://td/x#frag"), IdentityError::Fragment);
    }

    #[test]
    fn rejects_percent_encoding() {
        assert_eq!(err("spiffe://td/a%2Fb"), IdentityError::PercentEncoded);
        assert_eq!(err("spiffe://t%41d/x"), IdentityError::PercentEncoded);
    }

    #[test]
    fn rejects_bad_path_segments() {
        assert_eq!(err("spiffe://td/"), IdentityError::TrailingSlash);
        assert_eq!(err("spiffe://td/a/"), IdentityError::TrailingSlash);
        assert_eq!(err("spiffe://td//a"), IdentityError::EmptySegment(1));
        assert_eq!(err("spiffe://td/a//b"), IdentityError::EmptySegment(2));
        assert_eq!(err("spiffe://td/./a"), IdentityError::DotSegment(1));
        assert_eq!(err("spiffe://td/a/.."), IdentityError::DotSegment(2));
        assert_eq!(err("spiffe://td/a b"), IdentityError::PathChar(' '));
        assert_eq!(err("spiffe://td/a/b*c"), IdentityError::PathChar('*'));
        // Dots inside a segment are fine.
        assert!(SpiffeId::parse("spiffe://td/a..b/.c").is_ok());
    }

    #[test]
    fn enforces_length_limits() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            err(&format!("spiffe://{long_td}/x")),
            IdentityError::TrustDomainTooLong(256)
        );
        let path = "/x".repeat(1100);
        let long = format!("spiffe://td{path}");
        assert_eq!(err(&long), IdentityError::TooLong(long.len()));
    }

    #[test]
    fn trust_domain_parses_alone_and_builds_workload_ids() {
        let td = TrustDomain::new("strait.local").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://strait.local");
        let id = td.workload_id("default", "web").unwrap();
        assert_eq!(id.as_str(), "spiffe://strait.local/ns/default/sa/web");
        assert_eq!(id.trust_domain(), td);
        assert!(td.workload_id("a/b", "c").is_ok()); // an extra segment is still a valid id
        assert!(td.workload_id("", "c").is_err());
        assert_eq!(TrustDomain::new(""), Err(IdentityError::EmptyTrustDomain));
        assert_eq!(TrustDomain::new("td:80"), Err(IdentityError::Port));
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/a/sa/b\""
        );
        let bad = serde_json::from_str::<SpiffeId>("\"spiffe://td//x\"").unwrap_err();
        assert!(bad.to_string().contains("segment 1 is empty"), "{bad}");
    }
}
