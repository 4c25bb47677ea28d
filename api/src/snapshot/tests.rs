use super::*;

/// Every snapshot field set (also a seed of `strait-hardening`'s YAML
/// checks).
const GOOD: &str = include_str!("testdata/full.yaml");

fn good() -> Snapshot {
    Snapshot::from_yaml(GOOD).unwrap_or_else(|e| panic!("{e}"))
}

/// Applies `edit` to the good snapshot and returns the validation error.
fn invalid(edit: impl FnOnce(&mut Snapshot)) -> SnapshotError {
    let mut s = good();
    edit(&mut s);
    s.validate().expect_err("edited snapshot should be invalid")
}

fn yaml_err(yaml: &str) -> String {
    Snapshot::from_yaml(yaml)
        .expect_err("should not parse")
        .to_string()
}

#[test]
fn parses_a_full_snapshot_with_its_values() {
    let s = good();
    assert_eq!(s.version, 7);
    assert_eq!(s.local.locality.zone, "us-east-1a");
    let web = s.service("shop", "web").unwrap();
    assert_eq!(web.port(9090).unwrap().protocol, Protocol::Grpc);
    assert_eq!(web.endpoints[1].health, Health::Stale);
    assert_eq!(web.endpoints[1].weight, 3);
    assert_eq!(web.routes[0].timeout, Duration::from_millis(250));
    assert_eq!(
        web.routes[0].retry.retry_on,
        [RetryOn::ConnectFailure, RetryOn::ServerError]
    );
    assert_eq!(web.routes[0].retry.budget.window, Duration::from_secs(30));
    assert_eq!(web.traffic.distribute[0].to.len(), 2);
    assert_eq!(web.outlier_detection.consecutive_failures, 3);
    assert_eq!(
        web.outlier_detection.max_ejection_time,
        Duration::from_secs(300)
    );
    assert!(matches!(
        web.authorization[0].deny[0].from[0],
        PrincipalPattern::Namespace { .. }
    ));
    assert_eq!(
        web.authorization[0].path,
        PathPolicy {
            escaped_slashes: EscapedSlashes::Decode,
            parameters: PathParameters::Keep,
            case_insensitive: true,
        }
    );
}

#[test]
fn fills_defaults_for_a_minimal_snapshot() {
    let s = Snapshot::from_yaml(
            "version: 1\nlocal: { cluster: east }\nservices:\n  - { name: db, vip: 127.77.0.2, ports: [{ port: 5432, protocol: tcp }] }\n",
        )
        .unwrap();
    let db = &s.services[0];
    assert_eq!(db.namespace, "default");
    assert!(db.endpoints.is_empty());
    assert_eq!(db.traffic.overprovisioning_factor, 1.4);
    assert_eq!(db.traffic.load_balancer, LoadBalancer::P2cEwma);
    let r = db.route_for("/x");
    assert_eq!(r.timeout, Duration::from_secs(15));
    assert_eq!(r.retry.attempts, 2);
    assert_eq!(r.retry.budget.percent, 20.0);
    assert_eq!(db.outlier_detection, OutlierDetection::default());
}

#[test]
fn round_trips_through_yaml() {
    let s = good();
    let text = serde_yaml_ng::to_string(&s).unwrap();
    assert_eq!(Snapshot::from_yaml(&text).unwrap(), s);
}

#[test]
fn rejects_unknown_fields_naming_them() {
    let e = yaml_err("version: 1\nlocal: { cluster: east }\nextra: 1\n");
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = yaml_err(&GOOD.replace("weight: 3", "weight: 3\n        wieght: 3"));
    assert!(e.contains("wieght"), "{e}");
}

#[test]
fn rejects_negative_weights_at_parse_naming_the_path() {
    let e = yaml_err(&GOOD.replace("\"us-west/*\": 20", "\"us-west/*\": -20"));
    assert!(e.contains("services[0].traffic.distribute[0].to"), "{e}");
    assert!(e.contains("-20"), "{e}");
    let e = yaml_err(&GOOD.replace("weight: 3", "weight: -3"));
    assert!(e.contains("endpoints[1].weight") && e.contains("-3"), "{e}");
}

