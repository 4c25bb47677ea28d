//! `strait check`: health checks of running clusters, one line per check
//! with ✓/✗ and the reason; exit code 1 when any fails.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde::Serialize;
use strait_federation::controller::{LinkStatus, Status};

use crate::output::{Format, emit, parse_duration};
use crate::probe::{self, Finding, Target, TargetArgs, Verdict};

/// The zone every cluster's DNS serves.
pub const ZONE: &str = "clusterset.local.";
/// How long one probe (HTTP, TCP, DNS) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Check running clusters: one line per check, ✓ or ✗ and why
///
/// Looks at every cluster of a `strait demo` or of a directory of `strait
/// cluster up` clusters, or at one controller by address:
///
///   strait check                                   # ./strait-mesh, else ./strait-demo
///   strait check --dir ./mesh --cluster east
///   strait check --controller 127.0.0.1:8611 --dns 127.0.0.1:8653 \
///       --gateway 127.0.0.1:15443 --chain ./ctl/chain.pem
///   strait check -o json | jq '.[] | select(.verdict == "fail")'
///
/// Checks, per cluster: the controller answers on its admin port; its
/// certificate and intermediate are valid and not near expiry (less than
/// --expiry-margin or a third of their life left); each link is up and its
/// imported data younger than --lease; this cluster's and every peer's
/// gateways accept TCP connections; DNS answers the clusterset.local zone;
/// the controller reports no conflicts between clusters.
///
/// Exit code: 0 when every check passes, 1 when any fails (or when there
/// is nothing to check).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Only this cluster (by name).
    #[arg(long)]
    cluster: Option<String>,
    /// Imported data older than this fails its link's check.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// A certificate with less than this left (or a third of its life) fails.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    expiry_margin: Duration,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    pub cluster: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// `GET /status` within [`PROBE_TIMEOUT`].
