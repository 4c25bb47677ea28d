//! Inbound authorization: may this peer make this request to this port?
//!
//! Policies come from the snapshot (per service, optionally per port). For a
//! request on a port: with no policy the answer is allow; otherwise deny
//! rules are checked first, then, if any allow rule exists, one must match
//! (default deny); a port whose policies hold only deny rules allows what
//! they do not deny. A rule matches when every condition it sets matches:
//! source identity patterns, path prefixes, methods and hosts.
//!
//! Paths are compared in their canonical form ([`crate::path`]), which
//! [`authorize`] computes under the port's [`PathPolicy`] and hands back for
//! forwarding: `//admin`, `/a/%2e%2e/admin` or `/%61dmin` cannot slip past a
//! deny on `/admin`, and the app receives exactly the path decided on. A
//! policy with `path.case_insensitive` compares its rules' paths ignoring
//! ASCII case. For opaque TCP there is no request: a deny rule with HTTP
//! conditions then matches on its source alone (fail closed) and an allow
//! rule with HTTP conditions never matches.

use strait_api::SpiffeId;
use strait_api::snapshot::{AuthorizationPolicy, AuthzRule, PathPolicy, path_has_prefix};

use crate::path::{self, PathError};

/// What is known about an HTTP request, as received.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target's path without query: as received for
    /// [`authorize`], canonical for [`evaluate`].
    pub path: &'a str,
    /// The `Host` header or `:authority`.
    pub host: Option<&'a str>,
}

/// An inbound request or connection to the local workload.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub port: u16,
    /// The peer's verified SPIFFE ID; `None` for plaintext peers.
    pub source: Option<&'a SpiffeId>,
    /// `None` for opaque TCP.
    pub http: Option<HttpRequest<'a>>,
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No policy covers the port.
    NoPolicy,
    AllowRule,
    DenyRule,
    /// Only deny rules cover the port, and none matched.
    NoDenyMatch,
    /// Allow rules cover the port, and none matched.
    NoAllowMatch,
}

impl Reason {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoPolicy => "no_policy",
            Self::AllowRule => "allow_rule",
            Self::DenyRule => "deny_rule",
            Self::NoDenyMatch => "no_deny_match",
            Self::NoAllowMatch => "no_allow_match",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// The policy whose rule decided, if one did.
    pub policy: Option<String>,
}

impl Decision {
    fn new(allowed: bool, reason: Reason, policy: Option<&AuthorizationPolicy>) -> Self {
        Self {
            allowed,
            reason,
            policy: policy.map(|p| p.name.clone()),
        }
    }
}

/// The path handling of `port`: that of the first policy covering it
/// (policies covering one port agree, see
/// [`strait_api::snapshot::validate_authorization`]), else the default.
pub fn path_policy(policies: &[AuthorizationPolicy], port: u16) -> PathPolicy {
    policies
        .iter()
        .find(|p| p.applies_to(port))
        .map(|p| p.path)
        .unwrap_or_default()
}

/// What [`authorize`] decided, and the path to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub decision: Decision,
    /// The canonical path (no query); `None` for opaque TCP.
    pub path: Option<String>,
}

/// Canonicalizes the request's path under the port's path policy (a path
/// without a canonical form is refused, policy or not) and evaluates the
/// policies on that canonical path.
pub fn authorize(
    policies: &[AuthorizationPolicy],
    req: &Request<'_>,
) -> Result<Authorized, PathError> {
    let path = match &req.http {
        Some(h) => Some(path::canonicalize(h.path, path_policy(policies, req.port))?),
        None => None,
    };
    let canonical = Request {
        http: req.http.map(|h| HttpRequest {
            path: path.as_deref().unwrap_or(h.path),
            ..h
        }),
        ..*req
    };
    Ok(Authorized {
        decision: evaluate(policies, &canonical),
        path,
    })
}

/// Evaluates a service's policies for one request whose path is already
/// canonical ([`authorize`] makes it so).
pub fn evaluate(policies: &[AuthorizationPolicy], req: &Request<'_>) -> Decision {
    let applicable: Vec<&AuthorizationPolicy> =
        policies.iter().filter(|p| p.applies_to(req.port)).collect();
    if applicable.is_empty() {
        return Decision::new(true, Reason::NoPolicy, None);
    }
    let host = req.http.and_then(|h| h.host).map(normalize_host);
    let matches = |p: &AuthorizationPolicy, rule: &AuthzRule, deny: bool| {
        let http = req.http.map(|h| Normalized {
            method: h.method,
            path: h.path,
            host: host.as_deref(),
            case_insensitive: p.path.case_insensitive,
        });
        rule_matches(rule, req.source, http.as_ref(), deny)
    };
    for p in &applicable {
        if p.deny.iter().any(|r| matches(p, r, true)) {
            return Decision::new(false, Reason::DenyRule, Some(p));
        }
    }
    if applicable.iter().all(|p| p.allow.is_empty()) {
        return Decision::new(true, Reason::NoDenyMatch, None);
    }
    for p in &applicable {
        if p.allow.iter().any(|r| matches(p, r, false)) {
            return Decision::new(true, Reason::AllowRule, Some(p));
        }
    }
    Decision::new(false, Reason::NoAllowMatch, None)
}

/// A request's attributes in the form rules are compared with.
struct Normalized<'a> {
    method: &'a str,
    /// Canonical.
    path: &'a str,
    host: Option<&'a str>,
    /// The deciding policy folds case for paths.
    case_insensitive: bool,
}

/// `deny` makes missing information count as a match (fail closed).
fn rule_matches(
    rule: &AuthzRule,
    source: Option<&SpiffeId>,
    http: Option<&Normalized<'_>>,
    deny: bool,
) -> bool {
    let from =
        rule.from.is_empty() || source.is_some_and(|id| rule.from.iter().any(|p| p.matches(id)));
    if !from {
        return false;
    }
    let Some(h) = http else {
        return deny || !rule.has_http_conditions();
    };
    let path = rule.paths.is_empty() || {
        let ci = h.case_insensitive;
        let have = path::for_matching(h.path, ci);
        rule.paths
            .iter()
            .any(|p| path_has_prefix(&have, &path::for_matching(p, ci)))
    };
    let method = rule.methods.is_empty()
        || rule
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(h.method));
    let host = rule.hosts.is_empty()
        || match h.host {
            None => deny,
            Some(host) => rule.hosts.iter().any(|pattern| host_matches(pattern, host)),
        };
    path && method && host
}

/// Lower case, without port and trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let no_port = match host.rfind(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    no_port.trim_end_matches('.').to_ascii_lowercase()
}

/// `*.example.com` matches any subdomain; otherwise exact, ignoring case.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests;
