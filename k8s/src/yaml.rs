//! Multi-document YAML in and out, as JSON values (the form Kubernetes
//! objects and JSON Patch work on).

use serde::Deserialize;
use serde_json::Value;

/// Why a YAML stream was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum YamlError {
    #[error("document {index}: {reason}")]
    Parse { index: usize, reason: String },
    #[error("document {index}: cannot write it as YAML: {reason}")]
    Write { index: usize, reason: String },
}

/// Every non-empty document of a YAML stream, in order.
pub fn documents(text: &str) -> Result<Vec<Value>, YamlError> {
    strait_api::yaml::check_nesting(text, strait_api::yaml::MAX_YAML_NESTING).map_err(|e| {
        YamlError::Parse {
            index: 1,
            reason: e.to_string(),
        }
    })?;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| YamlError::Parse {
            index: i + 1,
            reason: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// A multi-document stream: each document starts with `---`.
pub fn write(docs: &[Value]) -> Result<String, YamlError> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        let text = serde_yaml_ng::to_string(d).map_err(|e| YamlError::Write {
            index: i + 1,
            reason: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_documents_are_dropped_and_order_is_kept() {
        let docs = documents("---\na: 1\n---\n---\nb: [x]\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]
        );
        let text = write(&docs).unwrap();
        assert_eq!(documents(&text).unwrap(), docs);
    }

    #[test]
    fn a_broken_document_is_named_by_its_index() {
        let e = documents("a: 1\n---\nb: [\n").unwrap_err();
        assert!(e.to_string().starts_with("document 2:"), "{e}");
    }
}
