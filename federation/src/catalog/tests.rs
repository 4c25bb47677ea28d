use std::fs;

use strait_api::snapshot::{Protocol, ServicePort};
use strait_api::{ClusterName, TrustDomain};

use super::policy::parse_distribute;
use super::store::DirectoryStore;
use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("strait.local").unwrap()
}

fn east() -> ClusterName {
    ClusterName::new("east").unwrap()
}

/// `name` in namespace `default`: port 80 (http1), one endpoint
/// 10.0.0.1:15006, not exported.
pub(crate) fn reg(name: &str) -> Registration {
    Registration {
        name: name.into(),
        namespace: "default".into(),
        ports: vec![ServicePort {
            port: 80,
            protocol: Protocol::Http1,
        }],
        endpoints: vec![EndpointSpec {
            address: "10.0.0.1:15006".parse().unwrap(),
            locality: None,
            identity: None,
            weight: 1,
        }],
        export: Export::None,
        health_check: None,
    }
}

fn open(dir: &std::path::Path) -> Result<DirectoryStore, CatalogError> {
    DirectoryStore::open(dir, &td(), &east())
}

#[test]
fn registrations_exports_and_policies_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.register(reg("reviews")).unwrap();
    let key = ServiceKey::new("default", "reviews");
    store
        .export(&key, vec![ClusterName::new("west").unwrap()])
        .unwrap();
    let mut p = PolicySpec::new(&key);
    p.failover = vec![ClusterName::new("west").unwrap()];
    p.distribute = parse_distribute("us-east/*->us-east/*=80,us-west/*=20").unwrap();
    store.set_policy(p.clone()).unwrap();
    drop(store);

    let again = open(dir.path()).unwrap();
    let cat = again.catalog();
    let got = cat.services.get(&key).unwrap();
    assert_eq!(
        got.export,
        Export::To(vec![ClusterName::new("west").unwrap()])
    );
    assert_eq!(cat.policies.get(&key), Some(&p));
    assert!(dir.path().join("services/default.reviews.yaml").exists());
}

#[test]
fn deregister_removes_the_file_and_unknown_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.register(reg("a")).unwrap();
    let key = ServiceKey::new("default", "a");
    store.deregister(&key).unwrap();
    assert!(!dir.path().join("services/default.a.yaml").exists());
    let err = store.deregister(&key).unwrap_err().to_string();
    assert_eq!(err, "service default/a is not registered");
    assert!(open(dir.path()).unwrap().catalog().services.is_empty());
}

#[test]
fn invalid_files_are_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("services")).unwrap();
    let f = dir.path().join("services/bad.yaml");
    fs::write(&f, "name: web\nports: [{port: 0}]\n").unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("ports[0].port"), "{err}");

    fs::write(&f, "name: web\nports: [{port: 80}]\nbogus: 1\n").unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.yaml") && err.contains("bogus"), "{err}");

    fs::write(&f, "name: web\nports: [{port: 80}]\nexport: {to: [east]}\n").unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("export.to[0]") && err.contains("own cluster"),
        "{err}"
    );

    fs::write(
        &f,
        "name: web\nports: [{port: 80}]\nexport: {too: [west]}\n",
    )
    .unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("use `none`, `all`"), "{err}");

    let id = "spiffe://other.domain/ns/default/sa/web";
    let text = format!(
        "name: web\nports: [{{port: 80}}]\nendpoints: [{{address: 10.0.0.1:1, identity: {id}}}]\n"
    );
    fs::write(&f, text).unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("endpoints[0].identity") && err.contains("strait.local"),
        "{err}"
    );
}

#[test]
fn a_service_defined_twice_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("services")).unwrap();
    fs::write(
        dir.path().join("services/a.yaml"),
        "name: web\nports: [{port: 80}]\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("services/b.yml"),
        "name: web\nports: [{port: 81}]\n",
    )
    .unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("b.yml") && err.contains("a.yaml") && err.contains("default/web"),
        "{err}"
    );
}

