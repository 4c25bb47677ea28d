//! `strait proxy capture install|remove`: the nftables rules that bring a
//! pod's traffic to its sidecar without the app knowing (what an init
//! container or a host agent runs, as root, in the pod's network
//! namespace). The rules text comes from `strait_proxy::capture::rules`;
//! this applies it with `nft -f -`, in the current network namespace or,
//! with `--netns`, through `ip netns exec`.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::{Args, Subcommand};
use strait_proxy::capture::rules::{self, Cidr, Inbound, Own, Rules};

/// Subcommands of `strait proxy`.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Transparent capture: install or remove the nftables rules that
    /// redirect a pod's TCP to its sidecar.
    #[command(subcommand)]
    Capture(CaptureCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    Install(InstallArgs),
    Remove(RemoveArgs),
}

/// Redirect the pod's outbound TCP (and, with --app-ports, inbound TCP to
/// the app) to the sidecar: one nftables table, `inet strait`, replaced
/// whole on every install.
///
/// The sidecar's own connections are recognised by its uid or its socket
/// mark (one is required); connections to 127.0.0.1 and ::1 are never
/// redirected. The sidecar config must listen where the rules send
/// traffic: `capture: { outbound: 127.0.0.1:15002 }`.
///
///   strait proxy capture install --netns pod1 --proxy-uid 1337
///   strait proxy capture install --proxy-uid 1337 --app-ports 8080,9090 \
///       --exclude-ports 22 --exclude-cidrs 169.254.169.254/32
///   strait proxy capture install --proxy-uid 1337 --dry-run   # print the rules
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InstallArgs {
    /// A named network namespace (`ip netns`) instead of the current one.
    #[arg(long)]
    netns: Option<String>,
    /// The uid the sidecar runs as; its connections are not redirected.
    #[arg(
        long,
        required_unless_present = "proxy_mark",
        conflicts_with = "proxy_mark"
    )]
    proxy_uid: Option<u32>,
    /// The mark on the sidecar's sockets (decimal or 0x hex); its
    /// connections are not redirected.
    #[arg(long, value_parser = parse_mark)]
    proxy_mark: Option<u32>,
    /// The sidecar's capture port (`capture.outbound` of its config).
    #[arg(long, default_value_t = 15002)]
    outbound_port: u16,
    /// Where inbound TCP to the app ports goes: the sidecar's mTLS inbound
    /// port [default: 15006 when --app-ports is given].
    #[arg(long)]
    inbound_port: Option<u16>,
    /// App ports whose inbound TCP goes to the sidecar (comma-separated).
    #[arg(long, value_delimiter = ',')]
    app_ports: Vec<u16>,
    /// Destination ports never redirected (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_ports: Vec<u16>,
    /// Destination CIDRs never redirected (comma-separated, v4 or v6).
    #[arg(long, value_delimiter = ',')]
    exclude_cidrs: Vec<String>,
    /// Print the ruleset instead of installing it.
    #[arg(long)]
    dry_run: bool,
}

/// Remove the capture rules (the `inet strait` table); nothing else is
/// touched, and removing twice is fine.
///
///   strait proxy capture remove --netns pod1
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RemoveArgs {
    /// A named network namespace (`ip netns`) instead of the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Print the ruleset instead of applying it.
    #[arg(long)]
    dry_run: bool,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        Ok(0) => Err("0 is no mark (unmarked sockets have it)".into()),
        Ok(m) => Ok(m),
        Err(_) => Err(format!(
            "{s:?} is not a mark (want a number, e.g. 1337 or 0x539)"
        )),
    }
}

pub fn run(cmd: ProxyCommand) -> anyhow::Result<()> {
    let ProxyCommand::Capture(cmd) = cmd;
    match cmd {
        CaptureCommand::Install(a) => install(a),
        CaptureCommand::Remove(a) => {
            let text = rules::remove();
            if a.dry_run {
                print!("{text}");
                return Ok(());
            }
            apply(a.netns.as_deref(), &text)?;
            println!("capture removed{}", place(a.netns.as_deref()));
            Ok(())
        }
    }
}

fn install(a: InstallArgs) -> anyhow::Result<()> {
    let own = match (a.proxy_uid, a.proxy_mark) {
        (Some(uid), _) => Own::Uid(uid),
        (None, Some(mark)) => Own::Mark(mark),
        (None, None) => anyhow::bail!("name the sidecar's --proxy-uid or --proxy-mark"),
    };
    let exclude_cidrs = a
        .exclude_cidrs
        .iter()
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()?;
    let inbound = match (a.inbound_port, a.app_ports.is_empty()) {
        (None, true) => None,
        (port, _) => Some(Inbound {
            port: port.unwrap_or(15006),
            app_ports: a.app_ports.clone(),
        }),
    };
    let r = Rules {
        own,
        outbound_port: a.outbound_port,
        inbound,
        exclude_ports: a.exclude_ports,
        exclude_cidrs,
    };
    let text = rules::install(&r)?;
    if a.dry_run {
        print!("{text}");
        return Ok(());
    }
    apply(a.netns.as_deref(), &text)?;
    let who = match r.own {
        Own::Uid(u) => format!("uid {u}"),
        Own::Mark(m) => format!("mark {m:#x}"),
    };
    print!(
        "capture installed{}: outbound TCP -> :{} (except {who}, 127.0.0.1 and ::1",
        place(a.netns.as_deref()),
        r.outbound_port
    );
    if !r.exclude_ports.is_empty() || !r.exclude_cidrs.is_empty() {
        print!(", excluded ports and CIDRs");
    }
    print!(")");
    if let Some(i) = &r.inbound {
        print!(
            "; inbound TCP to app ports {:?} -> :{}",
            i.app_ports, i.port
        );
    }
    println!();
    Ok(())
}

fn place(netns: Option<&str>) -> String {
    netns.map_or_else(String::new, |n| format!(" in netns {n}"))
}

/// `nft -f -` with `text` on stdin, in `netns` when named.
fn apply(netns: Option<&str>, text: &str) -> anyhow::Result<()> {
    let mut cmd = match netns {
        Some(ns) => {
            if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
                anyhow::bail!("--netns: {ns:?} is not a network namespace name");
            }
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let shown = if netns.is_some() {
        "ip netns exec"
    } else {
        "nft"
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot run `{shown}` (is nftables installed? apt-get install nftables)")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .context("writing the ruleset to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        anyhow::bail!(
            "nft refused the ruleset ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_mark;

    #[test]
    fn marks_are_decimal_or_hex_and_never_zero() {
        assert_eq!(parse_mark("1337"), Ok(1337));
        assert_eq!(parse_mark("0x539"), Ok(1337));
        assert!(parse_mark("0").unwrap_err().contains("no mark"));
        assert!(parse_mark("mark").unwrap_err().contains("\"mark\""));
    }
}