#[test]
fn rejects_bad_scalars_at_parse() {
    for (from, to, needle) in [
        ("protocol: grpc", "protocol: quic", "quic"),
        ("health: stale", "health: sick", "sick"),
        ("timeout: 250ms", "timeout: 250", "invalid duration"),
        ("timeout: 250ms", "timeout: 2 s", "invalid duration"),
        ("vip: 127.77.0.10", "vip: nope", "vip"),
        ("cluster: west\n", "cluster: West\n", "West"),
        ("/ns/guest/*", "/ns/guest/sa/*", "'*'"),
        (
            "\"us-west/*\": 20",
            "\"us-west/*/x\": 20",
            "distribute[0].to",
        ),
    ] {
        assert!(GOOD.contains(from), "{from}");
        let e = yaml_err(&GOOD.replacen(from, to, 1));
        assert!(e.contains(needle), "{to}: {e}");
    }
}

#[test]
fn validation_errors_name_the_field_and_value() {
    type Edit = fn(&mut Snapshot);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "duplicate service",
            |s| s.services.push(s.services[0].clone()),
            "services[1].name: duplicate service \"shop/web\"",
        ),
        (
            "duplicate vip",
            |s| {
                let mut other = s.services[0].clone();
                other.name = "api".into();
                s.services.push(other);
            },
            "services[1].vip: duplicate vip \"127.77.0.10\"",
        ),
        (
            "bad service name",
            |s| s.services[0].name = "Web".into(),
            "services[0].name: \"Web\" is invalid: must be a dns label",
        ),
        (
            "vip off loopback",
            |s| s.services[0].vip = "10.0.0.1".parse().unwrap(),
            "services[0].vip: \"10.0.0.1\" is invalid: must be in 127.0.0.0/8",
        ),
        (
            "vip is localhost",
            |s| s.services[0].vip = "127.0.0.1".parse().unwrap(),
            "host's own loopback",
        ),
        (
            "vip is ipv6",
            |s| s.services[0].vip = "::1".parse().unwrap(),
            "ipv4 loopback",
        ),
        (
            "vip is broadcast",
            |s| s.services[0].vip = "127.77.0.255".parse().unwrap(),
            ".255",
        ),
        (
            "no ports",
            |s| s.services[0].ports.clear(),
            "services[0].ports",
        ),
        (
            "port zero",
            |s| s.services[0].ports[0].port = 0,
            "ports[0].port",
        ),
        (
            "duplicate port",
            |s| s.services[0].ports[1].port = 80,
            "services[0].ports[1].port: duplicate port \"80\"",
        ),
        (
            "duplicate endpoint",
            |s| {
                let ep = s.services[0].endpoints[0].clone();
                s.services[0].endpoints.push(ep);
            },
            "endpoints[2].address: duplicate endpoint \"10.0.0.1:15006\"",
        ),
        (
            "unknown endpoint cluster",
            |s| s.services[0].endpoints[1].cluster = ClusterName::new("north").unwrap(),
            "services[0].endpoints[1].cluster: cluster \"north\" is not known; known clusters: central, east, west",
        ),
        (
            "weight zero",
            |s| s.services[0].endpoints[0].weight = 0,
            "endpoints[0].weight: \"0\" is invalid",
        ),
        (
            "weight too big",
            |s| s.services[0].endpoints[0].weight = 5000,
            "between 1 and 1000",
        ),
        (
            "remote without gateway",
            |s| s.services[0].endpoints[1].gateways.clear(),
            "endpoints[1].gateways",
        ),
        (
            "local with gateway",
            |s| {
                s.services[0].endpoints[0]
                    .gateways
                    .push("192.0.2.1:1".parse().unwrap())
            },
            "endpoints[0].gateways",
        ),
        (
            "unknown failover cluster",
            |s| {
                s.services[0]
                    .traffic
                    .failover
                    .push(ClusterName::new("north").unwrap())
            },
            "traffic.failover[2]: cluster \"north\" is not known",
        ),
        (
            "duplicate failover cluster",
            |s| {
                s.services[0]
                    .traffic
                    .failover
                    .push(ClusterName::new("west").unwrap())
            },
            "traffic.failover[2]: duplicate cluster \"west\"",
        ),
        (
            "weights not summing",
            |s| {
                s.services[0].traffic.distribute[0]
                    .to
                    .insert("us-central/*".parse().unwrap(), 5);
            },
            "traffic.distribute[0].to: weights sum to 105; they must sum to 100",
        ),
        (
            "empty distribute",
            |s| s.services[0].traffic.distribute[0].to.clear(),
            "distribute[0].to",
        ),
        (
            "duplicate from",
            |s| {
                let d = s.services[0].traffic.distribute[0].clone();
                s.services[0].traffic.distribute.push(d);
            },
            "distribute[1].from: duplicate pattern \"us-east/*\"",
        ),
        (
            "factor below one",
            |s| s.services[0].traffic.overprovisioning_factor = 0.5,
            "overprovisioning_factor: \"0.5\"",
        ),
        (
            "factor nan",
            |s| s.services[0].traffic.overprovisioning_factor = f64::NAN,
            "overprovisioning_factor",
        ),
        (
            "too many attempts",
            |s| s.services[0].routes[0].retry.attempts = 11,
            "routes[0].retry.attempts: \"11\"",
        ),
        (
            "budget over 100",
            |s| s.services[0].routes[0].retry.budget.percent = 150.0,
            "retry.budget.percent: \"150\"",
        ),
        (
            "zero timeout",
            |s| s.services[0].routes[0].timeout = Duration::ZERO,
            "routes[0].timeout",
        ),
        (
            "route prefix not normalized",
            |s| s.services[0].routes[0].path_prefix = "/a/../b".into(),
            "path_prefix: \"/a/../b\"",
        ),
        (
            "duplicate route",
            |s| {
                let r = s.services[0].routes[0].clone();
                s.services[0].routes.push(r);
            },
            "routes[1].path_prefix: duplicate route prefix",
        ),
        (
            "ejection percent",
            |s| s.services[0].outlier_detection.max_ejection_percent = 101,
            "max_ejection_percent",
        ),
        (
            "max below base",
            |s| s.services[0].outlier_detection.max_ejection_time = Duration::from_secs(1),
            "max_ejection_time: \"1s\"",
        ),
        (
            "duplicate linked cluster",
            |s| s.clusters.push(ClusterName::new("east").unwrap()),
            "clusters[2]: duplicate cluster \"east\"",
        ),
        (
            "policy port unknown",
            |s| s.services[0].authorization[0].ports = vec![81],
            "authorization[0].ports[0]: \"81\"",
        ),
        (
            "policy path not normalized",
            |s| s.services[0].authorization[0].deny[0].paths = vec!["//admin".into()],
            "authorization[0].deny[0].paths[0]: \"//admin\"",
        ),
        (
            "policy path encoded",
            |s| s.services[0].authorization[0].deny[0].paths = vec!["/%61dmin".into()],
            "deny[0].paths[0]",
        ),
        (
            "policy method lower",
            |s| s.services[0].authorization[0].allow[0].methods = vec!["get".into()],
            "allow[0].methods[0]: \"get\"",
        ),
        (
            "duplicate policy",
            |s| {
                let p = s.services[0].authorization[0].clone();
                s.services[0].authorization.push(p);
            },
            "authorization[1].name: duplicate policy \"admin\"",
        ),
        (
            "http rule on tcp port",
            |s| s.services[0].ports[0].protocol = Protocol::Tcp,
            "authorization[0].deny[0]: \"tcp\"",
        ),
        (
            "policies on one port disagree on path handling",
            |s| {
                let mut p = s.services[0].authorization[0].clone();
                p.name = "keep-slashes".into();
                p.ports = Vec::new();
                p.path.escaped_slashes = EscapedSlashes::Keep;
                s.services[0].authorization.push(p);
            },
            "authorization[1].path: \"keep-slashes\"",
        ),
    ];
    for (name, edit, needle) in cases {
        let e = invalid(*edit).to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
}