pub async fn fetch_status(admin: SocketAddr) -> anyhow::Result<Status> {
    tokio::time::timeout(
        PROBE_TIMEOUT,
        crate::ops::get_json::<Status>(admin, "/status"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("controller {admin}: no answer within {PROBE_TIMEOUT:?}"))?
}

fn controller_finding(t: &Target, status: &anyhow::Result<Status>) -> Finding {
    match status {
        Ok(s) => {
            if let Some(name) = &t.name {
                if s.cluster.as_str() != name {
                    return Finding::fail(
                        "controller",
                        format!("{} answers as cluster {}, not {name}", t.admin, s.cluster),
                        "another cluster's controller listens there; check the address",
                    );
                }
            }
            Finding::pass(
                "controller",
                format!(
                    "{} answers: {} link(s), {} service(s)",
                    t.admin,
                    s.links.len(),
                    s.services.len()
                ),
            )
        }
        Err(e) => Finding::fail(
            "controller",
            format!("{e:#}"),
            &start_hint(
                t,
                "is `strait controller` running there? its log says why it stopped",
            ),
        ),
    }
}

fn start_hint(t: &Target, otherwise: &str) -> String {
    match (&t.name, &t.dir) {
        (Some(n), Some(d))
            if crate::cluster::layout::Layout::new(d, n)
                .info_file()
                .exists() =>
        {
            format!(
                "start it: strait cluster up {n} --dir {} (logs: {})",
                d.display(),
                crate::cluster::layout::Layout::new(d, n).home().display()
            )
        }
        _ => otherwise.to_owned(),
    }
}

/// One finding per link: up, fresh, not refused.
pub fn link_findings(s: &Status, lease: Duration) -> Vec<Finding> {
    if s.links.is_empty() {
        return vec![Finding::skip(
            "links",
            "none (link clusters with `strait link --from A --to B`)",
        )];
    }
    s.links
        .iter()
        .map(|l| link_finding(format!("link {}", l.peer), l, lease))
        .collect()
}

/// Whether one link is up, its imported data fresh and nothing refused.
pub fn link_finding(name: String, l: &LinkStatus, lease: Duration) -> Finding {
    let peer_hint = format!(
        "is {}'s controller at {} running and reachable? run `strait check` for {}",
        l.peer, l.controller, l.peer
    );
    let Some(sync) = &l.sync else {
        return Finding::fail(name, "no sync attempt yet", &peer_hint);
    };
    let age = sync.age_secs;
    let age_text = age.map_or_else(|| "no data yet".to_owned(), |a| format!("data {a:.1}s old"));
    let error = sync
        .last_error
        .as_ref()
        .map(|e| format!(", last error: {e}"))
        .unwrap_or_default();
    if !sync.up {
        return Finding::fail(name, format!("sync down, {age_text}{error}"), &peer_hint);
    }
    if sync.stale {
        return Finding::fail(
            name,
            format!("imported data is stale, {age_text}{error}"),
            &peer_hint,
        );
    }
    if age.is_none_or(|a| a > lease.as_secs_f64()) {
        return Finding::fail(
            name,
            format!("{age_text}, older than the {}s lease", lease.as_secs()),
            &peer_hint,
        );
    }
    if !sync.refused.is_empty() {
        return Finding::fail(
            name,
            format!("refused from {}: {}", l.peer, sync.refused.join("; ")),
            "the peer exports entries this cluster cannot accept; fix them on the peer",
        );
    }
    Finding::pass(
        name,
        format!("sync up, {age_text}, {} service(s) imported", sync.services),
    )
}

pub fn conflict_finding(s: &Status) -> Finding {
    if s.conflicts.is_empty() {
        return Finding::pass("conflicts", "none");
    }
    let list: Vec<String> = s
        .conflicts
        .iter()
        .map(|c| format!("{} from {}: {}", c.service, c.cluster, c.reason))
        .collect();
    Finding::fail(
        "conflicts",
        list.join("; "),
        "the named cluster's endpoints are left out until its registration agrees (ports, protocol) with the others",
    )
}

pub async fn gateway_finding(check: String, addr: SocketAddr) -> Finding {
    match probe::tcp_connect(addr, PROBE_TIMEOUT).await {
        Ok(()) => Finding::pass(check, format!("{addr} accepts connections")),
        Err(e) => Finding::fail(
            check,
            format!("{addr}: {e}"),
            "is `strait gateway` running there? other clusters reach this cluster's services only through it",
        ),
    }
}

pub async fn dns_finding(addr: SocketAddr) -> Finding {
    let check = format!("dns {addr}");
    match probe::dns_query(addr, ZONE, RecordType::SOA).await {
        Ok(a) if a.rcode == ResponseCode::NoError && a.authoritative && a.records > 0 => {
            Finding::pass(check, "answers clusterset.local (authoritative SOA)")
        }
        Ok(a) => Finding::fail(
            check,
            format!(
                "asked SOA of clusterset.local: {}{}",
                a.rcode,
                if a.authoritative {
                    ""
                } else {
                    ", not authoritative"
                }
            ),
            "this is not Strait's DNS, or it serves another zone",
        ),
        Err(e) => Finding::fail(
            check,
            format!("{e:#}"),
            "is `strait dns` (or `dns:` in the controller config) running there?",
        ),
    }
}

async fn check_one(t: &Target, args: &CheckArgs) -> Vec<Finding> {
    if !t.started {
        let name = t.name.clone().unwrap_or_default();
        return vec![Finding::fail(
            "controller",
            format!("cluster {name} is not running (stopped by `strait cluster down`)"),
            &start_hint(t, ""),
        )];
    }
    let status = fetch_status(t.admin).await;
    let mut out = vec![controller_finding(t, &status)];
    // What the controller presents now (its /trust), else its files.
    let live = crate::ops::get_json::<strait_ca::trust::TrustReport>(t.admin, "/trust")
        .await
        .ok()
        .and_then(|r| r.chain);
    let now = time::OffsetDateTime::now_utc();
    out.push(match (live, &t.chain) {
        (Some(pem), _) => probe::validity_finding(
            probe::parse_chain(&pem, "the controller's /trust"),
            "presented by the controller",
            args.expiry_margin,
            now,
        ),
        (None, Some(chain)) => probe::chain_finding(chain, args.expiry_margin, now),
        (None, None) => Finding::skip(
            "certificates",
            "pass --chain FILE (the controller's chain.pem) to check their expiry",
        ),
    });
    if let Ok(s) = &status {
        out.extend(link_findings(s, args.lease));
    }
    for g in &t.gateways {
        out.push(gateway_finding("gateway".into(), *g).await);
    }
    if let Ok(s) = &status {
        for l in &s.links {
            for g in &l.gateways {
                out.push(gateway_finding(format!("gateway of {}", l.peer), *g).await);
            }
        }
    }
    out.push(match t.dns {
        Some(d) => dns_finding(d).await,
        None => Finding::skip("dns", "pass --dns ADDR to query this cluster's DNS"),
    });
    if let Ok(s) = &status {
        out.push(conflict_finding(s));
    }
    out
}

fn render(lines: &Vec<CheckLine>) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for l in lines {
        if current != Some(l.cluster.as_str()) {
            out.push_str(&format!("cluster {}\n", l.cluster));
            current = Some(&l.cluster);
        }
        out.push_str(&l.finding.line("  "));
    }
    let failed = lines
        .iter()
        .filter(|l| l.finding.verdict == Verdict::Fail)
        .count();
    let passed = lines
        .iter()
        .filter(|l| l.finding.verdict == Verdict::Pass)
        .count();
    out.push_str(&format!(
        "{} check(s): {passed} passed, {failed} failed, {} skipped\n",
        lines.len(),
        lines.len() - passed - failed
    ));
    out
}

