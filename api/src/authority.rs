//! `name.namespace:port`: how sidecars and gateways name a service port on
//! the wire (`strait-dst`, `CONNECT` authorities). One canonical form, one
//! parser.

/// Parses `name.namespace:port` in canonical form only: both names are DNS
/// labels (lower-case letters, digits, '-', at most 63 characters, starting
/// with a letter or digit and not ending with '-'), the port is 1..=65535
/// in plain decimal without sign or leading zeros.
pub fn parse_service_authority(s: &str) -> Option<(&str, &str, u16)> {
    let (svc, port) = s.rsplit_once(':')?;
    let (name, ns) = svc.split_once('.')?;
    if !crate::label::is_dns_label(name) || !crate::label::is_dns_label(ns) {
        return None;
    }
    if port.is_empty()
        || port.len() > 5
        || port.starts_with('0')
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    Some((name, ns, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_canonical_form() {
        assert_eq!(
            parse_service_authority("web.default:8080"),
            Some(("web", "default", 8080))
        );
        assert_eq!(parse_service_authority("a-1.b2:1"), Some(("a-1", "b2", 1)));
        for bad in [
            "web:8080",
            "web.default",
            "web.a.b:1",
            "web.default:99999",
            "web.default:+80",
            "web.default:080",
            "web.de:fault:80",
            "we b.default:80",
            "web.default :80",
            "Web.default:80",
            ".default:80",
            "web.:80",
            "web.default:0",
            "web.default:",
            "-web.default:80",
        ] {
            assert_eq!(parse_service_authority(bad), None, "{bad}");
        }
    }
}
