//! Path canonicalization: the properties of `strait_hardening::path::check`
//! (the `path_canonical` fuzz target's entry point) on hostile fixed paths,
//! paths built from the characters that matter, and random bytes.

use proptest::prelude::*;
use strait_api::snapshot::PathPolicy;
use strait_hardening::path::{check, check_str};
use strait_proxy::path::canonicalize;

use crate::support::config;

const HOSTILE: &[&str] = &[
    "",
    "/",
    "//",
    "/..",
    "/../..",
    "/%2e%2e/admin",
    "/%2E%2E%2Fadmin",
    "/.%2e/./admin",
    "/x/..;/admin",
    "/admin;x",
    "/admin%2f",
    "/admin%5C",
    "\\admin",
    "/a\\..\\admin",
    "/%00",
    "/%0a",
    "/%",
    "/%2",
    "/%zz",
    "/%%32%65",
    "/%252e%252e",
    "/%c3%28",
    "/\u{e9}",
    "/a\u{0}b",
    "/ /",
    "/\t",
    "/%7e%7E",
    "/%41%61",
    "/...",
    "/.../..",
    "*",
    "admin",
];

#[test]
fn hostile_paths_hold_every_invariant() {
    for p in HOSTILE {
        check_str(p);
    }
    check_str(&"/..".repeat(10_000));
    check_str(&"/%2e".repeat(10_000));
    check_str(&"%".repeat(10_001));
}

#[test]
fn bypass_forms_of_admin_canonicalize_onto_admin_or_are_refused() {
    for p in [
        "//admin",
        "/x/../admin",
        "/%61dmin",
        "/./admin",
        "/a/%2e%2e/admin",
    ] {
        assert_eq!(
            canonicalize(p, PathPolicy::default()).as_deref(),
            Ok("/admin"),
            "{p}"
        );
    }
    for p in ["/admin;x", "/admin%2f", "/x/..;/admin", "\\admin"] {
        assert!(canonicalize(p, PathPolicy::default()).is_err(), "{p}");
    }
}

proptest! {
    #![proptest_config(config(4096, 0x9a7f))]
    #[test]
    fn built_paths_hold_every_invariant(p in "[/a-zA-Z.;%25FfCc2Ee0\\\\:@ ~_-]{0,32}") {
        check_str(&p);
    }

    #[test]
    fn random_bytes_hold_every_invariant(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check(&bytes);
    }
}
