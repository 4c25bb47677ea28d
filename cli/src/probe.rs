//! What `strait check` and `strait diagnose` look at: which cluster(s), and
//! small probes with a verdict each (a TCP connect, one DNS query, the
//! validity of a certificate chain).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::meshdir as demo;
use anyhow::{Context, bail};
use clap::Args;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Serialize;

use crate::cluster::layout::{self, certs_dir};

/// The outcome of one check or hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not checked (nothing to check, or not enough to know where to look).
    Skip,
}

impl Verdict {
    pub fn mark(self) -> &'static str {
        match self {
            Self::Pass => "✓",
            Self::Fail => "✗",
            Self::Skip => "-",
        }
    }
}

/// One checked thing with its verdict and reason.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn new(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            verdict,
            detail: detail.into(),
            hint: None,
        }
    }
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Verdict::Pass, detail)
    }
    pub fn fail(check: impl Into<String>, detail: impl Into<String>, hint: &str) -> Self {
        Self {
            hint: Some(hint.to_owned()),
            ..Self::new(check, Verdict::Fail, detail)
        }
    }
    pub fn skip(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(check, Verdict::Skip, detail)
    }

    /// `  ✓ check: detail` plus an indented hint line for failures.
    pub fn line(&self, indent: &str) -> String {
        let mut out = format!(
            "{indent}{} {}: {}\n",
            self.verdict.mark(),
            self.check,
            self.detail
        );
        if let Some(h) = &self.hint {
            out.push_str(&format!("{indent}    hint: {h}\n"));
        }
        out
    }
}

/// Which cluster(s) to look at.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// A directory made by `strait demo` or `strait cluster up`
    /// [default: ./strait-mesh, then ./strait-demo, as every verb].
    #[arg(long, env = "STRAIT_DIR")]
    pub dir: Option<PathBuf>,
    /// The controller's admin address (instead of a directory).
    #[arg(long, env = "STRAIT_CONTROLLER")]
    pub controller: Option<SocketAddr>,
    /// With --controller: the cluster's DNS address, to query it.
    #[arg(long, requires = "controller")]
    pub dns: Option<SocketAddr>,
    /// With --controller: this cluster's gateway address(es), to reach them.
    #[arg(long = "gateway", requires = "controller")]
    pub gateways: Vec<SocketAddr>,
    /// With --controller: the controller's certificate chain (PEM), to
    /// check its expiry.
    #[arg(long, requires = "controller")]
    pub chain: Option<PathBuf>,
}

/// One cluster to look at and what is known about it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Option<String>,
    pub admin: SocketAddr,
    pub dns: Option<SocketAddr>,
    pub gateways: Vec<SocketAddr>,
    /// The controller's certificate chain (leaf + intermediate).
    pub chain: Option<PathBuf>,
    /// `false`: `cluster up` started it once, but it is down now.
    pub started: bool,
    /// The directory it was found in.
    pub dir: Option<PathBuf>,
    /// Its egress address (`cluster up` runs one on the cluster's address).
    pub egress: Option<std::net::IpAddr>,
}

/// The clusters of one directory: `cluster up` clusters, else a demo's.
fn targets_in(dir: &Path) -> anyhow::Result<Vec<Target>> {
    let up = layout::clusters(dir)?;
    if !up.is_empty() {
        return Ok(up
            .into_iter()
            .map(|c| {
                let started = layout::Layout::new(dir, &c.name).pid_file().exists();
                Target {
                    // Its roles hold their certificates from the CA
                    // service: `check` asks the controller's /trust.
                    chain: None,
                    name: Some(c.name),
                    admin: c.admin,
                    dns: Some(c.dns),
                    gateways: vec![c.gateway],
                    started,
                    dir: Some(dir.to_owned()),
                    egress: Some(c.ip),
                }
            })
            .collect());
    }
    if !demo::state_file(dir).exists() {
        bail!(
            "no cluster of `strait cluster up --dir {d}` and no running `strait demo --dir {d}` in {d}; pass another --dir or --controller ADDR",
            d = dir.display()
        );
    }
    let state = demo::read_state(dir, "--controller ADDR")?;
    Ok(state
        .clusters
        .into_iter()
        .filter_map(|c| {
            Some(Target {
                chain: Some(certs_dir(dir, &c.name, "controller").join("chain.pem")),
                admin: c.admin?,
                name: Some(c.name),
                dns: Some(c.dns),
                gateways: c.gateways,
                started: true,
                dir: Some(dir.to_owned()),
                egress: None,
            })
        })
        .collect())
}

