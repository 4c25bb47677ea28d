//! Which objects a list or watch returns: namespace, `labelSelector`
//! (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated) and
//! `fieldSelector` (`metadata.name`, `metadata.namespace`); and the
//! metadata-only form of an object.

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; the default selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: Vec<Req>,
    /// `(field, value)` pairs that must all be equal.
    fields: Vec<(String, String)>,
}

impl Selector {
    /// From the query's `labelSelector` and `fieldSelector`; the error is
    /// the API server's kind of message.
    pub fn parse(query: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut out = Self::default();
        for term in query
            .get("labelSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
        {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = term.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                Req::Absent(k.trim().into())
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!(
                    "unable to parse requirement: {term:?} (the fake supports =, ==, !=, exists and !exists)"
                ));
            } else {
                Req::Exists(term.into())
            };
            out.labels.push(req);
        }
        for term in query
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
        {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) else {
                return Err(format!("invalid field selector: {term:?}"));
            };
            if !matches!(f, "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {f}"));
            }
            out.fields.push((f.to_owned(), v.to_owned()));
        }
        Ok(out)
    }

    /// Whether `obj` (in `namespace` when the request named one) matches.
    pub fn matches(&self, obj: &Value, namespace: Option<&str>) -> bool {
        let meta = &obj["metadata"];
        if namespace.is_some_and(|n| meta["namespace"] != n) {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v.as_str()),
            Req::Ne(k, v) => label(k) != Some(v.as_str()),
            Req::Exists(k) => label(k).is_some(),
            Req::Absent(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(f, v)| {
            let field = f.trim_start_matches("metadata.");
            meta[field].as_str().unwrap_or_default() == v
        });
        labels_ok && fields_ok
    }
}

/// The `PartialObjectMetadata` form of an object.
pub(crate) fn metadata_only(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": obj["metadata"].clone()})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(label: &str) -> Result<Selector, String> {
        Selector::parse(&BTreeMap::from([(
            "labelSelector".to_owned(),
            label.to_owned(),
        )]))
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let obj = json!({"metadata": {"name": "a", "namespace": "shop",
                          "labels": {"app": "web", "tier": "front"}}});
        let table = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("tier", true),
            ("!tier", false),
            ("!canary", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("", true),
        ];
        for (s, want) in table {
            assert_eq!(sel(s).unwrap().matches(&obj, None), want, "{s}");
        }
        assert!(!Selector::default().matches(&obj, Some("other")));
        assert!(sel("app in (web)").is_err());
    }

    #[test]
    fn field_selectors_name_and_namespace_only() {
        let obj = json!({"metadata": {"name": "a", "namespace": "shop"}});
        let q = |f: &str| BTreeMap::from([("fieldSelector".to_owned(), f.to_owned())]);
        assert!(
            Selector::parse(&q("metadata.name=a"))
                .unwrap()
                .matches(&obj, None)
        );
        assert!(
            !Selector::parse(&q("metadata.name=b"))
                .unwrap()
                .matches(&obj, None)
        );
        assert!(
            Selector::parse(&q("status.phase=Running"))
                .unwrap_err()
                .contains("not supported")
        );
    }
}
