//! DNS labels, the one rule for every name Strait puts in a DNS name or an
//! authority: service names, namespaces, DNS views, export tables.

/// An RFC 1123 label: 1 to 63 of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A service name or namespace: a DNS label that starts with a letter (as
/// Kubernetes requires of Service names).
pub fn is_service_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// What [`is_service_label`] requires, for error messages.
pub const SERVICE_LABEL_RULE: &str =
    "must be a dns label: lower-case letters, digits and '-', starting with a letter";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_rfc_1123_and_services_start_with_a_letter() {
        for ok in ["a", "web", "web-2", "a1", &"x".repeat(63)] {
            assert!(is_dns_label(ok) && is_service_label(ok), "{ok}");
        }
        assert!(is_dns_label("1web") && !is_service_label("1web"));
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"x".repeat(64)] {
            assert!(!is_dns_label(bad) && !is_service_label(bad), "{bad:?}");
        }
    }
}
