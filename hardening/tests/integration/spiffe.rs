//! SPIFFE IDs: valid IDs round trip; near-valid and random strings are
//! accepted exactly when they satisfy the spec, re-checked independently.

use proptest::prelude::*;
use strait_api::SpiffeId;
use strait_hardening::spiffe::{check, check_str, spec_ok};

use crate::support::config;

const TD: &str = "[a-z0-9._-]{1,24}";
const SEG: &str = "[A-Za-z0-9._-]{1,12}";

fn valid_id() -> impl Strategy<Value = String> {
    let seg = SEG.prop_filter("dot segment", |s| s != "." && s != "..");
    (TD, prop::collection::vec(seg, 0..6)).prop_map(|(td, segs)| {
        let mut s = format!("spiffe://{td}");
        for seg in segs {
            s.push('/');
            s.push_str(&seg);
        }
        s
    })
}

proptest! {
    #![proptest_config(config(4096, 0x5b1ffe))]
    #[test]
    fn valid_ids_round_trip_through_display(s in valid_id()) {
        let id = SpiffeId::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(id.to_string(), s.clone());
        check_str(&s);
    }

    #[test]
    fn workload_ids_expose_namespace_and_service_account(ns in SEG, sa in SEG) {
        prop_assume!(![".", ".."].contains(&ns.as_str()) && ![".", ".."].contains(&sa.as_str()));
        let id = SpiffeId::parse(&format!("spiffe://strait.local/ns/{ns}/sa/{sa}")).unwrap();
        prop_assert_eq!(id.namespace(), Some(ns.as_str()));
        prop_assert_eq!(id.service_account(), Some(sa.as_str()));
    }

    #[test]
    fn near_valid_strings_are_accepted_exactly_when_the_spec_allows(
        tail in "[a-zA-Z0-9./%?#:@_ \u{e9}-]{0,40}",
        scheme in prop::sample::select(vec!["spiffe://", "SPIFFE://", "spiffe:/", "spiffe:///", ""]),
    ) {
        check_str(&format!("{scheme}{tail}"));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check(&bytes);
    }
}

#[test]
fn length_limits_are_exact() {
    let td255 = "a".repeat(255);
    check_str(&format!("spiffe://{td255}"));
    check_str(&format!("spiffe://{td255}a"));
    let head = "spiffe://td/";
    let exact = format!("{head}{}", "x".repeat(2048 - head.len()));
    assert!(spec_ok(&exact).is_ok() && SpiffeId::parse(&exact).is_ok());
    check_str(&format!("{exact}x"));
    check_str(&"spiffe://td/a".repeat(10_000));
}
