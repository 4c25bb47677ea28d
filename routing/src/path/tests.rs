use strait_api::snapshot::{EscapedSlashes, PathParameters, PathPolicy};

use super::*;

const STRICT: PathPolicy = PathPolicy {
    escaped_slashes: EscapedSlashes::Reject,
    parameters: PathParameters::Reject,
    case_insensitive: false,
};
const DECODE: PathPolicy = PathPolicy {
    escaped_slashes: EscapedSlashes::Decode,
    ..STRICT
};
const KEEP: PathPolicy = PathPolicy {
    escaped_slashes: EscapedSlashes::Keep,
    parameters: PathParameters::Keep,
    case_insensitive: false,
};

/// (input, canonical form under the default policy, or the refusal's
/// reason label).
#[test]
fn canonicalizes_or_refuses_under_the_default_policy() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("/", Ok("/")),
        ("/a/b", Ok("/a/b")),
        ("/a/b/", Ok("/a/b/")),
        ("/a/./b", Ok("/a/b")),
        ("/a/../b", Ok("/b")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/..", Ok("/")),
        ("/../../admin", Ok("/admin")),
        ("/x/../admin", Ok("/admin")),
        ("/./admin", Ok("/admin")),
        ("//admin", Ok("/admin")),
        ("///admin//x", Ok("/admin/x")),
        ("/a///b", Ok("/a/b")),
        ("/%2e%2e/admin", Ok("/admin")),
        ("/a/%2E%2E/admin", Ok("/admin")),
        ("/a/.%2e/admin", Ok("/admin")),
        ("/a/%2e/b", Ok("/a/b")),
        ("/%61dmin", Ok("/admin")),
        ("/%41", Ok("/A")),
        ("/%7euser", Ok("/~user")),
        ("/%2d%5f%30", Ok("/-_0")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%3cb", Ok("/a%3Cb")),
        ("/a%3Bb", Ok("/a%3Bb")),
        ("/%25", Ok("/%25")),
        ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
        ("/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/café", Ok("/caf%C3%A9")),
        ("/a{b}|c", Ok("/a%7Bb%7D%7Cc")),
        ("/a\"<>^`[]", Ok("/a%22%3C%3E%5E%60%5B%5D")),
        ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
        ("/ADMIN", Ok("/ADMIN")),
        ("/..a/b..", Ok("/..a/b..")),
        ("/...", Ok("/...")),
        ("", Err("path_empty")),
        ("admin", Err("path_not_absolute")),
        ("*", Err("path_not_absolute")),
        ("%2e%2e/admin", Err("path_not_absolute")),
        ("/a%2", Err("path_bad_percent")),
        ("/a%", Err("path_bad_percent")),
        ("/%zz", Err("path_bad_percent")),
        ("/a%+1", Err("path_bad_percent")),
        ("/a%g0", Err("path_bad_percent")),
        ("/admin%2f", Err("path_escaped_slash")),
        ("/%2Fadmin", Err("path_escaped_slash")),
        ("/a%5C..%5Cadmin", Err("path_escaped_slash")),
        ("/a%5c", Err("path_escaped_slash")),
        ("\\admin", Err("path_backslash")),
        ("/a\\..\\admin", Err("path_backslash")),
        ("/a;x=1/b", Err("path_parameter")),
        ("/admin;x", Err("path_parameter")),
        ("/x/..;/admin", Err("path_parameter")),
        ("/a%00", Err("path_control_byte")),
        ("/a%0a", Err("path_control_byte")),
        ("/a%0D%0A", Err("path_control_byte")),
        ("/a%7f", Err("path_control_byte")),
        ("/a\0", Err("path_control_byte")),
        ("/a b", Err("path_control_byte")),
        ("/a\tb", Err("path_control_byte")),
        ("/a\r\nb", Err("path_control_byte")),
        ("/a\u{7f}", Err("path_control_byte")),
    ];
    for (raw, want) in cases {
        let got = canonicalize(raw, STRICT);
        assert_eq!(
            got.as_deref().map_err(PathError::reason),
            *want,
            "{raw:?} -> {got:?}"
        );
    }
}

