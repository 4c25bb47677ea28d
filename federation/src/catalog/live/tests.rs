use strait_api::proto::config::RegisteredPort;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").unwrap()
}

fn east() -> ClusterName {
    ClusterName::new("east").unwrap()
}

fn wire(name: &str, ns: &str, addr: &str, export: &str, ports: &[(u32, &str)]) -> Wire {
    Wire {
        name: name.into(),
        namespace: ns.into(),
        ports: ports
            .iter()
            .map(|(port, protocol)| RegisteredPort {
                port: *port,
                protocol: (*protocol).into(),
            })
            .collect(),
        address: addr.into(),
        export: export.into(),
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://strait.local/{s}")).unwrap()
}

#[test]
fn who_may_register_what_as_a_table() {
    let ok = [(8080, "http1")];
    let cases: Vec<(Wire, &str, Option<&str>)> = vec![
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
            "ns/shop/sa/reviews",
            None,
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "all", &ok),
            "ns/shop/sa/reviews",
            None,
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "west,central", &ok),
            "ns/shop/sa/reviews",
            None,
        ),
        // Another identity, even of the same namespace, may not.
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
            "ns/shop/sa/ratings",
            Some("not_its_service"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
            "ns/other/sa/reviews",
            Some("not_its_service"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
            "ns/strait-system/sa/gateway-east",
            Some("not_its_service"),
        ),
        // Bad registrations name what is wrong.
        (
            wire("reviews", "shop", "0.0.0.0:15006", "", &ok),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5", "", &ok),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &[]),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &[(8080, "ftp")]),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "", &[(70000, "tcp")]),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("reviews", "shop", "10.0.0.5:15006", "east", &ok),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
        (
            wire("Reviews!", "shop", "10.0.0.5:15006", "", &ok),
            "ns/shop/sa/reviews",
            Some("invalid_registration"),
        ),
    ];
    for (w, who, want) in cases {
        let got = admit(&w, &id(who), &td(), &east(), None);
        assert_eq!(
            got.as_ref().err().map(RegistrationError::label),
            want,
            "{w:?} by {who}: {got:?}"
        );
    }
    let e = admit(
        &wire("reviews", "shop", "0.0.0.0:15006", "", &ok),
        &id("ns/shop/sa/reviews"),
        &td(),
        &east(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("endpoints[0].address"), "{e}");
    let e = admit(
        &wire("reviews", "shop", "10.0.0.5:15006", "", &ok),
        &id("ns/shop/sa/ratings"),
        &td(),
        &east(),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("spiffe://strait.local/ns/shop/sa/reviews"),
        "{e}"
    );
}

#[test]
fn live_endpoints_join_file_registrations_or_make_their_own() {
    let mut base = LocalCatalog::default();
    let mut file = crate::catalog::tests::reg("reviews");
    file.namespace = "shop".into();
    file.ports[0].port = 9080;
    file.export = Export::All;
    base.services.insert(file.key(), file);
    let live = |name: &str, addr: &str| {
        admit(
            &wire(name, "shop", addr, "", &[(8080, "http2")]),
            &id(&format!("ns/shop/sa/{name}")),
            &td(),
            &east(),
            None,
        )
        .unwrap()
    };
    let a = live("reviews", "10.0.0.2:15006");
    let dup = live("reviews", "10.0.0.1:15006");
    let b = live("ratings", "10.0.0.3:15006");
    let out = merge(
        &base,
        [
            (&a, &id("ns/shop/sa/reviews")),
            (&dup, &id("ns/shop/sa/reviews")),
            (&b, &id("ns/shop/sa/ratings")),
        ],
        &BTreeMap::new(),
    );
    let reviews = &out.services[&ServiceKey::new("shop", "reviews")];
    // The file's ports and export stay; the address is not doubled.
    assert_eq!(reviews.ports[0].port, 9080);
    assert_eq!(reviews.export, Export::All);
    let addrs: Vec<String> = reviews
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:15006", "10.0.0.2:15006"]);
    let ratings = &out.services[&ServiceKey::new("shop", "ratings")];
    assert_eq!(
        (ratings.ports[0].port, ratings.export.clone()),
        (8080, Export::None)
    );
    assert_eq!(merge(&base, [], &BTreeMap::new()), base);
    // A configured registration naming another identity is never joined,
    // whichever registered first.
    let mut named = base.clone();
    if let Some(r) = named.services.get_mut(&ServiceKey::new("shop", "reviews")) {
        r.endpoints[0].identity = Some(id("ns/shop/sa/postgres"));
    }
    let out = merge(&named, [(&a, &id("ns/shop/sa/reviews"))], &BTreeMap::new());
    assert_eq!(
        out.services[&ServiceKey::new("shop", "reviews")]
            .endpoints
            .len(),
        1
    );
}

#[tokio::test]
async fn endpoints_live_with_their_stream_and_expire_with_the_lease() {
    let base: Arc<dyn CatalogSource> =
        Arc::new(crate::catalog::FixedCatalog::new(LocalCatalog::default()));
    let (live, task) = LiveCatalog::start(base, Duration::from_millis(200));
    let mut rx = live.watch();
    let who = id("ns/shop/sa/reviews");
    let ep = admit(
        &wire("reviews", "shop", "10.0.0.2:15006", "", &[(80, "http1")]),
        &who,
        &td(),
        &east(),
        None,
    )
    .unwrap();
    let has = |rx: &watch::Receiver<Arc<LocalCatalog>>| !rx.borrow().services.is_empty();
    live.register(1, &who, ep.clone()).unwrap();
    rx.wait_for(|c| !c.services.is_empty()).await.unwrap();
    // The stream ends: kept for the lease, then gone.
    live.session_ended(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(has(&rx), "removed before the lease ended");
    assert_eq!(live.status()[0].expires_in_secs, Some(0));
    tokio::time::timeout(
        Duration::from_secs(2),
        rx.wait_for(|c| c.services.is_empty()),
    )
    .await
    .expect("expired")
    .unwrap();
    // Deregistration is at once, and only by the identity that registered.
    live.register(2, &who, ep.clone()).unwrap();
    rx.wait_for(|c| !c.services.is_empty()).await.unwrap();
    let key = ServiceKey::new("shop", "reviews");
    assert!(!live.deregister(&id("ns/shop/sa/ratings"), &key, ep.endpoint.address));
    assert!(live.deregister(&who, &key, ep.endpoint.address));
    rx.wait_for(|c| c.services.is_empty()).await.unwrap();
    task.abort();
}

#[tokio::test]
async fn registrations_are_bounded_and_never_join_another_identity_s_service() {
    let mut base = LocalCatalog::default();
    let mut db = crate::catalog::tests::reg("db");
    db.namespace = "shop".into();
    db.ports[0] = ServicePort {
        port: 5432,
        protocol: Protocol::Tcp,
    };
    db.endpoints[0].identity = Some(id("ns/shop/sa/postgres"));
    base.services.insert(db.key(), db);
    let base: Arc<dyn CatalogSource> = Arc::new(crate::catalog::FixedCatalog::new(base));
    let (live, task) = LiveCatalog::start(base, Duration::from_secs(15));
    // A workload named like the service, but not its registered identity.
    let who = id("ns/shop/sa/db");
    let ep = admit(
        &wire("db", "shop", "10.0.0.9:15006", "", &[(5432, "tcp")]),
        &who,
        &td(),
        &east(),
        None,
    )
    .unwrap();
    let e = live.register(1, &who, ep).unwrap_err();
    assert_eq!(e.label(), "not_its_service");
    assert!(
        e.to_string()
            .contains("spiffe://strait.local/ns/shop/sa/postgres"),
        "{e}"
    );
    // One identity holds at most MAX_PER_IDENTITY endpoints.
    let web = id("ns/shop/sa/web");
    for i in 0..MAX_PER_IDENTITY {
        let ep = admit(
            &wire(
                "web",
                "shop",
                &format!("10.0.{}.{}:15006", 10 + i / 250, i % 250 + 1),
                "",
                &[(80, "http1")],
            ),
            &web,
            &td(),
            &east(),
            None,
        )
        .unwrap();
        live.register(1, &web, ep).unwrap();
    }
    let ep = admit(
        &wire("web", "shop", "10.0.2.1:15006", "", &[(80, "http1")]),
        &web,
        &td(),
        &east(),
        None,
    )
    .unwrap();
    assert_eq!(
        live.register(1, &web, ep.clone()).unwrap_err().label(),
        "too_many_registrations"
    );
    // Renewing one it holds is no new endpoint.
    let again = admit(
        &wire("web", "shop", "10.0.10.1:15006", "", &[(80, "http1")]),
        &web,
        &td(),
        &east(),
        None,
    )
    .unwrap();
    live.register(2, &web, again).unwrap();
    // Link-local and multicast addresses are refused outright.
    for bad in ["169.254.169.254:80", "224.0.0.1:80", "[fe80::1]:80"] {
        let e = admit(
            &wire("web", "shop", bad, "", &[(80, "http1")]),
            &web,
            &td(),
            &east(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.label(), "invalid_registration", "{bad}");
    }
    task.abort();
}

#[tokio::test]
async fn operators_set_the_export_of_live_only_services_and_evict_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("live-exports.json");
    let base = || -> Arc<dyn CatalogSource> {
        Arc::new(crate::catalog::FixedCatalog::new(LocalCatalog::default()))
    };
    let (live, task) =
        LiveCatalog::start_with_state(base(), Duration::from_secs(15), Some(state.clone()));
    let who = id("ns/shop/sa/web");
    let key = ServiceKey::new("shop", "web");
    let ep = admit(
        &wire("web", "shop", "10.0.0.2:15006", "all", &[(80, "http1")]),
        &who,
        &td(),
        &east(),
        None,
    )
    .unwrap();
    live.register(1, &who, ep.clone()).unwrap();
    let mut rx = live.watch();
    rx.wait_for(|c| {
        c.services
            .get(&key)
            .is_some_and(|r| r.export == Export::All)
    })
    .await
    .unwrap();
    assert!(live.serves_only_live(&key));
    // The operator's word wins over the sidecar's `export: all`...
    live.set_export(&key, Export::None).unwrap();
    rx.wait_for(|c| {
        c.services
            .get(&key)
            .is_some_and(|r| r.export == Export::None)
    })
    .await
    .unwrap();
    task.abort();
    // ... and survives a restart.
    let (again, task) = LiveCatalog::start_with_state(base(), Duration::from_secs(15), Some(state));
    again.register(2, &who, ep).unwrap();
    let mut rx = again.watch();
    rx.wait_for(|c| {
        c.services
            .get(&key)
            .is_some_and(|r| r.export == Export::None)
    })
    .await
    .unwrap();
    // Eviction removes every live endpoint of the service.
    assert_eq!(again.evict(&key), 1);
    rx.wait_for(|c| !c.services.contains_key(&key))
        .await
        .unwrap();
    // Its export stays the operator's: the service is still theirs to
    // export when its sidecars come back.
    assert!(again.serves_only_live(&key));
    task.abort();
}
