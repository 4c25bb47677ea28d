use strait_api::SpiffeId;
use strait_api::snapshot::{AuthorizationPolicy, AuthzRule};

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn rule(from: &[&str], paths: &[&str], methods: &[&str]) -> AuthzRule {
    AuthzRule {
        from: from.iter().map(|p| p.parse().unwrap()).collect(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        hosts: Vec::new(),
    }
}

fn policy(
    name: &str,
    ports: &[u16],
    deny: Vec<AuthzRule>,
    allow: Vec<AuthzRule>,
) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.to_owned(),
        ports: ports.to_vec(),
        deny,
        allow,
    }
}

const WEB: &str = "spiffe://strait.local/ns/shop/sa/web";
const GUEST: &str = "spiffe://strait.local/ns/guest/sa/bot";
const OTHER_TD: &str = "spiffe://other.local/ns/shop/sa/web";

/// Deny `/admin` to everyone; allow GET and POST from the mesh.
fn admin_policies() -> Vec<AuthorizationPolicy> {
    vec![policy(
        "admin",
        &[80],
        vec![rule(&[], &["/admin"], &[])],
        vec![rule(&["spiffe://strait.local/*"], &[], &["GET", "POST"])],
    )]
}

fn http<'a>(source: Option<&'a SpiffeId>, method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        port: 80,
        source,
        http: Some(HttpRequest {
            method,
            path,
            host: Some("web.shop.svc.clusterset.local"),
        }),
    }
}

#[test]
fn normalizes_paths() {
    let cases = [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//admin", "/admin"),
        ("/a///b", "/a/b"),
        ("/./admin", "/admin"),
        ("/a/../admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/../../admin", "/admin"),
        ("/a/%2e%2e/admin", "/admin"),
        ("/a/%2E%2E/admin", "/admin"),
        ("/a/.%2e/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%7euser", "/~user"),
        ("/a%20b", "/a%20b"),
        ("/a%3cb", "/a%3Cb"),
        ("/%252e%252e/admin", "/%252e%252e/admin"),
        ("/admin?x=/y", "/admin"),
        ("/admin#frag", "/admin"),
        ("/x/..;/admin", "/admin"),
        ("/admin;jsessionid=1/x", "/admin/x"),
    ];
    for (raw, want) in cases {
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Reject).as_deref(),
            Ok(want),
            "{raw}"
        );
    }
}

#[test]
fn rejects_or_normalizes_escaped_slashes() {
    for (raw, normalized) in [
        ("/%2Fadmin", "/admin"),
        ("/%2fadmin", "/admin"),
        ("/a%5C..%5Cadmin", "/admin"),
        ("\\admin", "/admin"),
        ("/a\\..\\admin", "/admin"),
    ] {
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Reject),
            Err(PathError::EscapedSlash),
            "{raw}"
        );
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Normalize).as_deref(),
            Ok(normalized),
            "{raw}"
        );
    }
}

#[test]
fn refuses_malformed_paths() {
    let cases = [
        ("", PathError::Empty),
        ("?a", PathError::Empty),
        ("admin", PathError::NotAbsolute("admin".into())),
        ("*", PathError::NotAbsolute("*".into())),
        ("/a%2", PathError::BadPercent(2)),
        ("/a%zz", PathError::BadPercent(2)),
        ("/a%+1", PathError::BadPercent(2)),
        ("/a%00", PathError::BadByte(0)),
        ("/a b", PathError::BadByte(b' ')),
        ("/a\tb", PathError::BadByte(b'\t')),
        ("/é", PathError::BadByte(0xc3)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Normalize),
            Err(want),
            "{raw:?}"
        );
    }
}

#[test]
fn deny_on_admin_cannot_be_bypassed() {
    let policies = admin_policies();
    let web = id(WEB);
    for path in [
        "/admin",
        "/admin/",
        "/admin/users",
        "//admin",
        "///admin//x",
        "/%2Fadmin",
        "/a/%2e%2e/admin",
        "/a/../admin",
        "/./admin",
        "/%61dmin",
        "/admin?debug=1",
        "/x/..;/admin",
        "/admin;x",
        "\\admin",
    ] {
        for slashes in [EscapedSlashes::Reject, EscapedSlashes::Normalize] {
            let d = evaluate(&policies, &http(Some(&web), "GET", path), slashes);
            assert!(!d.allowed, "{path} {slashes:?} -> {d:?}");
            assert!(
                matches!(d.reason, Reason::DenyRule | Reason::BadPath(_)),
                "{path}: {d:?}"
            );
        }
    }
}

#[test]
fn evaluates_deny_then_allow_then_default() {
    let policies = admin_policies();
    let (web, guest, other) = (id(WEB), id(GUEST), id(OTHER_TD));
    let cases = [
        (http(Some(&web), "GET", "/shop"), true, "allow_rule"),
        (http(Some(&guest), "POST", "/cart"), true, "allow_rule"),
        (http(Some(&web), "get", "/shop"), true, "allow_rule"),
        (
            http(Some(&web), "GET", "/administrator"),
            true,
            "allow_rule",
        ),
        (http(Some(&web), "DELETE", "/shop"), false, "no_allow_match"),
        (http(Some(&other), "GET", "/shop"), false, "no_allow_match"),
        (http(None, "GET", "/shop"), false, "no_allow_match"),
        (http(Some(&web), "GET", "/admin"), false, "deny_rule"),
        (http(Some(&web), "GET", "/%zz"), false, "bad_path"),
    ];
    for (req, allowed, label) in cases {
        let d = evaluate(&policies, &req, EscapedSlashes::Reject);
        assert_eq!((d.allowed, d.reason.label()), (allowed, label), "{req:?}");
    }
}

