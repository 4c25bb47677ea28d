//! Config YAML: mutated seeds of every loader, random bytes, YAML bombs,
//! and the federation directory store naming the bad file.

use std::time::Duration;

use proptest::prelude::*;
use strait_api::{ClusterName, TrustDomain};
use strait_federation::catalog::store::DirectoryStore;
use strait_hardening::yaml::{Loader, SEEDS, check, check_one};

use crate::support::{bytes_or_mutated, config, mutated, within};

pub(crate) const DICT: &[&[u8]] = &[
    b"west",
    b"east",
    b"central",
    b"80",
    b"1",
    b"10s",
    b"http1",
    b"grpc",
    b"tcp",
    b"true",
    b"all",
    b"none",
    b"127.0.0.1:1",
    b"us-west/us-west-1a",
    b"stale",
    b"unhealthy",
    b"web",
    b"50",
    b"100",
    b"1.0",
    b": ",
    b"\n  - ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"~",
    b"-1",
    b"0",
    b"4294967296",
    b"99999999999999999999999",
    b"1e309",
    b".nan",
    b"-.inf",
    b"\"\"",
    b"&a [1] ",
    b"*a",
    b"!!binary AAAA",
    b"<<: {}",
    b"? ",
    b"0.0.0.0:0",
    b"[::]:0",
    b"spiffe://",
    b"spiffe://other/ns/a/sa/b",
    b"0ms",
    b"18446744073709551615s",
    b"999999999h",
    b"us-east/*",
    b"*",
    b"'\\0'",
    b"\t",
    b"#",
    b"limits: {}",
    b"bogus: 1",
    b"\xef\xbb\xbf",
    b"%YAML 1.1\n---\n",
];

fn seeds() -> Vec<Vec<u8>> {
    SEEDS.iter().map(|(_, s)| s.as_bytes().to_vec()).collect()
}

proptest! {
    #![proptest_config(config(4000, 0x4a31))]
    #[test]
    fn mutated_and_random_yaml_never_panics_and_errors_name_a_field(
        bytes in bytes_or_mutated(256, seeds(), DICT),
    ) {
        check(&bytes);
    }
}

#[test]
fn every_seed_loads_with_its_own_loader() {
    for (loader, text) in SEEDS {
        check_one(*loader, text);
    }
    assert!(strait_api::snapshot::Snapshot::from_yaml(SEEDS[0].1).is_ok());
}

#[test]
fn yaml_bombs_are_refused_in_bounded_time() {
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        laughs.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let deep_seq = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let deep_map = "a: {".repeat(5_000);
    let long_scalar = format!("name: {}\nports: []\n", "x".repeat(1 << 20));
    let many_keys: String = (0..5_000).map(|i| format!("k{i}: {i}\n")).collect();
    let many_ports = format!(
        "name: web\nports: [{}]\n",
        (1..=20_000)
            .map(|p| format!("{{port: {p}}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (what, text) in [
        ("billion laughs", laughs),
        ("deep sequence (50k levels)", deep_seq),
        ("deep mapping (5k levels)", deep_map),
        ("1 MiB scalar", long_scalar),
        ("5k unknown keys", many_keys),
        ("20k ports", many_ports),
    ] {
        for loader in Loader::ALL {
            within(Duration::from_secs(5), what, || check_one(loader, &text));
        }
    }
}

#[test]
fn nested_flow_mappings_load_in_linear_time() {
    let text = "a: {".repeat(40_000);
    for loader in Loader::ALL {
        within(
            Duration::from_secs(2),
            "160 KB of nested flow mappings",
            || check_one(loader, &text),
        );
    }
}

proptest! {
    #![proptest_config(config(24, 0xd1e))]
    #[test]
    fn directory_store_names_the_bad_file(
        text in mutated(vec![SEEDS[4].1.as_bytes().to_vec()], DICT),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("services")).unwrap();
        std::fs::write(dir.path().join("services/hostile.yaml"), &text).unwrap();
        let td = TrustDomain::new("strait.local").unwrap();
        let east = ClusterName::new("east").unwrap();
        if let Err(e) = DirectoryStore::open(dir.path(), &td, &east) {
            let msg = e.to_string();
            prop_assert!(msg.contains("hostile.yaml"), "{}", msg);
        }
    }
}
