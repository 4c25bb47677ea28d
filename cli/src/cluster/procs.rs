//! Background processes of `strait cluster up|down`: start a role of this
//! same binary with its output in a log file, tell whether a recorded pid
//! is still that process, and stop it (SIGTERM, wait, SIGKILL).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::process::{Pid, Signal, kill_process};

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// Starts `strait <args>` in its own process group (Ctrl-C in the terminal
/// that ran `cluster up` does not reach it), stdout and stderr appended to `log`.
pub fn spawn(args: &[String], log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the strait binary itself")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {} {}", exe.display(), args.join(" ")))
}

/// The process state letter from `/proc/<pid>/stat` (`None`: no such process).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` runs and is not a zombie.
pub fn alive(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        return proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X');
    }
    Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Whether `pid` is still the `strait <role>` process of `cluster` that was
/// recorded (a pid may have been reused by an unrelated program since).
pub fn is_ours(pid: u32, role: &str, cluster: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        // Without /proc we cannot tell; trust the pid file.
        return !Path::new("/proc/self/cmdline").exists();
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let names_cluster = args
        .iter()
        .any(|a| a == cluster || a.contains(&format!("clusters/{cluster}/")));
    // The egress is a `strait proxy` process.
    let verb = if role == "egress" { "proxy" } else { role };
    args.iter().any(|a| a == verb) && names_cluster
}

fn signal(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process(p, sig);
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ended {
    /// It exited after SIGTERM.
    Stopped,
    /// It ignored SIGTERM for the grace period and was killed.
    Killed,
    /// It was not running (any more).
    NotRunning,
    /// It survived SIGKILL (should not happen).
    StillRunning,
}

async fn wait_gone(pids: &[u32], until: Instant) {
    while pids.iter().any(|p| alive(*p)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops every `(pid, ours)`: SIGTERM to all, up to `grace` for them to
/// exit, then SIGKILL. Pids that are not ours are left alone.
pub async fn stop_all(procs: &[(u32, bool)], grace: Duration) -> Vec<Ended> {
    let targets: Vec<u32> = procs.iter().filter(|(_, o)| *o).map(|(p, _)| *p).collect();
    for p in &targets {
        signal(*p, Signal::TERM);
    }
    wait_gone(&targets, Instant::now() + grace).await;
    let stubborn: Vec<u32> = targets.iter().copied().filter(|p| alive(*p)).collect();
    for p in &stubborn {
        signal(*p, Signal::KILL);
    }
    wait_gone(&stubborn, Instant::now() + Duration::from_secs(2)).await;
    procs
        .iter()
        .map(|(pid, ours)| {
            if !ours {
                Ended::NotRunning
            } else if alive(*pid) {
                Ended::StillRunning
            } else if stubborn.contains(pid) {
                Ended::Killed
            } else {
                Ended::Stopped
            }
        })
        .collect()
}

/// The last lines of a log file, for an error message.
pub fn tail(log: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_child_is_not_alive_and_never_ours() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(!is_ours(pid, "controller", "east"));
        assert!(alive(std::process::id()));
        // This test binary runs, but it is no `controller` of `east`.
        assert!(!is_ours(std::process::id(), "controller", "east"));
    }

    #[tokio::test]
    async fn stop_all_terminates_a_process_and_skips_foreign_pids() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // Reap it in the background so it does not linger as a zombie.
        let reaper = std::thread::spawn(move || {
            let mut c = child;
            c.wait()
        });
        let me = std::process::id();
        let ended = stop_all(&[(pid, true), (me, false)], Duration::from_secs(5)).await;
        assert_eq!(ended, vec![Ended::Stopped, Ended::NotRunning]);
        assert!(!reaper.join().unwrap().unwrap().success());
        assert!(alive(me));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&log, 2), "c\nd");
        assert_eq!(tail(&tmp.path().join("none"), 2), "");
    }
}
