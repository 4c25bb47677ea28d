use super::*;

fn deny(name: &str) -> AuthorizationPolicy {
    AuthzFlags {
        name: name.into(),
        deny_from: vec!["spiffe://strait.local/ns/guest/*".into()],
        ..AuthzFlags::default()
    }
    .to_policy()
    .unwrap()
}

#[test]
fn traffic_flags_keep_authorization_and_authz_flags_keep_traffic() {
    let key = ServiceKey::new("shop", "reviews");
    let mut current = PolicySpec::new(&key);
    current.failover = clusters("--failover", "west").unwrap();
    current.authorization = vec![deny("a")];
    let mut traffic = PolicySpec::new(&key);
    traffic.failover = clusters("--failover", "central").unwrap();

    let p = apply(
        key.clone(),
        Some(current.clone()),
        Some(traffic),
        AuthzChange::Keep,
    );
    assert_eq!(p.failover[0].as_str(), "central");
    assert_eq!(p.authorization, vec![deny("a")]);

    let p = apply(
        key.clone(),
        Some(current.clone()),
        None,
        AuthzChange::Upsert(deny("b")),
    );
    assert_eq!(p.failover[0].as_str(), "west");
    assert_eq!(p.authorization, vec![deny("a"), deny("b")]);
    let mut a2 = deny("a");
    a2.ports = vec![80];
    let p = apply(key.clone(), Some(p), None, AuthzChange::Upsert(a2.clone()));
    assert_eq!(p.authorization, vec![a2, deny("b")], "same name replaced");

    let p = apply(key, Some(current), None, AuthzChange::Replace(Vec::new()));
    assert!(p.authorization.is_empty());
}

#[test]
fn the_authz_file_example_of_the_help_parses_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authz.yaml");
    std::fs::write(
        &file,
        r#"
  - name: callers
    ports: [9080]                 # default: every port
    deny:  [{ from: ["spiffe://strait.local/ns/guest/*"], paths: [/admin] }]
    allow: [{ from: ["spiffe://strait.local/ns/shop/*"] },
            { from: ["*"], methods: [GET] }]
"#,
    )
    .unwrap();
    let list = read_authz_file(&file).unwrap();
    let mut p = PolicySpec::new(&ServiceKey::new("shop", "reviews"));
    p.authorization = list;
    p.validate().unwrap();
    assert_eq!(p.authorization[0].allow.len(), 2);
}

#[test]
fn flag_errors_name_the_flag_and_value() {
    let args = |allow: &[&str], deny: &[&str], paths: &[&str]| AuthzArgs {
        allow_from: allow.iter().map(|s| (*s).to_owned()).collect(),
        deny_from: deny.iter().map(|s| (*s).to_owned()).collect(),
        ports: Vec::new(),
        paths: paths.iter().map(|s| (*s).to_owned()).collect(),
        methods: vec!["get".into()],
        escaped_slashes: None,
        path_parameters: None,
        case_insensitive_paths: false,
        authz_name: "cli".into(),
        authz_file: None,
        clear_authz: false,
    };
    let e = args(&[], &["spiffe://x/ns/a/sa/*"], &[])
        .change()
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--deny-from: \"spiffe://x/ns/a/sa/*\""),
        "{e}"
    );
    let e = args(&["*"], &[], &["admin"]).change().unwrap_err();
    assert!(e.to_string().starts_with("--paths: \"admin\""), "{e}");
    let e = args(&[], &[], &["/admin"]).change().unwrap_err();
    assert!(e.to_string().contains("give at least one"), "{e}");
    let AuthzChange::Upsert(p) = args(&["*"], &[], &["/api"]).change().unwrap() else {
        panic!("flags build one policy");
    };
    assert_eq!(p.allow[0].methods, ["GET"], "methods are upper-cased");
    assert!(p.deny.is_empty());
    assert!(p.path.is_default());
    // Path handling alone builds a rule-less policy that sets it.
    let mut a = args(&[], &[], &[]);
    a.methods.clear();
    a.escaped_slashes = Some("keep".into());
    a.path_parameters = Some("keep".into());
    a.case_insensitive_paths = true;
    let AuthzChange::Upsert(p) = a.change().unwrap() else {
        panic!("path flags build one policy");
    };
    assert!(p.allow.is_empty() && p.deny.is_empty());
    assert_eq!(
        p.path,
        PathPolicy {
            escaped_slashes: strait_api::snapshot::EscapedSlashes::Keep,
            parameters: strait_api::snapshot::PathParameters::Keep,
            case_insensitive: true,
        }
    );
    a.escaped_slashes = Some("unescape".into());
    let e = a.change().unwrap_err().to_string();
    assert!(
        e.starts_with("--escaped-slashes: \"unescape\" is invalid"),
        "{e}"
    );
}

#[test]
fn ejection_flags_set_only_what_they_name() {
    use std::time::Duration;
    let mut p = PolicySpec::new(&ServiceKey::new("default", "web"));
    EjectionArgs::default().apply(&mut p);
    assert_eq!(p.outlier_detection, None);
    let args = EjectionArgs {
        eject_after: Some(2),
        eject_for: Some(Duration::from_secs(3)),
        eject_max: None,
    };
    args.apply(&mut p);
    let o = p.outlier_detection.clone().unwrap();
    assert_eq!(
        (
            o.consecutive_failures,
            o.base_ejection_time,
            o.max_ejection_time
        ),
        (2, Duration::from_secs(3), Duration::from_secs(300))
    );
    assert!(policy_text(&p).contains("after 2 failures, for 3s"));
}
