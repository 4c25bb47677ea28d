//! The `strait` binary as an operator runs it.

mod support;

use support::*;

#[test]
fn ca_init_intermediate_issue_verify_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = ok(
        d,
        &[
            "ca",
            "init",
            "--trust-domain",
            "strait.local",
            "--out",
            "ca",
        ],
    );
    assert!(
        out.contains("created root CA for trust domain strait.local"),
        "{out}"
    );
    ok(
        d,
        &["ca", "intermediate", "--ca-dir", "ca", "--cluster", "east"],
    );
    let json = ok(
        d,
        &[
            "-o",
            "json",
            "ca",
            "issue",
            "--ca-dir",
            "ca",
            "--cluster",
            "east",
            "--spiffe-id",
            "spiffe://strait.local/ns/default/sa/web",
            "--out",
            "web",
            "--ttl",
            "2h",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://strait.local/ns/default/sa/web");
    let verified = ok(
        d,
        &["ca", "verify", "--ca-dir", "ca", "--chain", "web/chain.pem"],
    );
    assert_eq!(
        verified.trim(),
        "valid: spiffe://strait.local/ns/default/sa/web"
    );
    let yaml = ok(
        d,
        &[
            "-o",
            "yaml",
            "ca",
            "token",
            "create",
            "--ca-dir",
            "ca",
            "--cluster",
            "east",
            "--service-account",
            "web",
        ],
    );
    assert!(yaml.contains("token: strait-bt-"), "{yaml}");
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: &[(&[&str], &str)] = &[
        (
            &["ca", "init", "--trust-domain", "Bad_Domain!", "--out", "x"],
            "trust domain contains 'B'",
        ),
        (
            &[
                "ca",
                "intermediate",
                "--ca-dir",
                "nowhere",
                "--cluster",
                "east",
            ],
            "no CA at nowhere",
        ),
        (
            &["ca", "init", "--out", "ca", "--ttl", "5w"],
            "is not a duration; use a number with ms, s, m, h or d",
        ),
    ];
    for (args, want) in cases {
        let out = strait(d, args);
        assert_eq!(
            out.status.code(),
            if want.contains("duration") {
                Some(2)
            } else {
                Some(1)
            },
            "{args:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    ok(d, &["ca", "init", "--out", "ca"]);
    ok(
        d,
        &["ca", "intermediate", "--ca-dir", "ca", "--cluster", "east"],
    );
    let out = strait(d, &["ca", "init", "--out", "ca"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = strait(
        d,
        &[
            "ca",
            "issue",
            "--ca-dir",
            "ca",
            "--cluster",
            "east",
            "--spiffe-id",
            "spiffe://other.mesh/ns/a/sa/b",
            "--out",
            "o",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside trust domain strait.local"));
    let out = strait(
        d,
        &[
            "ca",
            "issue",
            "--ca-dir",
            "ca",
            "--cluster",
            "west",
            "--spiffe-id",
            "spiffe://strait.local/ns/a/sa/b",
            "--out",
            "o",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("strait ca intermediate --cluster west"));
}

#[test]
fn every_command_help_teaches_by_example() {
    let d = tempfile::tempdir().unwrap();
    for (cmd, example) in [
        ("proxy", "strait proxy --config sidecar.yaml"),
        ("gateway", "strait gateway --config gateway.yaml"),
        ("controller", "strait controller --config"),
        ("dns", "strait dns --controller"),
        ("export", "strait export"),
        ("link", "strait link --from"),
        ("status", "strait status"),
        ("check", "strait check"),
        ("diagnose", "strait diagnose"),
        ("demo", "strait demo"),
    ] {
        let help = ok(d.path(), &[cmd, "--help"]);
        assert!(
            help.contains(example),
            "strait {cmd} --help shows no example ({example:?}):\n{help}"
        );
    }
}
