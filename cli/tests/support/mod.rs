//! Driving `strait` processes from tests: run a command, start a role in
//! the background (killed on drop, even when the test panics), wait for a
//! port.

#![allow(dead_code)]

pub mod clusters;
pub mod kubeapi;
pub mod prometheus;
pub mod root;
pub mod sidecars;
pub mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills its child process on drop, even when a test panics.
pub struct Proc(pub Child);

impl Proc {
    /// `kill -9`: no chance to clean up or flush anything.
    pub fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL on Unix
        let _ = self.0.wait();
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn strait(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .current_dir(dir)
        .env_remove("STRAIT_CA_DIR")
        .env_remove("STRAIT_CONTROLLER")
        .env_remove("STRAIT_STATE_DIR")
        .env_remove("STRAIT_LOG")
        .env_remove("STRAIT_DIR")
        .output()
        .expect("run strait")
}

/// Runs `strait args` and returns its stdout; fails the test on error.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = strait(dir, args);
    assert!(
        out.status.success(),
        "strait {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `strait args`, which must fail with exit code 1 and an `error: `
/// line; returns its stderr.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = strait(dir, args);
    assert_eq!(out.status.code(), Some(1), "strait {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Starts `strait args` in the background; its stderr goes to `log`.
pub fn spawn(dir: &Path, args: &[&str], log: &str) -> Proc {
    let err = std::fs::File::create(dir.join(log)).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .current_dir(dir)
        .env_remove("STRAIT_CA_DIR")
        .env_remove("STRAIT_CONTROLLER")
        .env_remove("STRAIT_STATE_DIR")
        .env_remove("STRAIT_DIR")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start strait");
    Proc(child)
}

/// Sleeps between polls (these tests are synchronous, driving processes).
#[allow(clippy::disallowed_methods)]
pub fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Waits up to `secs` for `f` to hold (polling every 100 ms); whether it did.
pub fn holds_within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        pause(100);
    }
    f()
}

pub fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        pause(100);
    }
}

/// `strait ca init` plus one intermediate per cluster, in `dir/ca`.
pub fn ca(dir: &Path, clusters: &[&str]) {
    ok(dir, &["ca", "init", "--out", "ca"]);
    for c in clusters {
        ok(
            dir,
            &["ca", "intermediate", "--ca-dir", "ca", "--cluster", c],
        );
    }
}

/// Issues `id` under `cluster`'s intermediate into `dir/out`.
pub fn issue(dir: &Path, cluster: &str, id: &str, out: &str) {
    ok(
        dir,
        &[
            "ca",
            "issue",
            "--ca-dir",
            "ca",
            "--cluster",
            cluster,
            "--spiffe-id",
            id,
            "--out",
            out,
        ],
    );
}

/// `identity: { files: ... }` for certificates issued into `dir`.
pub fn identity_files(dir: &str) -> String {
    format!(
        "identity: {{ files: {{ chain: {dir}/chain.pem, key: {dir}/key.pem, bundle: {dir}/bundle.pem }} }}\n"
    )
}

/// (role, pid) of a cluster's processes, from `strait cluster up`'s record
/// (`<dir>/clusters/<cluster>/pids.json`); empty when there is none.
pub fn cluster_pids(dir: &Path, cluster: &str) -> Vec<(String, u64)> {
    let path = dir.join("clusters").join(cluster).join("pids.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["role"].as_str().unwrap().to_owned(),
                p["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The body of `GET path` on an admin port (empty when it does not answer).
pub fn admin_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