#[test]
fn a_leftover_temp_file_from_a_crashed_write_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.register(reg("web")).unwrap();
    drop(store);
    // What a crash between write and rename leaves behind: half a file.
    let tmp = dir.path().join("services/.default.web.yaml.tmp.4242");
    fs::write(&tmp, "name: web\nports: [{por").unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.catalog().services.len(), 1);
    assert_eq!(
        store.get(&ServiceKey::new("default", "web")),
        Some(reg("web"))
    );
}

#[test]
fn rescan_keeps_the_last_good_entry_of_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.register(reg("web")).unwrap();
    let f = dir.path().join("services/default.web.yaml");
    fs::write(&f, "name: web\nports: []\n").unwrap();
    let errors = store.rescan();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("needs at least one port"));
    assert_eq!(store.catalog().services.len(), 1);
    fs::write(
        dir.path().join("services/new.yaml"),
        "name: new\nports: [{port: 9}]\n",
    )
    .unwrap();
    assert!(store.rescan().len() == 1);
    assert_eq!(store.catalog().services.len(), 2);
}

#[test]
fn api_validation_names_the_file_it_would_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut r = reg("web");
    r.endpoints.push(r.endpoints[0].clone());
    let err = store.register(r).unwrap_err().to_string();
    assert!(
        err.contains("default.web.yaml") && err.contains("endpoints[1].address"),
        "{err}"
    );
    let mut r = reg("Web");
    r.name = "Web".into();
    let err = store.register(r).unwrap_err().to_string();
    assert!(err.contains("name: \"Web\" is invalid"), "{err}");
}

#[test]
fn policies_combine_failover_and_weights_and_are_validated() {
    let key = ServiceKey::new("default", "web");
    let mut p = PolicySpec::new(&key);
    p.failover = vec![
        ClusterName::new("west").unwrap(),
        ClusterName::new("central").unwrap(),
    ];
    p.distribute = parse_distribute("us-east/*=80,us-west/*=20").unwrap();
    assert!(p.validate().is_ok());
    assert_eq!(p.distribute[0].from.to_string(), "*");

    p.distribute = parse_distribute("us-east/*=70,us-west/*=20").unwrap();
    let e = p.validate().unwrap_err();
    assert_eq!(e.field, "distribute[0].to");
    assert_eq!(e.value, "90");

    p.distribute.clear();
    p.failover.push(ClusterName::new("west").unwrap());
    assert_eq!(p.validate().unwrap_err().field, "failover[2]");

    let e = parse_distribute("us-east/*=eighty").unwrap_err();
    assert!(e.reason.contains("integer"));
    let e = parse_distribute("us-east/*").unwrap_err();
    assert!(e.reason.contains("LOCALITY=WEIGHT"));

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut bad = PolicySpec::new(&key);
    bad.overprovisioning_factor = 0.5;
    let err = store.set_policy(bad).unwrap_err().to_string();
    assert!(
        err.contains("policies/default.web.yaml") && err.contains("overprovisioning_factor"),
        "{err}"
    );
}

