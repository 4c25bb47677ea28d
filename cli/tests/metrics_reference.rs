//! The metrics reference in docs/observability.md against the registries
//! themselves: every family the sidecar, gateway, controller, DNS server
//! and CA register (built in-process with the constructors their roles
//! use) has a row, and every row names a registered family of that
//! component. Types are checked where the registry shows them (families
//! with samples); `cli/tests/monitoring.rs` checks types and labels of
//! everything a running mesh exports.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::registry::Registry;

/// One row of the reference: type, labels, component.
#[derive(Debug, Clone)]
struct Row {
    kind: String,
    labels: BTreeSet<String>,
    component: String,
}

fn reference() -> BTreeMap<String, Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
    let text = std::fs::read_to_string(path).expect("docs/observability.md");
    // Only the reference's own section (other tables name fields such as
    // the access log's `strait_error`).
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Metrics reference"))
        .expect("a \"## Metrics reference\" section in docs/observability.md");
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `strait_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", name, type, labels, component, meaning, ""]
        assert!(cells.len() >= 6, "malformed row: {line}");
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty() && l != "—")
            .collect();
        let row = Row {
            kind: cells[2].to_owned(),
            labels,
            component: cells[4].to_owned(),
        };
        assert!(
            ["counter", "gauge", "histogram"].contains(&row.kind.as_str()),
            "{name}: unknown type {:?}",
            row.kind
        );
        assert!(
            rows.insert(name.clone(), row).is_none(),
            "{name} is listed twice"
        );
    }
    assert!(
        rows.len() > 20,
        "the reference table was not found in {path}"
    );
    rows
}

/// The family names a registry holds, read from its `Debug` form (the
/// registry has no public iterator; an empty family is not encoded): each
/// descriptor's name with the prefix of its (sub-)registry and its unit.
fn families(debug: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prefix: Option<String> = None;
    let mut rest = debug;
    loop {
        let p = rest.find("prefix: ");
        let d = rest.find("Descriptor { name: \"");
        match (p, d) {
            (Some(p), d) if d.is_none_or(|d| p < d) => {
                rest = &rest[p + "prefix: ".len()..];
                prefix = rest
                    .strip_prefix("Some(Prefix(\"")
                    .and_then(|r| r.split_once('"'))
                    .map(|(p, _)| p.to_owned());
            }
            (_, Some(d)) => {
                rest = &rest[d + "Descriptor { name: \"".len()..];
                let (name, after) = rest.split_once('"').expect("a quoted name");
                let unit = after
                    .split_once("unit: ")
                    .map(|(_, u)| u)
                    .and_then(|u| u.strip_prefix("Some("))
                    .and_then(|u| u.split_once(')'))
                    .map(|(u, _)| u.to_ascii_lowercase());
                let mut full = match &prefix {
                    Some(p) => format!("{p}_{name}"),
                    None => name.to_owned(),
                };
                if let Some(u) = unit {
                    full = format!("{full}_{u}");
                }
                out.insert(full);
            }
            (_, None) => return out,
        }
    }
}

/// `# TYPE name type` lines of an encoded registry (families with samples).
fn encoded_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// (component, registry Debug text, encoded text) of every component.
fn components() -> Vec<(&'static str, String, String)> {
    let proxy = strait_proxy::metrics::Metrics::new();
    let gateway = strait_gateway::metrics::Metrics::for_cluster("west");
    let mut controller = Registry::default();
    strait_federation::metrics::Metrics::default().register(&mut controller);
    let mut dns = Registry::default();
    strait_dns::DnsMetrics::register(&mut dns);
    let ca = strait_ca::metrics::CaMetrics::new();
    vec![
        ("sidecar", format!("{proxy:?}"), proxy.encode()),
        ("gateway", format!("{gateway:?}"), gateway.encode()),
        ("controller", format!("{controller:?}"), encode(&controller)),
        ("dns", format!("{dns:?}"), encode(&dns)),
        ("ca", format!("{ca:?}"), ca.encode()),
    ]
}

/// A registry family's name as documented: counters carry `_total`.
fn documented_name(family: &str, rows: &BTreeMap<String, Row>) -> Option<String> {
    let total = format!("{family}_total");
    if rows.get(&total).is_some_and(|r| r.kind == "counter") {
        return Some(total);
    }
    rows.get(family)
        .filter(|r| r.kind != "counter")
        .map(|_| family.to_owned())
}

#[test]
fn every_registered_family_is_documented_and_every_documented_one_is_registered() {
    let rows = reference();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (component, debug, encoded) in components() {
        let names = families(&debug);
        assert!(
            names.len() >= 2,
            "{component}: no families found in its registry's Debug form: {debug}"
        );
        for family in &names {
            let Some(doc) = documented_name(family, &rows) else {
                problems.push(format!(
                    "{component} registers {family}, which docs/observability.md does not list"
                ));
                continue;
            };
            let row = &rows[&doc];
            if row.component != component {
                problems.push(format!(
                    "{doc} is registered by the {component} but documented for the {}",
                    row.component
                ));
            }
            seen.insert(doc);
        }
        for (family, kind) in encoded_types(&encoded) {
            if let Some(doc) = documented_name(&family, &rows)
                && rows[&doc].kind != kind
            {
                problems.push(format!(
                    "{doc}: the {component} exports a {kind}, documented as {}",
                    rows[&doc].kind
                ));
            }
        }
    }
    for (name, row) in &rows {
        if !seen.contains(name) {
            problems.push(format!(
                "docs/observability.md lists {name} ({}), which no registry of the {} holds",
                row.kind, row.component
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("{} documented families match the registries", seen.len());
}

#[test]
fn families_are_read_with_their_prefix_and_unit() {
    let mut r = Registry::with_prefix("a");
    r.register(
        "plain",
        "p",
        prometheus_client::metrics::gauge::Gauge::<i64>::default(),
    );
    let sub = r.sub_registry_with_prefix("b");
    sub.register_with_unit(
        "took",
        "t",
        prometheus_client::registry::Unit::Seconds,
        prometheus_client::metrics::counter::Counter::<u64>::default(),
    );
    let got = families(&format!("{r:?}"));
    let want: BTreeSet<String> = ["a_plain", "a_b_took_seconds"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn labels_in_the_reference_are_plain_label_names() {
    for (name, row) in reference() {
        for l in &row.labels {
            assert!(
                !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}: bad label {l:?}"
            );
        }
    }
}