pub fn run(args: CheckArgs, format: Format) -> anyhow::Result<()> {
    let targets = args.target.resolve(args.cluster.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lines: Vec<CheckLine> = rt.block_on(async {
        let mut lines = Vec::new();
        for t in &targets {
            let cluster = t.name.clone().unwrap_or_else(|| t.admin.to_string());
            for finding in check_one(t, &args).await {
                lines.push(CheckLine {
                    cluster: cluster.clone(),
                    finding,
                });
            }
        }
        lines
    });
    emit(format, &lines, render)?;
    let failed = lines
        .iter()
        .filter(|l| l.finding.verdict == Verdict::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} check(s) failed", lines.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(links: serde_json::Value, conflicts: serde_json::Value) -> Status {
        serde_json::from_value(serde_json::json!({
            "cluster": "east", "version": 3, "links": links, "services": [],
            "conflicts": conflicts, "proxies": []
        }))
        .unwrap()
    }

    fn link(sync: serde_json::Value) -> serde_json::Value {
        serde_json::json!([{
            "peer": "west", "identity": "spiffe://strait.local/ns/strait-system/sa/controller-west",
            "controller": "127.0.0.2:8610", "gateways": ["127.0.0.2:15443"],
            "fail_mode": "fail-static", "sync": sync
        }])
    }

    fn sync(up: bool, stale: bool, age: f64) -> serde_json::Value {
        serde_json::json!({
            "peer": "west", "up": up, "stale": stale, "services": 1, "version": 4,
            "age_secs": age, "full_resyncs": 1, "delta_updates": 0,
            "last_error": if up { None } else { Some("connection refused") }, "refused": []
        })
    }

    #[test]
    fn links_pass_only_when_up_fresh_and_within_the_lease() {
        let lease = Duration::from_secs(30);
        let f = link_findings(
            &status(link(sync(true, false, 1.5)), serde_json::json!([])),
            lease,
        );
        assert_eq!(f[0].verdict, Verdict::Pass, "{f:?}");
        assert_eq!(f[0].check, "link west");
        let f = link_findings(
            &status(link(sync(false, false, 1.5)), serde_json::json!([])),
            lease,
        );
        assert_eq!(f[0].verdict, Verdict::Fail);
        assert!(
            f[0].detail.contains("last error: connection refused"),
            "{f:?}"
        );
        assert!(
            f[0].hint.as_deref().unwrap().contains("127.0.0.2:8610"),
            "{f:?}"
        );
        let f = link_findings(
            &status(link(sync(true, true, 1.5)), serde_json::json!([])),
            lease,
        );
        assert!(f[0].detail.contains("stale"), "{f:?}");
        let f = link_findings(
            &status(link(sync(true, false, 45.0)), serde_json::json!([])),
            lease,
        );
        assert!(f[0].detail.contains("older than the 30s lease"), "{f:?}");
        let f = link_findings(
            &status(link(serde_json::Value::Null), serde_json::json!([])),
            lease,
        );
        assert_eq!(f[0].verdict, Verdict::Fail);
        let f = link_findings(&status(serde_json::json!([]), serde_json::json!([])), lease);
        assert_eq!(f[0].verdict, Verdict::Skip);
    }

    #[test]
    fn conflicts_fail_and_name_service_and_cluster() {
        let ok = conflict_finding(&status(serde_json::json!([]), serde_json::json!([])));
        assert_eq!(ok.verdict, Verdict::Pass);
        let s = status(
            serde_json::json!([]),
            serde_json::json!([{"service": "demo/echo", "cluster": "west", "reason": "ports differ"}]),
        );
        let f = conflict_finding(&s);
        assert_eq!(f.verdict, Verdict::Fail);
        assert_eq!(f.detail, "demo/echo from west: ports differ");
    }

    #[tokio::test]
    async fn dns_and_gateway_probes_fail_on_closed_ports() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        let f = gateway_finding("gateway".into(), addr).await;
        assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
        drop(free);
        let f = gateway_finding("gateway".into(), addr).await;
        assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let f = dns_finding(udp.local_addr().unwrap()).await;
        assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
        assert!(f.detail.contains("no DNS answer"), "{f:?}");
    }

    #[tokio::test]
    async fn dns_check_passes_against_strait_dns() {
        let cluster = strait_api::ClusterName::new("east").unwrap();
        let view = strait_dns::ViewHandle::new(strait_dns::DnsView::new(cluster)).unwrap();
        let server = strait_dns::run(
            strait_dns::DnsConfig::new("127.0.0.1:0".parse().unwrap()),
            view,
            strait_dns::DnsMetrics::default(),
        )
        .await
        .unwrap();
        let f = dns_finding(server.udp_addr()).await;
        assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
        let _ = server.shutdown().await;
    }
}
