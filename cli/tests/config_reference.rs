//! docs/config-reference.md lists every key of every role's config file,
//! and nothing else. The keys come from the `strait` binary itself: each
//! config refuses an unknown key with "unknown field `x`, expected one of
//! `a`, `b`, ...", so a probe with a bogus key at each level of each
//! config names every key that level accepts.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::strait;

/// The keys `role` accepts at the level `probe` puts a bogus key in.
fn accepted(role: &str, probe: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, probe).unwrap();
    let out = strait(
        dir.path(),
        &[role, "--config", file.to_str().unwrap(), "--check"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{role} accepted {probe:?}");
    let after = err
        .split("unknown field `bogus`, expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{role} {probe:?}: no unknown-field message: {err}"));
    let list = after.split(" at line").next().unwrap_or(after);
    let list = list.split(": unknown field").next().unwrap_or(list);
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys of one `## \`strait ROLE\`` section of the reference: the
/// first column of its table, as (prefix, key) with `a.b` -> ("a.", "b")
/// and `app[].x` -> ("app[].", "x").
fn documented(doc: &str, role: &str) -> BTreeSet<(String, String)> {
    let heading = format!("## `strait {role}`");
    let section = doc
        .split(&heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no section {heading}"));
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .map(|k| match k.rsplit_once('.') {
            Some((p, last)) => (format!("{p}."), last.to_owned()),
            None => (String::new(), k.to_owned()),
        })
        .collect()
}

#[test]
fn the_config_reference_lists_every_key_every_role_accepts_and_no_other() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/config-reference.md"
    ))
    .expect("docs/config-reference.md");
    let levels: &[(&str, &[(&str, &str)])] = &[
        (
            "proxy",
            &[
                ("", "bogus: 1"),
                ("listeners.", "listeners: { bogus: 1 }"),
                ("limits.", "limits: { bogus: 1 }"),
                ("capture.", "capture: { bogus: 1 }"),
                ("service.", "service: { bogus: 1 }"),
                ("egress.", "egress: { bogus: 1 }"),
                ("app[].", "app: [{ bogus: 1 }]"),
                ("controller.", "controller: { bogus: 1 }"),
                ("scope.", "scope: { bogus: 1 }"),
                ("tracing.", "tracing: { bogus: 1 }"),
            ],
        ),
        (
            "gateway",
            &[
                ("", "bogus: 1"),
                ("listeners.", "listeners: { bogus: 1 }"),
                ("limits.", "limits: { bogus: 1 }"),
                ("controller.", "controller: { bogus: 1 }"),
                ("tracing.", "tracing: { bogus: 1 }"),
            ],
        ),
        (
            "controller",
            &[
                ("", "bogus: 1"),
                ("dns.", "dns: { bogus: 1 }"),
                ("identity.", "identity: { bogus: 1 }"),
                ("catalog.", "catalog: { bogus: 1 }"),
                (
                    "catalog.kubernetes.",
                    "catalog: { kubernetes: { bogus: 1 } }",
                ),
                (
                    "catalog.kubernetes.leader_election.",
                    "catalog: { kubernetes: { leader_election: { bogus: 1 } } }",
                ),
            ],
        ),
    ];
    let mut total = 0;
    for (role, probes) in levels {
        let docs = documented(&doc, role);
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (prefix, probe) in *probes {
            keys.insert((*prefix).to_owned(), accepted(role, probe));
        }
        // Every accepted key is documented: a nested object by its keys.
        for (prefix, set) in &keys {
            for k in set {
                let nested = format!("{prefix}{k}.");
                let nested_list = format!("{prefix}{k}[].");
                let listed = docs.contains(&(prefix.clone(), k.clone()))
                    || docs.iter().any(|(p, _)| *p == nested || *p == nested_list);
                assert!(
                    listed,
                    "strait {role}: `{prefix}{k}` is not in docs/config-reference.md"
                );
                total += 1;
            }
        }
        // Every documented key is accepted.
        for (prefix, k) in &docs {
            let Some(set) = keys.get(prefix) else {
                panic!(
                    "strait {role}: the reference documents `{prefix}{k}`, a level this test does not probe"
                );
            };
            assert!(
                set.contains(k),
                "strait {role}: the reference documents `{prefix}{k}`, which the binary refuses (it takes {set:?})"
            );
        }
    }
    eprintln!("{total} keys of 3 roles checked against docs/config-reference.md");
}
