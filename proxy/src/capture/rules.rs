//! The nftables ruleset of transparent capture, as text for `nft -f -`
//! (pure; `strait proxy capture install|remove` applies it).
//!
//! One table, `inet strait`, so removal is one `delete table` and leaves
//! nothing of Strait behind. Outbound: every TCP connection a process of
//! the pod's network namespace opens is redirected to the sidecar's
//! capture port, except the sidecar's own (its uid or its socket mark),
//! connections to the namespace's own loopback host address (127.0.0.1,
//! ::1: the app's local peers, the sidecar's explicit proxy and the
//! capture port itself), and excluded ports and CIDRs. Other loopback
//! addresses (the 127.77.x.y VIPs) are captured. Inbound (optional): TCP
//! arriving for the app's ports is redirected to the sidecar's mTLS
//! inbound port. Each redirect rule counts what it redirected.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The table every rule lives in.
pub const TABLE: &str = "inet strait";

/// Why a capture ruleset cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("{field}: {value:?} is not a CIDR (want ADDRESS/LENGTH, e.g. 10.0.0.0/8 or fd00::/8)")]
    Cidr { field: &'static str, value: String },
    #[error("{field}: port 0 is not a port")]
    ZeroPort { field: &'static str },
    #[error("--app-ports: {port} is also the inbound port; its traffic would loop")]
    AppPortIsInbound { port: u16 },
    #[error("--inbound-port needs --app-ports (which app ports to redirect)")]
    NoAppPorts,
}

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is /32
/// or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = RulesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RulesError::Cidr {
            field: "--exclude-cidrs",
            value: s.to_owned(),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How the rules recognise the sidecar's own connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// The uid the sidecar runs as (`meta skuid`).
    Uid(u32),
    /// The mark on the sidecar's sockets (`meta mark`).
    Mark(u32),
}

/// Inbound capture: app ports redirected to the sidecar's inbound port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub port: u16,
    pub app_ports: Vec<u16>,
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub own: Own,
    pub outbound_port: u16,
    pub inbound: Option<Inbound>,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<Cidr>,
}

fn set<T: fmt::Display>(items: &[T]) -> String {
    let list: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

/// The ruleset to install: replaces any earlier `inet strait` table in one
/// transaction (so installing twice is the same as once).
pub fn install(r: &Rules) -> Result<String, RulesError> {
    if r.outbound_port == 0 {
        return Err(RulesError::ZeroPort {
            field: "--outbound-port",
        });
    }
    if r.exclude_ports.contains(&0) {
        return Err(RulesError::ZeroPort {
            field: "--exclude-ports",
        });
    }
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("table {TABLE}"));
    line(format!("delete table {TABLE}"));
    line(format!("table {TABLE} {{"));
    line("\tchain outbound {".into());
    line("\t\ttype nat hook output priority -100; policy accept;".into());
    line(match r.own {
        Own::Uid(uid) => format!("\t\tmeta skuid {uid} return"),
        Own::Mark(mark) => format!("\t\tmeta mark {mark:#x} return"),
    });
    line("\t\tip daddr 127.0.0.1 return".into());
    line("\t\tip6 daddr ::1 return".into());
    if !r.exclude_ports.is_empty() {
        line(format!("\t\ttcp dport {} return", set(&r.exclude_ports)));
    }
    let (v4, v6): (Vec<Cidr>, Vec<Cidr>) = r.exclude_cidrs.iter().partition(|c| c.addr.is_ipv4());
    if !v4.is_empty() {
        line(format!("\t\tip daddr {} return", set(&v4)));
    }
    if !v6.is_empty() {
        line(format!("\t\tip6 daddr {} return", set(&v6)));
    }
    line(format!(
        "\t\tmeta l4proto tcp counter redirect to :{}",
        r.outbound_port
    ));
    line("\t}".into());
    if let Some(inb) = &r.inbound {
        if inb.port == 0 {
            return Err(RulesError::ZeroPort {
                field: "--inbound-port",
            });
        }
        if inb.app_ports.is_empty() {
            return Err(RulesError::NoAppPorts);
        }
        if inb.app_ports.contains(&0) {
            return Err(RulesError::ZeroPort {
                field: "--app-ports",
            });
        }
        if inb.app_ports.contains(&inb.port) {
            return Err(RulesError::AppPortIsInbound { port: inb.port });
        }
        line("\tchain inbound {".into());
        line("\t\ttype nat hook prerouting priority -100; policy accept;".into());
        line(format!(
            "\t\ttcp dport {} counter redirect to :{}",
            set(&inb.app_ports),
            inb.port
        ));
        line("\t}".into());
    }
    line("}".into());
    Ok(out)
}

