//! A guard run before YAML is parsed: the YAML parser's time grows with the
//! square of flow-collection nesting (`a: {a: {a: {...`), so deeply nested
//! input is refused before it reaches the parser.

/// Why a YAML document was refused: too deep, or not what was expected.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{0}")]
    TooDeep(String),
    #[error("{0}")]
    Parse(#[from] serde_yaml_ng::Error),
}

/// The one way Strait parses a YAML file or flag: the nesting guard, then
/// serde (whose messages name the field, line and column).
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    check_nesting(text, MAX_YAML_NESTING).map_err(YamlError::TooDeep)?;
    Ok(serde_yaml_ng::from_str(text)?)
}

/// Deepest `{`/`[` nesting Strait's YAML files may use.
pub const MAX_YAML_NESTING: usize = 64;

/// Refuses `text` when flow collections nest deeper than `max` (brackets
/// inside quoted strings and comments are not counted).
pub fn check_nesting(text: &str, max: usize) -> Result<(), String> {
    let (mut depth, mut quote, mut comment) = (0usize, None::<u8>, false);
    let mut prev = b'\n';
    for &b in text.as_bytes() {
        if comment {
            comment = b != b'\n';
        } else if let Some(q) = quote {
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return Err(format!(
                            "yaml nests flow collections deeper than {max} levels"
                        ));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_deep_nesting_and_ignores_quoted_brackets() {
        assert!(check_nesting("a: {b: [1, 2], c: {d: e}}", 3).is_ok());
        assert!(check_nesting(&"a: {".repeat(65), MAX_YAML_NESTING).is_err());
        assert!(check_nesting(&"a: \"{{{{{{\"\n".repeat(100), 2).is_ok());
        assert!(check_nesting("a: 1 # {{{{{{{{\n", 2).is_ok());
    }
}
