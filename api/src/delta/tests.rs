use super::*;
use crate::snapshot::Snapshot;

const FULL: &str = include_str!("../snapshot/testdata/full.yaml");

/// The fully populated fixture's service, and a second one with every
/// default.
fn full() -> Snapshot {
    let mut snap = Snapshot::from_yaml(FULL).unwrap();
    let mut plain = snap.services[0].clone();
    plain.name = "plain".into();
    plain.endpoints.truncate(1);
    plain.routes.clear();
    plain.traffic = Default::default();
    plain.outlier_detection = Default::default();
    plain.authorization.clear();
    snap.services.push(plain);
    snap
}

fn delta(base: u64, full: bool, upserts: &[&Service], removals: &[&str]) -> pb::Delta {
    pb::Delta {
        epoch: "e1".into(),
        base_version: base,
        full,
        full_reason: String::new(),
        partial: false,
        local_cluster: "east".into(),
        local_locality: "us-east/a".into(),
        clusters: vec!["west".into()],
        upserts: upserts.iter().map(|s| encode_service(s)).collect(),
        removals: removals.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn names(s: &Snapshot) -> Vec<String> {
    s.services
        .iter()
        .map(|s| removal_key(&s.namespace, &s.name))
        .collect()
}

#[test]
fn every_field_of_the_full_fixture_survives_the_protobuf_round_trip() {
    let snap = full();
    assert!(snap.services.len() >= 2);
    for (i, s) in snap.services.iter().enumerate() {
        let back = decode_service(&format!("upserts[{i}]"), &encode_service(s)).unwrap();
        assert_eq!(&back, s);
    }
}

#[test]
fn a_full_delta_replaces_the_state_and_a_delta_changes_only_what_it_names() {
    let snap = full();
    let a = &snap.services[0];
    let b = &snap.services[1];
    let mut a2 = a.clone();
    a2.endpoints.truncate(1);
    a2.endpoints[0].weight = 7;
    let mut c = b.clone();
    c.name = "zeta".into();
    // (held, version, delta) -> Ok(services) or Err(text in the error)
    let held = apply(None, 10, &[delta(0, true, &[a, b], &[])]).unwrap();
    assert_eq!(held.version, 10);
    assert_eq!(held.local.cluster.as_str(), "east");
    assert_eq!(held.clusters.len(), 1);
    type Case<'a> = (
        &'static str,
        Option<&'a Snapshot>,
        pb::Delta,
        Result<Vec<&'a Service>, &'static str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "full from nothing",
            None,
            delta(0, true, &[b], &[]),
            Ok(vec![b]),
        ),
        (
            "full drops the rest",
            Some(&held),
            delta(0, true, &[a], &[]),
            Ok(vec![a]),
        ),
        (
            "change one",
            Some(&held),
            delta(10, false, &[&a2], &[]),
            Ok(vec![&a2, b]),
        ),
        (
            "add one",
            Some(&held),
            delta(10, false, &[&c], &[]),
            Ok(vec![a, b, &c]),
        ),
        (
            "remove one",
            Some(&held),
            delta(10, false, &[], &[&removal_key(&a.namespace, &a.name)]),
            Ok(vec![b]),
        ),
        (
            "removing an unknown is a no-op",
            Some(&held),
            delta(10, false, &[], &["x/y"]),
            Ok(vec![a, b]),
        ),
        (
            "wrong base",
            Some(&held),
            delta(9, false, &[&c], &[]),
            Err("applies on version 9 but version 10"),
        ),
        (
            "no base held",
            None,
            delta(10, false, &[&c], &[]),
            Err("applies on version 10 but version 0"),
        ),
        (
            "bad removal",
            Some(&held),
            delta(10, false, &[], &["nope"]),
            Err("removals"),
        ),
    ];
    for (name, held, d, want) in cases {
        let got = apply(held, 11, &[d]);
        match want {
            Ok(services) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let mut want: Vec<Service> = services.into_iter().cloned().collect();
                want.sort_by(|x, y| (&x.namespace, &x.name).cmp(&(&y.namespace, &y.name)));
                assert_eq!(got.services, want, "{name}");
                assert_eq!(got.version, 11, "{name}");
            }
            Err(text) => {
                let e = got.expect_err(name).to_string();
                assert!(e.contains(text), "{name}: {e}");
            }
        }
    }
}

#[test]
fn partial_pieces_of_one_version_apply_together() {
    let snap = full();
    let (a, b) = (&snap.services[0], &snap.services[1]);
    let mut first = delta(0, true, &[a], &[]);
    first.partial = true;
    let second = delta(0, true, &[b], &[]);
    let got = apply(None, 5, &[first, second]).unwrap();
    assert_eq!(names(&got).len(), 2);
    assert!(matches!(apply(None, 5, &[]), Err(DeltaError::Empty)));
}

#[test]
fn a_bad_resource_is_refused_naming_its_field() {
    let snap = full();
    let mut bad = encode_service(&snap.services[0]);
    bad.vip = vec![1, 2, 3];
    let mut d = delta(0, true, &[], &[]);
    d.upserts.push(bad);
    let e = apply(None, 1, &[d.clone()]).unwrap_err().to_string();
    assert!(
        e.contains("delta[0].upserts[0].vip") && e.contains("4 or 16 bytes"),
        "{e}"
    );
    let mut bad = encode_service(&snap.services[0]);
    bad.endpoints[0].identity = "not-spiffe".into();
    d.upserts = vec![bad];
    let e = apply(None, 1, &[d.clone()]).unwrap_err().to_string();
    assert!(e.contains("upserts[0].endpoints[0].identity"), "{e}");
    let mut bad = encode_service(&snap.services[0]);
    bad.ports[0].protocol = 42;
    d.upserts = vec![bad];
    let e = apply(None, 1, &[d.clone()]).unwrap_err().to_string();
    assert!(
        e.contains("ports[0].protocol") && e.contains("unknown enum"),
        "{e}"
    );
    d.upserts.clear();
    d.local_cluster = "Not A Cluster".into();
    let e = apply(None, 1, &[d]).unwrap_err().to_string();
    assert!(e.contains("local_cluster"), "{e}");
}

#[test]
fn a_scope_holds_what_it_names_and_everything_when_empty() {
    let s = Scope::parse(&["web.shop".into(), "*.pay".into()]).unwrap();
    // (namespace, name, in scope)
    for (ns, name, want) in [
        ("shop", "web", true),
        ("shop", "cart", false),
        ("pay", "anything", true),
        ("default", "web", false),
    ] {
        assert_eq!(s.contains(ns, name), want, "{name}.{ns}");
    }
    assert!(Scope::all().contains("x", "y"));
    assert!(Scope::all().with("a", "b").is_all());
    let own = s.clone().with("shop", "cart");
    assert!(own.contains("shop", "cart") && !s.contains("shop", "cart"));
    for (bad, text) in [
        ("web", "name.namespace"),
        ("Web.shop", "service name"),
        ("web.*", "namespace"),
        ("web.", "namespace"),
    ] {
        let e = Scope::parse(&[bad.into()]).unwrap_err().to_string();
        assert!(
            e.contains("scope.services") && e.contains(text),
            "{bad}: {e}"
        );
    }
    let p: ScopePattern = serde_yaml_ng::from_str("\"*.pay\"").unwrap();
    assert_eq!(p.to_string(), "*.pay");
}