#[test]
fn errors_expose_the_field() {
    let e = invalid(|s| s.services[0].endpoints[0].weight = 0);
    assert_eq!(e.field(), Some("services[0].endpoints[0].weight"));
}

#[test]
fn authorization_is_checked_alone_and_against_the_service_ports() {
    let svc = good().services[0].clone();
    let mut p = svc.authorization.clone();
    p[0].ports = vec![81];
    // Without the service, a port cannot be judged; with it, it is.
    validate_authorization("authorization", &p, None).unwrap();
    let e = validate_authorization("authorization", &p, Some(&svc.ports)).unwrap_err();
    assert_eq!(e.field(), Some("authorization[0].ports[0]"));
    p[0].ports = vec![0];
    let e = validate_authorization("authorization", &p, None).unwrap_err();
    assert_eq!(e.field(), Some("authorization[0].ports[0]"));
    p[0].ports.clear();
    p[0].deny[0].paths = vec!["/a/../b".into()];
    let e = validate_authorization("authorization", &p, None).unwrap_err();
    assert_eq!(e.field(), Some("authorization[0].deny[0].paths[0]"));
    assert!(e.to_string().contains("\"/a/../b\""), "{e}");
}

#[test]
fn principal_patterns_match_exact_namespace_and_trust_domain() {
    let id = SpiffeId::parse("spiffe://strait.local/ns/shop/sa/web").unwrap();
    let cases = [
        ("*", true),
        ("spiffe://strait.local/*", true),
        ("spiffe://other.local/*", false),
        ("spiffe://strait.local/ns/shop/*", true),
        ("spiffe://strait.local/ns/sho/*", false),
        ("spiffe://other.local/ns/shop/*", false),
        ("spiffe://strait.local/ns/shop/sa/web", true),
        ("spiffe://strait.local/ns/shop/sa/api", false),
    ];
    for (pattern, want) in cases {
        let p: PrincipalPattern = pattern.parse().unwrap();
        assert_eq!(p.matches(&id), want, "{pattern}");
        assert_eq!(p.to_string(), pattern);
    }
    for bad in [
        "spiffe://td/ns/a/sa/*",
        "spiffe://td/x/*",
        "spiffe://td/ns/*",
        "td/*",
    ] {
        assert!(bad.parse::<PrincipalPattern>().is_err(), "{bad}");
    }
}