#[test]
fn no_policy_for_the_port_allows() {
    let policies = admin_policies();
    let web = id(WEB);
    let req = Request {
        port: 9090,
        ..http(Some(&web), "GET", "/admin")
    };
    let d = evaluate(&policies, &req, EscapedSlashes::Reject);
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: Reason::NoPolicy,
            policy: None
        }
    );
    // Even a malformed path: no policy, nothing to protect here.
    let req = Request {
        port: 9090,
        ..http(None, "GET", "/%zz")
    };
    assert!(evaluate(&policies, &req, EscapedSlashes::Reject).allowed);
    assert!(evaluate(&[], &http(None, "GET", "/"), EscapedSlashes::Reject).allowed);
}

#[test]
fn principal_patterns_select_sources() {
    let policies = vec![policy(
        "ns",
        &[],
        vec![rule(&["spiffe://strait.local/ns/guest/*"], &[], &[])],
        vec![
            rule(&[WEB], &[], &[]),
            rule(&["spiffe://other.local/*"], &["/public"], &[]),
        ],
    )];
    let (web, guest, other) = (id(WEB), id(GUEST), id(OTHER_TD));
    let api = id("spiffe://strait.local/ns/shop/sa/api");
    let cases = [
        (&web, "/x", true),
        (&api, "/x", false),
        (&guest, "/x", false),
        (&other, "/public/a", true),
        (&other, "/private", false),
    ];
    for (src, path, want) in cases {
        let d = evaluate(
            &policies,
            &http(Some(src), "GET", path),
            EscapedSlashes::Reject,
        );
        assert_eq!(d.allowed, want, "{src} {path}: {d:?}");
    }
    let d = evaluate(
        &policies,
        &http(Some(&web), "GET", "/"),
        EscapedSlashes::Reject,
    );
    assert_eq!(d.policy.as_deref(), Some("ns"));
}

#[test]
fn deny_only_policies_allow_what_they_do_not_deny() {
    let policies = vec![policy(
        "block-guests",
        &[],
        vec![rule(&["spiffe://strait.local/ns/guest/*"], &[], &[])],
        vec![],
    )];
    let (web, guest) = (id(WEB), id(GUEST));
    let d = evaluate(
        &policies,
        &http(Some(&web), "GET", "/"),
        EscapedSlashes::Reject,
    );
    assert_eq!((d.allowed, d.reason), (true, Reason::NoDenyMatch));
    let d = evaluate(
        &policies,
        &http(Some(&guest), "GET", "/"),
        EscapedSlashes::Reject,
    );
    assert_eq!(
        (d.allowed, d.reason, d.policy.as_deref()),
        (false, Reason::DenyRule, Some("block-guests"))
    );
}

#[test]
fn tcp_connections_fail_closed_on_http_only_rules() {
    let policies = vec![policy(
        "mixed",
        &[],
        vec![rule(
            &["spiffe://strait.local/ns/guest/*"],
            &["/admin"],
            &[],
        )],
        vec![
            rule(&[WEB], &["/api"], &[]),
            rule(&["spiffe://strait.local/ns/guest/*"], &[], &[]),
        ],
    )];
    let (web, guest) = (id(WEB), id(GUEST));
    let tcp = |source| Request {
        port: 5432,
        source,
        http: None,
    };
    // The deny rule's path cannot be checked: it matches on source alone.
    let d = evaluate(&policies, &tcp(Some(&guest)), EscapedSlashes::Reject);
    assert_eq!((d.allowed, d.reason.label()), (false, "deny_rule"));
    // The allow rule's path cannot be checked: it does not match.
    let d = evaluate(&policies, &tcp(Some(&web)), EscapedSlashes::Reject);
    assert_eq!((d.allowed, d.reason.label()), (false, "no_allow_match"));
}

#[test]
fn hosts_match_case_insensitively_without_port() {
    let mut r = rule(&[], &[], &[]);
    r.hosts = vec![
        "Web.Shop.svc.clusterset.local".into(),
        "*.example.com".into(),
    ];
    let policies = vec![policy("hosts", &[], vec![], vec![r])];
    let cases = [
        (Some("web.shop.svc.clusterset.local"), true),
        (Some("WEB.SHOP.SVC.CLUSTERSET.LOCAL:80"), true),
        (Some("web.shop.svc.clusterset.local."), true),
        (Some("api.Example.com:8443"), true),
        (Some("example.com"), false),
        (Some("evil-example.com"), false),
        (Some("other.local"), false),
        (None, false),
    ];
    for (host, want) in cases {
        let req = Request {
            port: 80,
            source: None,
            http: Some(HttpRequest {
                method: "GET",
                path: "/",
                host,
            }),
        };
        assert_eq!(
            evaluate(&policies, &req, EscapedSlashes::Reject).allowed,
            want,
            "{host:?}"
        );
    }
}

#[test]
fn normalizes_hosts() {
    for (raw, want) in [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
    ] {
        assert_eq!(normalize_host(raw), want, "{raw}");
    }
}

#[test]
fn reason_labels_are_stable() {
    let cases = [
        (Reason::NoPolicy, "no_policy"),
        (Reason::AllowRule, "allow_rule"),
        (Reason::DenyRule, "deny_rule"),
        (Reason::NoDenyMatch, "no_deny_match"),
        (Reason::NoAllowMatch, "no_allow_match"),
        (Reason::BadPath(PathError::Empty), "bad_path"),
    ];
    for (r, label) in cases {
        assert_eq!(r.label(), label);
    }
}