#[test]
fn watchers_see_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut rx = store.watch();
    assert!(!rx.has_changed().unwrap());
    store.register(reg("web")).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().services.len(), 1);
    // Writing the same registration again is not a change.
    store.register(reg("web")).unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn the_example_state_directory_parses() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/state");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["services", "policies"] {
        fs::create_dir_all(dir.path().join(sub)).unwrap();
        for f in fs::read_dir(src.join(sub)).unwrap() {
            let f = f.unwrap().path();
            fs::copy(&f, dir.path().join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let cat = open(dir.path()).unwrap().catalog();
    assert_eq!(cat.services.len(), 2);
    let reviews = &cat.services[&ServiceKey::new("default", "reviews")];
    assert_eq!(
        reviews.export,
        Export::To(vec![
            ClusterName::new("west").unwrap(),
            ClusterName::new("central").unwrap()
        ])
    );
    assert_eq!(reviews.health_check.as_ref().unwrap().port, Some(9080));
    assert_eq!(
        cat.services[&ServiceKey::new("default", "ratings")].export,
        Export::All
    );
    let policy = &cat.policies[&ServiceKey::new("default", "reviews")];
    assert_eq!(policy.failover.len(), 2);
    assert_eq!(policy.distribute[0].to.len(), 2);
    assert_eq!(policy.authorization[0].name, "callers");
    assert_eq!(policy.authorization[0].allow.len(), 2);
    policy.validate_for_ports(&reviews.ports).unwrap();
}

#[test]
fn authorization_is_validated_naming_the_field_and_against_a_registered_service() {
    let key = ServiceKey::new("default", "web");
    let yaml = "name: web\nauthorization:\n  - name: a\n    ports: [8080]\n    \
                deny: [{ from: [\"*\"], paths: [\"/x/../admin\"] }]\n";
    let mut p: PolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
    let e = p.validate().unwrap_err();
    assert_eq!(e.field, "authorization[0].deny[0].paths[0]");
    assert_eq!(e.value, "/x/../admin");
    p.authorization[0].deny[0].paths = vec!["/admin".into()];
    p.validate().unwrap();
    p.authorization.push(p.authorization[0].clone());
    let e = p.validate().unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("authorization[1].name", "duplicate policy")
    );
    p.authorization.pop();
    let bad_from =
        "name: web\nauthorization: [{ name: a, allow: [{ from: [\"spiffe://x/ns/a/sa/*\"] }] }]\n";
    assert!(serde_yaml_ng::from_str::<PolicySpec>(bad_from).is_err());

    // Unregistered: port 8080 cannot be judged yet, so it is stored.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.set_policy(p.clone()).unwrap();
    // Registered on port 80: the port is refused, naming file and field.
    store.register(reg("web")).unwrap();
    let err = store.set_policy(p.clone()).unwrap_err().to_string();
    assert!(
        err.contains("policies/default.web.yaml") && err.contains("authorization[0].ports[0]"),
        "{err}"
    );
    p.authorization[0].ports = vec![80];
    store.set_policy(p).unwrap();
    assert_eq!(store.catalog().policies[&key].authorization[0].ports, [80]);
}

#[test]
fn routes_are_validated_naming_the_field_and_stored() {
    let yaml = "name: web\nroutes:\n  - path_prefix: /api\n    timeout: 2s\n    \
                retry: { attempts: 11 }\n";
    let mut p: PolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
    let e = p.validate().unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("routes[0].retry.attempts", "11")
    );
    p.routes[0].retry.attempts = 2;
    p.validate().unwrap();
    p.routes.push(p.routes[0].clone());
    let e = p.validate().unwrap_err();
    assert_eq!(e.field, "routes[1].path_prefix");
    p.routes[1].path_prefix = "api".into();
    assert_eq!(p.validate().unwrap_err().field, "routes[1].path_prefix");
    p.routes.pop();
    // The example of docs/operations.md.
    let doc = "name: web\nroutes:\n  - { path_prefix: /api, timeout: 2s, retry: { attempts: 2,\n    \
               retry_on: [5xx, connect-failure] } }\n";
    let doc: PolicySpec = serde_yaml_ng::from_str(doc).unwrap();
    doc.validate().unwrap();
    assert_eq!(doc.routes[0].retry.attempts, 2);
    let bad_timeout = "name: web\nroutes: [{ timeout: 2 }]\n";
    assert!(serde_yaml_ng::from_str::<PolicySpec>(bad_timeout).is_err());

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut zero = p.clone();
    zero.routes[0].timeout = std::time::Duration::ZERO;
    let err = store.set_policy(zero).unwrap_err().to_string();
    assert!(err.contains("routes[0].timeout"), "{err}");
    store.set_policy(p.clone()).unwrap();
    let key = ServiceKey::new("default", "web");
    assert_eq!(store.catalog().policies[&key].routes, p.routes);
    // Reopening the directory reads the routes back from the file.
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.catalog().policies[&key].routes, p.routes);
}