/// The ruleset that removes capture (nothing happens when it is not
/// installed).
pub fn remove() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Rules {
        Rules {
            own: Own::Uid(1337),
            outbound_port: 15002,
            inbound: None,
            exclude_ports: vec![],
            exclude_cidrs: vec![],
        }
    }

    const MINIMAL: &str = "table inet strait
delete table inet strait
table inet strait {
\tchain outbound {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta skuid 1337 return
\t\tip daddr 127.0.0.1 return
\t\tip6 daddr ::1 return
\t\tmeta l4proto tcp counter redirect to :15002
\t}
}
";

    #[test]
    fn minimal_ruleset_redirects_all_outbound_tcp_but_the_sidecars_and_localhost() {
        assert_eq!(install(&base()).unwrap(), MINIMAL);
    }

    #[test]
    fn options_add_their_rules() {
        let full = Rules {
            own: Own::Mark(0x539),
            outbound_port: 15002,
            inbound: Some(Inbound {
                port: 15006,
                app_ports: vec![8080, 9090],
            }),
            exclude_ports: vec![22, 53],
            exclude_cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
                "169.254.169.254".parse().unwrap(),
            ],
        };
        let text = install(&full).unwrap();
        for want in [
            "\t\tmeta mark 0x539 return\n",
            "\t\ttcp dport { 22, 53 } return\n",
            "\t\tip daddr { 10.96.0.0/12, 169.254.169.254/32 } return\n",
            "\t\tip6 daddr { fd00::/8 } return\n",
            "\tchain inbound {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\ttcp dport { 8080, 9090 } counter redirect to :15006\n\t}\n}\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("skuid"), "{text}");
        // Exclusions come before the redirect.
        assert!(text.find("dport { 22, 53 }") < text.find("redirect to :15002"));
    }

    #[test]
    fn bad_options_are_refused_naming_the_option() {
        type Change = Box<dyn Fn(&mut Rules)>;
        let cases: Vec<(&str, Change, RulesError)> = vec![
            (
                "zero outbound port",
                Box::new(|r| r.outbound_port = 0),
                RulesError::ZeroPort {
                    field: "--outbound-port",
                },
            ),
            (
                "zero excluded port",
                Box::new(|r| r.exclude_ports = vec![22, 0]),
                RulesError::ZeroPort {
                    field: "--exclude-ports",
                },
            ),
            (
                "inbound without app ports",
                Box::new(|r| {
                    r.inbound = Some(Inbound {
                        port: 15006,
                        app_ports: vec![],
                    });
                }),
                RulesError::NoAppPorts,
            ),
            (
                "app port is the inbound port",
                Box::new(|r| {
                    r.inbound = Some(Inbound {
                        port: 15006,
                        app_ports: vec![8080, 15006],
                    });
                }),
                RulesError::AppPortIsInbound { port: 15006 },
            ),
        ];
        for (name, change, want) in cases {
            let mut r = base();
            change(&mut r);
            assert_eq!(install(&r).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn cidrs_parse_or_name_the_bad_value() {
        for (input, want) in [
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3", Some("10.1.2.3/32")),
            ("fd00::/8", Some("fd00::/8")),
            ("::1", Some("::1/128")),
            ("10.0.0.0/33", None),
            ("fd00::/129", None),
            ("10.0.0/8", None),
            ("10.0.0.0/x", None),
            ("", None),
        ] {
            let got = input.parse::<Cidr>();
            match want {
                Some(w) => assert_eq!(got.unwrap().to_string(), w, "{input}"),
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("--exclude-cidrs") && e.contains(input), "{e}");
                }
            }
        }
    }

    /// `nft --check` (parses and validates against the kernel, commits
    /// nothing) accepts every ruleset we write; needs root and nftables.
    #[test]
    fn nft_accepts_the_rulesets() {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let nft = std::process::Command::new("nft").arg("--version").output();
        if !root || nft.is_err() {
            eprintln!(
                "SKIP nft_accepts_the_rulesets: needs root and nft (apt-get install nftables)"
            );
            return;
        }
        let full = Rules {
            own: Own::Mark(0x539),
            outbound_port: 15002,
            inbound: Some(Inbound {
                port: 15006,
                app_ports: vec![8080, 9090],
            }),
            exclude_ports: vec![22],
            exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        for text in [install(&base()).unwrap(), install(&full).unwrap(), remove()] {
            let mut child = std::process::Command::new("nft")
                .args(["--check", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft refused\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn removal_deletes_only_the_strait_table() {
        assert_eq!(remove(), "table inet strait\ndelete table inet strait\n");
    }
}
