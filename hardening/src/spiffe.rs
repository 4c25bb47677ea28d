//! SPIFFE ID parsing ([`strait_api::SpiffeId::parse`]) against an
//! independent reading of the SPIFFE ID spec (SPIFFE-ID.md 2.1-2.3).
//!
//! Invariants: `parse` accepts a string exactly when [`spec_ok`] does; an
//! accepted ID prints back as the input, re-parses to itself, survives a
//! serde round trip, and its trust domain, path, namespace and service
//! account are the pieces of the input; errors are short.

use strait_api::{SpiffeId, TrustDomain};

/// Checks `parse` on `bytes` (as text) against the spec.
pub fn check(bytes: &[u8]) {
    check_str(&crate::text(bytes));
}

/// [`check`] on a string.
pub fn check_str(s: &str) {
    let parsed = SpiffeId::parse(s);
    let want = spec_ok(s);
    match parsed {
        Ok(id) => {
            assert!(
                want.is_ok(),
                "accepted {s:?}, which breaks a rule: {want:?}"
            );
            check_accepted(s, &id);
        }
        Err(e) => {
            assert!(
                want.is_err(),
                "refused {s:?} ({e}), which satisfies every rule"
            );
            let msg = e.to_string();
            assert!(!msg.is_empty() && msg.len() <= 256, "error too long: {msg}");
        }
    }
}

fn check_accepted(s: &str, id: &SpiffeId) {
    assert_eq!(id.to_string(), s);
    assert_eq!(id.as_str(), s);
    assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(id));
    let rest = &s["spiffe://".len()..];
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert_eq!(id.trust_domain_str(), td);
    assert_eq!(id.path(), path);
    assert_eq!(
        TrustDomain::new(td).map(|t| t.id()),
        SpiffeId::parse(&format!("spiffe://{td}"))
    );
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let (ns, sa) = match segs.as_slice() {
        ["ns", ns, "sa", sa] => (Some(*ns), Some(*sa)),
        _ => (None, None),
    };
    assert_eq!((id.namespace(), id.service_account()), (ns, sa), "{s:?}");
    let yaml = serde_yaml_ng::to_string(id).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let back: SpiffeId = serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    assert_eq!(&back, id);
}

/// The spec's rules, written independently of `strait-api`: `Err` names the
/// first rule `s` breaks.
pub fn spec_ok(s: &str) -> Result<(), &'static str> {
    if s.len() > 2048 {
        return Err("longer than 2048 bytes");
    }
    let rest = s
        .strip_prefix("spiffe://")
        .ok_or("scheme is not spiffe://")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.is_empty() || td.len() > 255 {
        return Err("trust domain is empty or longer than 255 bytes");
    }
    let td_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if !td.bytes().all(td_char) {
        return Err("trust domain character");
    }
    if path.is_empty() {
        return Ok(());
    }
    let path_char = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err("empty segment or trailing slash");
        }
        if seg == "." || seg == ".." {
            return Err("dot segment");
        }
        if !seg.bytes().all(path_char) {
            return Err("path character");
        }
    }
    Ok(())
}
