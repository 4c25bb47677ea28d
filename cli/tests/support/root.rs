//! For the root-only tests (network namespaces, nftables): running a
//! system command, and whether this machine can run them at all.

use std::process::{Command, Output};

/// Runs `cmd args`; panics only when it cannot be started.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

/// Its stdout and stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd args`, which must succeed; its stdout.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why this machine cannot run a root test needing `tools` (as
/// `(tool, version flag)`), if it cannot.
pub fn missing(tools: &[(&str, &str)]) -> Option<String> {
    if !run("id", &["-u"]).stdout.starts_with(b"0\n") {
        return Some("needs root (network namespaces and nftables)".into());
    }
    for (tool, arg) in tools {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!(
                "needs `{tool}` (apt-get install iproute2 nftables curl python3 util-linux)"
            ));
        }
    }
    None
}
