//! Request path canonicalization ([`strait_proxy::path::canonicalize`]),
//! the form the destination sidecar authorizes and forwards.
//!
//! Invariants, for any input and every path policy: no panic; a refusal's
//! message is short and its reason label is one of the documented ones; a
//! canonical path is absolute, has no empty, `.` or `..` segment, no raw
//! control byte, space, `\`, or non-ASCII byte, no percent-encoded
//! unreserved character, upper-case hex in every escape, no `%2F`/`%5C`
//! unless the policy keeps them, no `;` unless the policy keeps it, and
//! canonicalizes to itself (idempotent).

use strait_api::snapshot::{EscapedSlashes, PathParameters, PathPolicy};
use strait_proxy::path::canonicalize;

/// Every combination of the opt-ins that change the canonical form.
pub fn policies() -> impl Iterator<Item = PathPolicy> {
    [
        EscapedSlashes::Reject,
        EscapedSlashes::Decode,
        EscapedSlashes::Keep,
    ]
    .into_iter()
    .flat_map(|escaped_slashes| {
        [PathParameters::Reject, PathParameters::Keep]
            .into_iter()
            .map(move |parameters| PathPolicy {
                escaped_slashes,
                parameters,
                case_insensitive: false,
            })
    })
}

/// The reason labels a refusal may carry (`strait-error` values).
pub const REASONS: &[&str] = &[
    "path_empty",
    "path_not_absolute",
    "path_bad_percent",
    "path_escaped_slash",
    "path_backslash",
    "path_parameter",
    "path_control_byte",
];

/// Checks canonicalization of `bytes` (as text) under every policy.
pub fn check(bytes: &[u8]) {
    check_str(&crate::text(bytes));
}

/// [`check`] on a string.
pub fn check_str(raw: &str) {
    for policy in policies() {
        match canonicalize(raw, policy) {
            Ok(c) => {
                check_canonical(&c, policy);
                assert_eq!(
                    canonicalize(&c, policy).as_ref(),
                    Ok(&c),
                    "not idempotent: {raw:?} -> {c:?} under {policy:?}"
                );
            }
            Err(e) => {
                assert!(REASONS.contains(&e.reason()), "{raw:?}: {e:?}");
                let msg = e.to_string();
                assert!(!msg.is_empty() && msg.len() <= 200, "{msg}");
            }
        }
    }
}

/// What holds for every canonical path under `policy`.
pub fn check_canonical(p: &str, policy: PathPolicy) {
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.contains("//"), "empty segment in {p:?}");
    for seg in p.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "dot segment in {p:?}");
    }
    assert!(
        p.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'\\'),
        "raw byte left in {p:?}"
    );
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = &b[i + 1..i + 3];
            assert!(
                hex.iter()
                    .all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()),
                "lower-case or bad escape in {p:?}"
            );
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            let unreserved = v.is_ascii_alphanumeric() || b"-._~".contains(&v);
            assert!(!unreserved, "encoded unreserved {v:#04x} in {p:?}");
            assert!(v > 0x1f && v != 0x7f, "encoded control {v:#04x} in {p:?}");
            if policy.escaped_slashes != EscapedSlashes::Keep {
                assert!(v != b'/' && v != b'\\', "escaped slash in {p:?}");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    if policy.parameters == PathParameters::Reject {
        assert!(!p.contains(';'), "parameter in {p:?}");
    }
}