impl TargetArgs {
    /// The clusters to look at; `only` picks one by name.
    pub fn resolve(&self, only: Option<&str>) -> anyhow::Result<Vec<Target>> {
        if let Some(admin) = self.controller {
            return Ok(vec![Target {
                name: only.map(str::to_owned),
                admin,
                dns: self.dns,
                gateways: self.gateways.clone(),
                chain: self.chain.clone(),
                started: true,
                dir: None,
                egress: None,
            }]);
        }
        let dirs: Vec<PathBuf> = match &self.dir {
            Some(d) => vec![d.clone()],
            None => crate::meshdir::DEFAULT_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
        };
        let mut first_err = None;
        for d in &dirs {
            match targets_in(d) {
                Ok(all) => {
                    let Some(name) = only else { return Ok(all) };
                    let names: Vec<String> = all.iter().filter_map(|t| t.name.clone()).collect();
                    if let Some(t) = all.into_iter().find(|t| t.name.as_deref() == Some(name)) {
                        return Ok(vec![t]);
                    }
                    first_err.get_or_insert_with(|| {
                        anyhow::anyhow!(
                            "no cluster {name:?} in {} (clusters: {})",
                            d.display(),
                            names.join(", ")
                        )
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if self.dir.is_some() => Err(e),
            _ => bail!(
                "nothing to look at: no `strait demo` or `strait cluster up` in {}; pass --dir DIR or --controller ADDR",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }
    }
}

/// Connects over TCP within `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string().to_lowercase()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// What one DNS query returned.
#[derive(Debug, Clone)]
pub struct DnsAnswer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub addrs: Vec<IpAddr>,
    /// Records of the asked type in the answer section.
    pub records: usize,
}

/// One query over UDP (two tries of 1 s each).
pub async fn dns_query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> anyhow::Result<DnsAnswer> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = false;
    msg.add_query(Query::query(
        Name::from_ascii(name).with_context(|| format!("bad DNS name {name:?}"))?,
        rtype,
    ));
    let id = msg.metadata.id;
    let bytes = msg.to_vec()?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&bytes).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await;
            let Ok(got) = got else { break };
            let n = got.with_context(|| format!("dns {server}"))?;
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if answer.metadata.id != id {
                continue;
            }
            let addrs = answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect();
            let records = answer
                .answers
                .iter()
                .filter(|r| r.record_type() == rtype)
                .count();
            return Ok(DnsAnswer {
                rcode: answer.metadata.response_code,
                authoritative: answer.metadata.authoritative,
                addrs,
                records,
            });
        }
    }
    bail!("no DNS answer from {server} within 2 s (nothing listens on that UDP port?)")
}

/// Validity of a chain file (leaf first, then the intermediate).
#[derive(Debug, Clone)]
pub struct ChainValidity {
    /// `(subject, not_before, not_after)` per certificate.
    pub certs: Vec<(String, time::OffsetDateTime, time::OffsetDateTime)>,
}

pub fn read_chain(path: &Path) -> anyhow::Result<ChainValidity> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_chain(&pem, &path.display().to_string())
}

/// Validity of a PEM chain; `source` names where it came from in errors.
pub fn parse_chain(pem: &str, source: &str) -> anyhow::Result<ChainValidity> {
    let ders = strait_ca::pem::certs(pem);
    if ders.is_empty() {
        bail!("{source}: no CERTIFICATE block");
    }
    let mut certs = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| anyhow::anyhow!("{source}: certificate {i}: {e}"))?;
        let v = x.validity();
        let what = if i == 0 {
            "certificate".to_owned()
        } else {
            "intermediate".to_owned()
        };
        certs.push((what, v.not_before.to_datetime(), v.not_after.to_datetime()));
    }
    Ok(ChainValidity { certs })
}

/// Checks each certificate of a chain: not expired, not yet due, and more
/// than `min(margin, lifetime / 3)` left (certificates renew at 2/3 of life).
pub fn chain_finding(path: &Path, margin: Duration, now: time::OffsetDateTime) -> Finding {
    validity_finding(
        read_chain(path),
        &format!("in {}", path.display()),
        margin,
        now,
    )
}