#[test]
fn refusals_name_where_the_path_is_ambiguous() {
    assert_eq!(
        canonicalize("/ab%2f", STRICT),
        Err(PathError::EscapedSlash(3))
    );
    assert_eq!(canonicalize("/a;b", STRICT), Err(PathError::Parameter(2)));
    assert_eq!(canonicalize("/%zz", STRICT), Err(PathError::BadPercent(1)));
    assert_eq!(
        canonicalize("/a%00", STRICT),
        Err(PathError::ControlByte { at: 2, byte: 0 })
    );
    let msg = canonicalize("/admin%2F", STRICT).unwrap_err().to_string();
    assert!(msg.contains("%2F") && msg.contains("opt in"), "{msg}");
}

/// (input, with `escaped_slashes: decode`, with `keep` (and parameters
/// kept)).
#[test]
fn escaped_slash_and_parameter_opt_ins() {
    let cases: &[(&str, Result<&str, &str>, &str)] = &[
        ("/admin%2f", Ok("/admin/"), "/admin%2F"),
        ("/%2Fadmin", Ok("/admin"), "/%2Fadmin"),
        ("/a%2fb", Ok("/a/b"), "/a%2Fb"),
        ("/a%5C..%5Cadmin", Ok("/admin"), "/a%5C..%5Cadmin"),
        ("\\admin", Ok("/admin"), "%5Cadmin"),
        ("/a\\..\\admin", Ok("/admin"), "/a%5C..%5Cadmin"),
        ("/x/%2e%2e%2fadmin", Ok("/admin"), "/x/..%2Fadmin"),
        ("/a;x=1/b", Err("path_parameter"), "/a;x=1/b"),
        ("/x/..;/admin", Err("path_parameter"), "/x/..;/admin"),
        ("/g%2Fp/..", Ok("/g/"), "/"),
    ];
    for (raw, decode, keep) in cases {
        let got = canonicalize(raw, DECODE);
        assert_eq!(
            got.as_deref().map_err(PathError::reason),
            *decode,
            "{raw:?}"
        );
        // `\admin` is not absolute once `\` is kept as data.
        let got = canonicalize(raw, KEEP);
        if raw.starts_with('\\') {
            assert_eq!(got, Err(PathError::NotAbsolute), "{raw:?}");
        } else {
            assert_eq!(got.as_deref(), Ok(*keep), "{raw:?}");
        }
    }
}

#[test]
fn canonical_paths_are_fixed_points() {
    let inputs = [
        "/a/./b/../c//d/",
        "/%2e%2e/%61dmin",
        "/a%2fb",
        "/a;b/..;/c",
        "/caf%c3%a9",
        "/a{b}",
        "/x/%2e%2e%2fadmin",
        "/a%5c",
        "/%7e",
        "/..%2F..",
        "/a/b/..",
    ];
    for policy in [STRICT, DECODE, KEEP] {
        for raw in inputs {
            if let Ok(c) = canonicalize(raw, policy) {
                assert_eq!(
                    canonicalize(&c, policy).as_ref(),
                    Ok(&c),
                    "{raw:?} {policy:?}"
                );
            }
        }
    }
}

#[test]
fn case_folding_is_for_matching_only() {
    let c = canonicalize("/ADMIN/%61", STRICT).unwrap();
    assert_eq!(c, "/ADMIN/a");
    assert_eq!(for_matching(&c, false), "/ADMIN/a");
    assert_eq!(for_matching(&c, true), "/admin/a");
    assert!(matches!(for_matching("/admin", true), Cow::Borrowed(_)));
}

#[test]
fn routing_uses_the_lenient_canonical_form_or_the_raw_path() {
    for (raw, want) in [
        ("/api/../slow", "/slow"),
        ("//slow/x", "/slow/x"),
        ("/%73low", "/slow"),
        ("/a;x/b", "/a;x/b"),
        ("/a%2Fb", "/a%2Fb"),
        ("/plain", "/plain"),
        ("/%zz/../slow", "/%zz/../slow"),
    ] {
        assert_eq!(for_routing(raw), want, "{raw}");
    }
}
