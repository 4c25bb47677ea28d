use strait_api::SpiffeId;
use strait_api::snapshot::{AuthorizationPolicy, AuthzRule, EscapedSlashes, PathPolicy};

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
        path: PathPolicy::default(),
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

/// Every form of a path that canonicalizes onto `/admin` is denied (or
/// refused as ambiguous), whatever the escaped-slash opt-in.
#[test]
fn deny_on_admin_cannot_be_bypassed() {
    let web = id(WEB);
    for slashes in [
        EscapedSlashes::Reject,
        EscapedSlashes::Decode,
        EscapedSlashes::Keep,
    ] {
        let mut policies = admin_policies();
        policies[0].path.escaped_slashes = slashes;
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
            "/x/..;/admin",
            "/admin;x",
            "/admin%2f",
            "\\admin",
        ] {
            let got = authorize(&policies, &http(Some(&web), "GET", path));
            let denied = match &got {
                Err(_) => true,
                Ok(a) => !a.decision.allowed && a.decision.reason == Reason::DenyRule,
            };
            // `keep` makes `%2Fadmin` one segment: not `/admin`, to rules
            // or to the app (which gets it encoded).
            let kept = slashes == EscapedSlashes::Keep && path.to_ascii_uppercase().contains("%2F");
            assert!(denied || kept, "{path} {slashes:?} -> {got:?}");
            if let Ok(Authorized { path: Some(p), .. }) = &got {
                assert!(!p.contains("//") && !p.contains("/../"), "{path} -> {p}");
            }
        }
    }
}

#[test]
fn authorize_hands_back_the_canonical_path_it_decided_on() {
    let policies = admin_policies();
    let web = id(WEB);
    let a = authorize(&policies, &http(Some(&web), "GET", "/shop/./a/../%62//c")).unwrap();
    assert!(a.decision.allowed);
    assert_eq!(a.path.as_deref(), Some("/shop/b/c"));
    // Without any policy the path is still canonicalized (and refused
    // when it has no canonical form): the app never sees another form.
    let a = authorize(&[], &http(None, "GET", "/x/../y")).unwrap();
    assert_eq!(
        (a.decision.reason, a.path.as_deref()),
        (Reason::NoPolicy, Some("/y"))
    );
    assert_eq!(
        authorize(&[], &http(None, "GET", "/a%2fb")),
        Err(PathError::EscapedSlash(2))
    );
    // Opaque TCP has no path.
    let tcp = Request {
        port: 80,
        source: Some(&web),
        http: None,
    };
    assert_eq!(authorize(&policies, &tcp).unwrap().path, None);
}

#[test]
fn case_insensitive_policies_fold_case_for_matching_only() {
    let web = id(WEB);
    for (ci, path, allowed, forwarded) in [
        (false, "/ADMIN", true, "/ADMIN"),
        (true, "/ADMIN", false, "/ADMIN"),
        (true, "/Admin/x", false, "/Admin/x"),
        (true, "/%41dmin", false, "/Admin"),
        (true, "/administrator", true, "/administrator"),
        (true, "/Shop", true, "/Shop"),
    ] {
        let mut policies = admin_policies();
        policies[0].path.case_insensitive = ci;
        // A rule written in upper case matches lower-case requests too.
        if ci {
            policies[0].deny[0].paths = vec!["/ADMIN".into()];
        }
        let a = authorize(&policies, &http(Some(&web), "GET", path)).unwrap();
        assert_eq!(
            (a.decision.allowed, a.path.as_deref()),
            (allowed, Some(forwarded)),
            "ci={ci} {path}"
        );
    }
}

#[test]
fn the_first_policy_covering_a_port_sets_its_path_handling() {
    let mut policies = admin_policies();
    policies[0].ports = vec![81];
    policies[0].path.escaped_slashes = EscapedSlashes::Decode;
    assert_eq!(
        path_policy(&policies, 81).escaped_slashes,
        EscapedSlashes::Decode
    );
    assert_eq!(path_policy(&policies, 80), PathPolicy::default());
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
    ];
    for (req, allowed, label) in cases {
        let d = evaluate(&policies, &req);
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
    let d = evaluate(&policies, &req);
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: Reason::NoPolicy,
            policy: None
        }
    );
    assert!(evaluate(&[], &http(None, "GET", "/")).allowed);
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
        let d = evaluate(&policies, &http(Some(src), "GET", path));
        assert_eq!(d.allowed, want, "{src} {path}: {d:?}");
    }
    let d = evaluate(&policies, &http(Some(&web), "GET", "/"));
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
    let d = evaluate(&policies, &http(Some(&web), "GET", "/"));
    assert_eq!((d.allowed, d.reason), (true, Reason::NoDenyMatch));
    let d = evaluate(&policies, &http(Some(&guest), "GET", "/"));
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
    let d = evaluate(&policies, &tcp(Some(&guest)));
    assert_eq!((d.allowed, d.reason.label()), (false, "deny_rule"));
    // The allow rule's path cannot be checked: it does not match.
    let d = evaluate(&policies, &tcp(Some(&web)));
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
        assert_eq!(evaluate(&policies, &req).allowed, want, "{host:?}");
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
    ];
    for (r, label) in cases {
        assert_eq!(r.label(), label);
    }
}
