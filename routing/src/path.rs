//! Request path canonicalization: the one form of a path that the
//! destination sidecar authorizes and forwards.
//!
//! What it is: a pure function from the path of a request target (no
//! query) and the service port's [`PathPolicy`] to a canonical path, or a
//! refusal naming why the path has no unambiguous canonical form. In order:
//! 1. every `%XX` is checked (two hex digits) and normalized: unreserved
//!    characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 2.3) are decoded, the
//!    hex of every other escape is upper-cased (6.2.2.1); encoded control
//!    bytes (`%00`-`%1F`, `%7F`) are refused;
//! 2. `%2F`, `%5C` and a raw `\` are refused, or (opt-in) turned into `/`
//!    or kept encoded;
//! 3. `;` (path parameters, which servlet containers strip from a segment)
//!    is refused, or (opt-in) kept as an ordinary character;
//! 4. raw control bytes and spaces are refused; other bytes that may not
//!    appear raw in a path (`"<>[]^`{|}` and non-ASCII) are percent-encoded,
//!    which every decoding server reads as the same character;
//! 5. empty segments are merged (`//a` is `/a`) and `.` and `..` segments
//!    removed (RFC 3986 5.2.4, never above the root); a trailing `/` stays.
//!
//! The result is a fixed point: canonicalizing it again with the same
//! policy gives it back. Matching may fold case ([`PathPolicy`]'s
//! `case_insensitive`); the canonical path itself keeps its case.
//!
//! What it is not: no query handling (the query is forwarded untouched) and
//! no decoding beyond one level (`%252e` stays `%252e`: `%25` is not
//! unreserved, so an app that decodes twice is on its own).

use std::borrow::Cow;
use std::fmt::Write as _;

use strait_api::snapshot::{EscapedSlashes, PathParameters, PathPolicy};

/// Why a path has no unambiguous canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding at byte {0} (needs two hex digits)")]
    BadPercent(usize),
    #[error("an encoded '/' or '\\' (%2F, %5C) at byte {0}; the service's policy does not opt in")]
    EscapedSlash(usize),
    #[error("a backslash at byte {0}; the service's policy does not opt in")]
    Backslash(usize),
    #[error("a path parameter (';') at byte {0}; the service's policy does not opt in")]
    Parameter(usize),
    #[error("a control byte or space {byte:#04x} at byte {at}")]
    ControlByte { at: usize, byte: u8 },
}

impl PathError {
    /// A stable label for `strait-error` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "path_empty",
            Self::NotAbsolute => "path_not_absolute",
            Self::BadPercent(_) => "path_bad_percent",
            Self::EscapedSlash(_) => "path_escaped_slash",
            Self::Backslash(_) => "path_backslash",
            Self::Parameter(_) => "path_parameter",
            Self::ControlByte { .. } => "path_control_byte",
        }
    }
}

/// Unreserved characters (RFC 3986 2.3): decoded when percent-encoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes kept raw in a canonical path besides unreserved ones: the
/// sub-delims (without `;`, handled apart), `:`, `@` and `/`.
fn raw_ok(b: u8) -> bool {
    unreserved(b) || b"!$&'()*+,=:@/".contains(&b)
}

fn control(b: u8) -> bool {
    b <= 0x20 || b == 0x7f
}

/// The canonical form of `path` (a request target's path, without query)
/// under `policy`, or why it has none.
pub fn canonicalize(path: &str, policy: PathPolicy) -> Result<String, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let v = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadPercent(i))?;
                match v {
                    b'/' | b'\\' => match policy.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash(i)),
                        EscapedSlashes::Decode => decoded.push('/'),
                        EscapedSlashes::Keep => push_encoded(&mut decoded, v),
                    },
                    v if control(v) && v != b' ' => {
                        return Err(PathError::ControlByte { at: i, byte: v });
                    }
                    v if unreserved(v) => decoded.push(char::from(v)),
                    v => push_encoded(&mut decoded, v),
                }
                i += 3;
                continue;
            }
            b'\\' => match policy.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::Backslash(i)),
                EscapedSlashes::Decode => decoded.push('/'),
                EscapedSlashes::Keep => push_encoded(&mut decoded, b),
            },
            b';' => match policy.parameters {
                PathParameters::Reject => return Err(PathError::Parameter(i)),
                PathParameters::Keep => decoded.push(';'),
            },
            b if control(b) => return Err(PathError::ControlByte { at: i, byte: b }),
            b if raw_ok(b) => decoded.push(char::from(b)),
            b => push_encoded(&mut decoded, b),
        }
        i += 1;
    }
    if !decoded.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    Ok(remove_dot_segments(&decoded))
}

fn push_encoded(out: &mut String, b: u8) {
    let _ = write!(out, "%{b:02X}");
}

/// Merges empty segments and resolves `.` and `..` (never above the root);
/// a path that ends in a slash or a dot segment keeps a trailing `/`.
fn remove_dot_segments(decoded: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// The form a path is compared with rule and route prefixes in: the path
/// itself, or its ASCII lower case when matching folds case.
pub fn for_matching(canonical: &str, case_insensitive: bool) -> Cow<'_, str> {
    if case_insensitive && canonical.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(canonical.to_ascii_lowercase())
    } else {
        Cow::Borrowed(canonical)
    }
}

/// The path a calling sidecar matches route prefixes against: the
/// canonical form as lenient as possible (escaped slashes and parameters
/// kept), so `/api/../slow` gets the route of `/slow`, as the destination
/// will see it; the raw path when even that fails (the destination will
/// refuse such a request anyway).
pub fn for_routing(raw: &str) -> Cow<'_, str> {
    let lenient = PathPolicy {
        escaped_slashes: EscapedSlashes::Keep,
        parameters: PathParameters::Keep,
        case_insensitive: false,
    };
    match canonicalize(raw, lenient) {
        Ok(c) if c == raw => Cow::Borrowed(raw),
        Ok(c) => Cow::Owned(c),
        Err(_) => Cow::Borrowed(raw),
    }
}

#[cfg(test)]
mod tests;
