//! Inbound authorization: may this peer make this request to this port?
//!
//! Policies come from the snapshot (per service, optionally per port). For a
//! request on a port: with no policy the answer is allow; otherwise deny
//! rules are checked first, then, if any allow rule exists, one must match
//! (default deny); a port whose policies hold only deny rules allows what
//! they do not deny. A rule matches when every condition it sets matches:
//! source identity patterns, path prefixes, methods and hosts.
//!
//! Paths are compared only after [`normalize_path`], so `//admin`,
//! `/%2Fadmin`, `/a/%2e%2e/admin` or `/x/..;/admin` cannot slip past a deny
//! on `/admin`. For opaque TCP there is no request: a deny rule with HTTP
//! conditions then matches on its source alone (fail closed) and an allow
//! rule with HTTP conditions never matches.

use std::fmt::Write as _;

use strait_api::SpiffeId;
use strait_api::snapshot::{AuthorizationPolicy, AuthzRule, path_has_prefix};

/// What is known about an HTTP request, as received.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target's path (query and fragment are ignored).
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

/// What to do with `%2F`, `%5C` and raw `\` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request (the safe default).
    #[default]
    Reject,
    /// Treat them as `/`.
    Normalize,
}

/// Why a path could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} does not start with '/'")]
    NotAbsolute(String),
    #[error("path has a malformed percent-encoding at byte {0}")]
    BadPercent(usize),
    #[error("path has an escaped slash or a backslash")]
    EscapedSlash,
    #[error("path has a forbidden byte {0:#04x}")]
    BadByte(u8),
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
    BadPath(PathError),
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
            Self::BadPath(_) => "bad_path",
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

/// Evaluates a service's policies for one request.
pub fn evaluate(
    policies: &[AuthorizationPolicy],
    req: &Request<'_>,
    slashes: EscapedSlashes,
) -> Decision {
    let applicable: Vec<&AuthorizationPolicy> =
        policies.iter().filter(|p| p.applies_to(req.port)).collect();
    if applicable.is_empty() {
        return Decision::new(true, Reason::NoPolicy, None);
    }
    let http = match req.http.map(|h| Normalized::new(h, slashes)).transpose() {
        Ok(h) => h,
        Err(e) => return Decision::new(false, Reason::BadPath(e), None),
    };
    let matches =
        |rule: &AuthzRule, deny: bool| rule_matches(rule, req.source, http.as_ref(), deny);
    for p in &applicable {
        if p.deny.iter().any(|r| matches(r, true)) {
            return Decision::new(false, Reason::DenyRule, Some(p));
        }
    }
    if applicable.iter().all(|p| p.allow.is_empty()) {
        return Decision::new(true, Reason::NoDenyMatch, None);
    }
    for p in &applicable {
        if p.allow.iter().any(|r| matches(r, false)) {
            return Decision::new(true, Reason::AllowRule, Some(p));
        }
    }
    Decision::new(false, Reason::NoAllowMatch, None)
}

/// A request's attributes in the form rules are compared with.
struct Normalized<'a> {
    method: &'a str,
    path: String,
    host: Option<String>,
}

impl<'a> Normalized<'a> {
    fn new(h: HttpRequest<'a>, slashes: EscapedSlashes) -> Result<Self, PathError> {
        Ok(Self {
            method: h.method,
            path: normalize_path(h.path, slashes)?,
            host: h.host.map(normalize_host),
        })
    }
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
    let path = rule.paths.is_empty() || rule.paths.iter().any(|p| path_has_prefix(&h.path, p));
    let method = rule.methods.is_empty()
        || rule
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(h.method));
    let host = rule.hosts.is_empty()
        || match &h.host {
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

/// Canonical form of a request path for matching:
/// 1. drop the query and fragment;
/// 2. decode percent-encoded unreserved characters (`%61` -> `a`, `%2e` ->
///    `.`), upper-case the hex of the others, refuse bad escapes and `%00`;
/// 3. refuse (or turn into `/`) `%2F`, `%5C` and raw `\`;
/// 4. refuse controls, spaces and non-ASCII bytes;
/// 5. drop `;parameters` from each segment (`/x/..;/admin` is `/admin` to
///    servlet containers);
/// 6. merge slashes and resolve `.` and `..` (never above the root).
pub fn normalize_path(raw: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    let slash = || match slashes {
        EscapedSlashes::Reject => Err(PathError::EscapedSlash),
        EscapedSlashes::Normalize => Ok('/'),
    };
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let v = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadPercent(i))?;
                match v {
                    b'/' | b'\\' => decoded.push(slash()?),
                    0 => return Err(PathError::BadByte(0)),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        decoded.push(char::from(v));
                    }
                    v => {
                        let _ = write!(decoded, "%{v:02X}");
                    }
                }
                i += 3;
            }
            b'\\' => {
                decoded.push(slash()?);
                i += 1;
            }
            0x21..=0x7e => {
                decoded.push(char::from(b));
                i += 1;
            }
            _ => return Err(PathError::BadByte(b)),
        }
    }
    if !decoded.starts_with('/') {
        return Err(PathError::NotAbsolute(path.chars().take(64).collect()));
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or_default();
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