/// [`chain_finding`] for a chain read elsewhere (`of` says where, e.g.
/// "presented by the controller").
pub fn validity_finding(
    chain: anyhow::Result<ChainValidity>,
    of: &str,
    margin: Duration,
    now: time::OffsetDateTime,
) -> Finding {
    let chain = match chain {
        Ok(c) => c,
        Err(e) => {
            return Finding::fail(
                "certificates",
                format!("{e:#}"),
                "re-issue it: strait ca issue --cluster <name> --spiffe-id spiffe://<td>/ns/strait-system/sa/controller-<name> --out <dir>",
            );
        }
    };
    let mut parts = Vec::new();
    for (what, nb, na) in &chain.certs {
        let life = *na - *nb;
        let left = *na - now;
        let needed = time::Duration::try_from(margin)
            .unwrap_or(time::Duration::MAX)
            .min(life / 3);
        if now < *nb {
            return Finding::fail(
                "certificates",
                format!("{what} {of} is not valid before {nb} (clock skew?)"),
                "check this host's clock (timedatectl) against the CA's",
            );
        }
        if left <= time::Duration::ZERO {
            return Finding::fail(
                "certificates",
                format!("{what} {of} expired at {na}"),
                "with certificate files: re-issue them (strait ca issue); from the CA service: it renews by itself, so check that the cluster's CA service runs (strait cluster up starts it) and the component's log",
            );
        }
        if left < needed {
            return Finding::fail(
                "certificates",
                format!("{what} {of} expires soon: {}", crate::output::expiry(*na)),
                "renew it before it expires; for the intermediate: strait ca intermediate, then re-issue the cluster's certificates",
            );
        }
        parts.push(format!("{what} expires in {}", span(left)));
    }
    Finding::pass("certificates", format!("{} ({of})", parts.join(", ")))
}

/// `364d 23h`, or `7h 59m` under a day.
fn span(d: time::Duration) -> String {
    if d.whole_days() > 0 {
        format!("{}d {}h", d.whole_days(), d.whole_hours() % 24)
    } else {
        format!("{}h {}m", d.whole_hours(), d.whole_minutes() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(dir: &Path, ttl: Duration) -> PathBuf {
        let td = strait_api::TrustDomain::new("strait.local").unwrap();
        let ca = strait_ca::CaDir::init(&dir.join("ca"), &td, Duration::from_secs(86400 * 3650))
            .unwrap();
        let east = strait_api::ClusterName::new("east").unwrap();
        ca.new_intermediate(&east, Duration::from_secs(86400 * 365))
            .unwrap();
        let id = strait_api::SpiffeId::parse("spiffe://strait.local/ns/a/sa/b").unwrap();
        ca.issue(&east, &id, ttl, &dir.join("out")).unwrap().chain
    }

    #[test]
    fn chains_pass_while_fresh_and_fail_near_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let path = chain(tmp.path(), Duration::from_secs(86400));
        let now = time::OffsetDateTime::now_utc();
        let week = Duration::from_secs(7 * 86400);
        let f = chain_finding(&path, week, now);
        assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
        assert!(f.detail.starts_with("certificate expires in 23h "), "{f:?}");
        assert!(
            f.detail.contains("intermediate expires in 364d 23h"),
            "{f:?}"
        );
        // 20 h later a 24 h certificate has less than a third of its life left.
        let later = now + time::Duration::hours(20);
        let f = chain_finding(&path, week, later);
        assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
        assert!(f.detail.starts_with("certificate in"), "{f:?}");
        let f = chain_finding(&path, week, now + time::Duration::days(2));
        assert!(f.detail.contains("expired at"), "{f:?}");
        let f = chain_finding(&path, week, now - time::Duration::hours(2));
        assert!(f.detail.contains("not valid before"), "{f:?}");
        let f = chain_finding(&tmp.path().join("none.pem"), week, now);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(f.detail.contains("cannot read"), "{f:?}");
    }

    #[test]
    fn an_explicit_dir_without_clusters_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let args = TargetArgs {
            dir: Some(tmp.path().to_owned()),
            controller: None,
            dns: None,
            gateways: Vec::new(),
            chain: None,
        };
        let err = format!("{:#}", args.resolve(None).unwrap_err());
        assert!(err.contains("no cluster of `strait cluster up"), "{err}");
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let info = layout::ClusterInfo::on_ip("east", "strait.local", ip, tmp.path().into());
        layout::Layout::new(tmp.path(), "east")
            .write_info(&info)
            .unwrap();
        let t = args.resolve(Some("east")).unwrap();
        assert_eq!(t[0].admin, info.admin);
        assert!(!t[0].started, "no pids.json: not started");
        let err = format!("{:#}", args.resolve(Some("west")).unwrap_err());
        assert!(err.contains("no cluster \"west\""), "{err}");
        assert!(err.contains("clusters: east"), "{err}");
    }
}
