//! The JSON Patch (RFC 6902) that turns one JSON value into another, as
//! an admission webhook answers: objects are compared key by key, anything
//! else (arrays included) that differs is replaced whole.
//!
//! A pure function; applying its output to `from` gives `to` exactly
//! (tested here and, with an independent JSON Patch implementation, in
//! `tests/`).

use serde::Serialize;
use serde_json::Value;

/// One JSON Patch operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
}

/// The operations that turn `from` into `to` (none when they are equal).
pub fn diff(from: &Value, to: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    walk(from, to, "", &mut ops);
    ops
}

fn walk(from: &Value, to: &Value, path: &str, ops: &mut Vec<Op>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                ops.push(Op::Remove {
                    path: pointer(path, key),
                });
            }
            for (key, bv) in b {
                let p = pointer(path, key);
                match a.get(key) {
                    None => ops.push(Op::Add {
                        path: p,
                        value: bv.clone(),
                    }),
                    Some(av) => walk(av, bv, &p, ops),
                }
            }
        }
        _ => ops.push(Op::Replace {
            path: path.to_owned(),
            value: to.clone(),
        }),
    }
}

/// `parent/key` with `~` and `/` escaped as RFC 6901 asks.
fn pointer(parent: &str, key: &str) -> String {
    format!("{parent}/{}", key.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal applier for the three operations `diff` emits.
    fn apply(doc: &mut Value, ops: &[Op]) {
        for op in ops {
            let (path, value) = match op {
                Op::Add { path, value } | Op::Replace { path, value } => (path, Some(value)),
                Op::Remove { path } => (path, None),
            };
            if path.is_empty() {
                *doc = value.cloned().unwrap();
                continue;
            }
            let (parent, last) = path.rsplit_once('/').unwrap();
            let key = last.replace("~1", "/").replace("~0", "~");
            let obj = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
            match value {
                Some(v) => obj.insert(key, v.clone()),
                None => obj.remove(&key),
            };
        }
    }

    #[test]
    fn table() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1}), 0),
            (json!({"a": 1}), json!({"a": 2}), 1),
            (json!({"a": 1}), json!({}), 1),
            (json!({}), json!({"m": {"x/y": "1", "t~": 2}}), 1),
            (
                json!({"m": {"k": 1}}),
                json!({"m": {"k": 1, "x/y": "1", "t~": 2}}),
                2,
            ),
            (json!({"l": [1, 2]}), json!({"l": [1, 2, 3]}), 1),
            (json!({"l": [1]}), json!({"l": {"a": 1}}), 1),
            (json!([1]), json!([2]), 1),
        ];
        for (from, to, n) in cases {
            let ops = diff(&from, &to);
            assert_eq!(ops.len(), n, "{from} -> {to}: {ops:?}");
            let mut got = from.clone();
            apply(&mut got, &ops);
            assert_eq!(got, to, "{from} -> {to}: {ops:?}");
        }
    }

    #[test]
    fn keys_with_slash_and_tilde_are_escaped() {
        let ops = diff(&json!({}), &json!({"strait.io/inject": "x", "a~b": 1}));
        let paths: Vec<_> = ops
            .iter()
            .map(|o| match o {
                Op::Add { path, .. } => path.as_str(),
                _ => "",
            })
            .collect();
        assert!(paths.contains(&"/strait.io~1inject"), "{paths:?}");
        assert!(paths.contains(&"/a~0b"), "{paths:?}");
    }
}
