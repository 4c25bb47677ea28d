use super::*;

#[test]
fn mutual_trust_follows_the_roots_not_the_bundle_text() {
    use strait_api::{ClusterName, SpiffeId, TrustDomain};
    let tmp = tempfile::tempdir().unwrap();
    let (d, day) = (tmp.path(), Duration::from_secs(86400));
    let td = TrustDomain::new("strait.local").unwrap();
    let root = |name: &str| {
        let ca = strait_ca::CaDir::init(&d.join(name), &td, day).unwrap();
        for c in ["east", "west"] {
            ca.new_intermediate(&ClusterName::new(c).unwrap(), day)
                .unwrap();
        }
        ca
    };
    let issue = |ca: &strait_ca::CaDir, c: &str| {
        let id = SpiffeId::parse(&format!(
            "spiffe://strait.local/ns/strait-system/sa/controller-{c}"
        ))
        .unwrap();
        ca.issue(
            &ClusterName::new(c).unwrap(),
            &id,
            day,
            &certs_dir(d, c, "controller"),
        )
        .unwrap()
    };
    let (old, new) = (root("old"), root("new"));
    let east = issue(&old, "east");
    issue(&old, "west");
    assert_eq!(mutually_trusted(d, "east", "west"), Some(true));
    // west re-issued under a root east does not trust.
    let west = issue(&new, "west");
    assert_eq!(mutually_trusted(d, "east", "west"), Some(false));
    // Mid-rotation: both bundles hold both roots, in different orders.
    let (o, n) = (
        std::fs::read_to_string(old.bundle_path()).unwrap(),
        std::fs::read_to_string(new.bundle_path()).unwrap(),
    );
    std::fs::write(&east.bundle, format!("{o}{n}")).unwrap();
    std::fs::write(&west.bundle, format!("{n}{o}")).unwrap();
    assert_eq!(mutually_trusted(d, "east", "west"), Some(true));
    // No files: nothing to say.
    assert_eq!(mutually_trusted(d, "east", "central"), None);
}

fn status() -> Status {
    serde_json::from_value(serde_json::json!({
        "cluster": "east", "version": 3, "conflicts": [], "proxies": [],
        "links": [{
            "peer": "west", "identity": "spiffe://strait.local/ns/strait-system/sa/controller-west",
            "controller": "127.0.0.2:8610", "gateways": ["127.0.0.2:15443"],
            "fail_mode": "fail-static",
            "sync": { "peer": "west", "up": true, "stale": false, "services": 1, "version": 4,
                      "age_secs": 1.0, "full_resyncs": 1, "delta_updates": 0,
                      "last_error": null, "refused": [] }
        }],
        "services": [{
            "namespace": "demo", "name": "echo", "vip": "127.77.1.2", "ports": ["8080/http1"],
            "export": null,
            "clusters": [{ "cluster": "west", "local": false, "endpoints": [
                { "address": "127.0.0.2:15006", "locality": "us-west/us-west-1a", "health": "unhealthy" }
            ]}],
            "serving": { "cluster": null, "reason": "no healthy endpoints", "reason_label": "none", "shares": {} }
        }]
    }))
    .unwrap()
}

#[test]
fn an_unknown_service_fails_the_catalog_hop_and_names_other_namespaces() {
    let s = status();
    let (f, svc) = catalog_hop("east", "shop", "echo", &Ok(s.clone()));
    assert!(svc.is_none());
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(f.detail.contains("no service shop/echo"), "{f:?}");
    assert!(f.detail.contains("in namespace demo"), "{f:?}");
    assert!(f.detail.contains("linked clusters: west"), "{f:?}");
    let (f, svc) = catalog_hop("east", "demo", "echo", &Ok(s));
    assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
    assert!(f.detail.contains("endpoints in west (1)"), "{f:?}");
    assert_eq!(serving_cluster(&svc.unwrap()).as_deref(), Some("west"));
}

#[test]
fn endpoints_fail_when_none_is_healthy_and_who_names_gateways() {
    let s = status();
    let svc = &s.services[0];
    let f = endpoints_hop(Some("west"), svc);
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(f.detail.contains("127.0.0.2:15006 unhealthy"), "{f:?}");
    assert!(f.hint.unwrap().contains("health checks"));
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(who(ip, &s, Some(svc), None), "127.0.0.2 (gateway of west)");
    let egress: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(who(egress, &s, Some(svc), Some(egress)).contains("(egress of "));
    let vip: IpAddr = "127.77.1.2".parse().unwrap();
    assert_eq!(
        who(vip, &s, Some(svc), None),
        "127.77.1.2 (the service VIP)"
    );
}

#[test]
fn a_local_service_needs_no_link_and_no_gateway() {
    let s = status();
    assert_eq!(trust_hop("east", "east", &s, None).verdict, Verdict::Pass);
    let f = trust_hop("east", "central", &s, None);
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(
        f.hint
            .unwrap()
            .contains("strait link --from east --to central")
    );
    let f = trust_hop("east", "west", &s, None);
    assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
    let f = trust_hop("east", "west", &s, Some(false));
    assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
    assert!(f.detail.contains("do not trust each other's root"), "{f:?}");
}

#[test]
fn trust_is_mutual_when_each_trusts_the_root_the_other_presents() {
    let r = |roots: &[&str], presented: Option<&str>| {
        let fp = |s: &str| s.repeat(64);
        TrustReport::of_fingerprints(roots.iter().map(|s| fp(s)).collect(), presented.map(fp))
    };
    for (a, b, mutual) in [
        (r(&["o"], Some("o")), r(&["o"], Some("o")), true),
        // Mid-rotation: one presents under the new root, both trust both.
        (r(&["o", "n"], Some("o")), r(&["n", "o"], Some("n")), true),
        // One re-issued under a root the other does not trust yet.
        (r(&["o"], Some("o")), r(&["o", "n"], Some("n")), false),
        // No certificate under a trusted root.
        (r(&["o"], None), r(&["o"], Some("o")), false),
    ] {
        let got = trusts_presented(&a, &b) && trusts_presented(&b, &a);
        assert_eq!(got, mutual, "{a:?} / {b:?}");
    }
}