#[test]
fn locality_patterns_match_with_trailing_wildcards() {
    let l: Locality = "us-east/us-east-1a".parse().unwrap();
    for (pattern, want, shown) in [
        ("*", true, "*"),
        ("us-east/*", true, "us-east/*"),
        ("us-east", true, "us-east/*"),
        ("us-east/us-east-1a/*", true, "us-east/us-east-1a/*"),
        ("us-east/us-east-1b", false, "us-east/us-east-1b/*"),
        ("us-west/*", false, "us-west/*"),
        ("us-east/us-east-1a/s1", false, "us-east/us-east-1a/s1"),
    ] {
        let p: LocalityPattern = pattern.parse().unwrap();
        assert_eq!(p.matches(&l), want, "{pattern}");
        assert_eq!(p.to_string(), shown);
    }
    for bad in ["", "/*", "us-east*", "us-east/*/x", "US/*", "a/b/c/d"] {
        assert!(bad.parse::<LocalityPattern>().is_err(), "{bad}");
    }
}

#[test]
fn route_for_takes_the_longest_segment_prefix() {
    let mut svc = good().services.remove(0);
    svc.routes.push(Route {
        path_prefix: "/api/v2".into(),
        timeout: Duration::from_secs(1),
        ..Route::default()
    });
    assert_eq!(svc.route_for("/api/v2/x").timeout, Duration::from_secs(1));
    assert_eq!(svc.route_for("/api/v1").timeout, Duration::from_millis(250));
    assert_eq!(svc.route_for("/apix").timeout, Duration::from_secs(15));
    assert!(path_has_prefix("/a/b", "/"));
    assert!(path_has_prefix("/a/", "/a/"));
    assert!(!path_has_prefix("/a", "/a/"));
}

#[test]
fn durations_parse_and_print() {
    for (s, ms) in [
        ("250ms", 250),
        ("15s", 15_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
    ] {
        assert_eq!(
            duration_str::parse(s),
            Some(Duration::from_millis(ms)),
            "{s}"
        );
    }
    for bad in ["", "s", "10", "1.5s", "-1s", "10 s", "1w", "1D"] {
        assert_eq!(duration_str::parse(bad), None, "{bad}");
    }
    assert_eq!(duration_str::format(Duration::from_millis(1500)), "1500ms");
    assert_eq!(duration_str::format(Duration::from_secs(30)), "30s");
}
