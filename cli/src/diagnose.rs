//! `strait diagnose <svc> --from <cluster>`: follows one service's path
//! from a cluster (DNS, catalog, trust, gateway, endpoints) and names the
//! first hop that fails, with what to do about it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde::Serialize;
use strait_api::snapshot::Health;
use strait_ca::trust::TrustReport;
use strait_federation::controller::{ServiceStatus, Status};

use crate::check::{PROBE_TIMEOUT, fetch_status, link_finding};
use crate::cluster::layout::certs_dir;
use crate::output::{Format, emit};
use crate::probe::{self, Finding, Target, TargetArgs, Verdict};

/// The lease a link's data is held to (the controller's default).
const LEASE: Duration = Duration::from_secs(30);

/// Follow a service's path from one cluster and name the first hop that fails
///
///   strait diagnose echo -n demo --from east                 # in ./strait-demo or ./strait-mesh
///   strait diagnose reviews -n shop --from east --dir ./mesh -o json
///   strait diagnose reviews -n shop --from east \
///       --controller 127.0.0.1:8611 --dns 127.0.0.1:8653
///
/// Hops, in the order a call from --from takes them:
///   dns        --from's DNS answers <svc>.<ns>.svc.clusterset.local, in line with its catalog
///   catalog    --from's merged catalog knows the service: which clusters have
///              endpoints, which one serves --from now
///   trust      the serving cluster is linked with --from (same root, link up, data fresh)
///   gateway    the serving cluster's gateway accepts connections
///   endpoints  the serving cluster has healthy endpoints
/// (trust and gateway are skipped when --from serves itself.)
///
/// Exit code: 0 when every hop passes, 1 when one fails; the first failing
/// hop is named, with a hint.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DiagnoseArgs {
    /// The service name.
    service: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The cluster the call starts from.
    #[arg(long)]
    from: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub service: String,
    pub from: String,
    /// The cluster that serves --from now (or would, were it healthy).
    pub serving: Option<String>,
    /// The first hop that fails (`None`: the path is healthy).
    pub failed_hop: Option<String>,
    pub hops: Vec<Finding>,
}

/// The cluster whose endpoints a call from `local` goes to: the
/// controller's choice, else (nothing healthy) the local cluster or the
/// first with endpoints.
pub fn serving_cluster(svc: &ServiceStatus) -> Option<String> {
    if let Some(c) = &svc.serving.cluster {
        return Some(c.to_string());
    }
    svc.clusters
        .iter()
        .find(|c| c.local)
        .or_else(|| svc.clusters.first())
        .map(|c| c.cluster.to_string())
}

/// Who an answered address is, from the catalog's point of view (`egress`:
/// the asking cluster's egress address, when known).
fn who(ip: IpAddr, status: &Status, svc: Option<&ServiceStatus>, egress: Option<IpAddr>) -> String {
    if egress == Some(ip) {
        return format!(
            "{ip} (egress of {}: plain clients reach other clusters through it)",
            status.cluster
        );
    }
    if let Some(l) = status
        .links
        .iter()
        .find(|l| l.gateways.iter().any(|g| g.ip() == ip))
    {
        return format!("{ip} (gateway of {})", l.peer);
    }
    if let Some(s) = svc {
        if s.vip == ip {
            return format!("{ip} (the service VIP)");
        }
        if let Some(c) = s
            .clusters
            .iter()
            .find(|c| c.endpoints.iter().any(|e| e.address.ip() == ip))
        {
            return format!("{ip} (endpoint in {})", c.cluster);
        }
    }
    ip.to_string()
}

async fn dns_hop(
    t: &Target,
    name: &str,
    status: Option<&Status>,
    svc: Option<&ServiceStatus>,
) -> Finding {
    let Some(server) = t.dns else {
        return Finding::skip("dns", "DNS address unknown; pass --dns ADDR to ask it");
    };
    let answer = match probe::dns_query(server, name, RecordType::A).await {
        Ok(a) => a,
        Err(e) => {
            return Finding::fail(
                "dns",
                format!("{e:#}"),
                "is the cluster's DNS (`strait dns`) running? `strait check` lists it",
            );
        }
    };
    let healthy_somewhere = svc.is_some_and(|s| {
        s.clusters
            .iter()
            .flat_map(|c| &c.endpoints)
            .any(|e| e.health == Health::Healthy)
    });
    match answer.rcode {
        ResponseCode::NXDomain if svc.is_some() => Finding::fail(
            "dns",
            format!("{server} answers NXDOMAIN for {name}, but the catalog has the service"),
            "the DNS server lags behind its controller: look at its log (is it subscribed to the controller's gRPC address?)",
        ),
        ResponseCode::NXDomain => Finding::pass(
            "dns",
            format!("{server} answers NXDOMAIN for {name}, in line with the catalog (next hop)"),
        ),
        ResponseCode::NoError if !answer.addrs.is_empty() => {
            let list: Vec<String> = answer
                .addrs
                .iter()
                .map(|ip| status.map_or_else(|| ip.to_string(), |s| who(*ip, s, svc, t.egress)))
                .collect();
            Finding::pass("dns", format!("{name} -> {}", list.join(", ")))
        }
        ResponseCode::NoError if healthy_somewhere => Finding::fail(
            "dns",
            format!("{server} has no address for {name} although healthy endpoints exist"),
            "the DNS server lags behind its controller: look at its log",
        ),
        ResponseCode::NoError => Finding::pass(
            "dns",
            format!(
                "{server} has no address for {name}: nothing healthy to answer with (see endpoints)"
            ),
        ),
        other => Finding::fail(
            "dns",
            format!("{server} answers {other} for {name}"),
            "this is not the cluster's Strait DNS, or it does not serve clusterset.local",
        ),
    }
}

fn catalog_hop(
    from: &str,
    ns: &str,
    name: &str,
    status: &anyhow::Result<Status>,
) -> (Finding, Option<ServiceStatus>) {
    let s = match status {
        Ok(s) => s,
        Err(e) => {
            return (
                Finding::fail(
                    "catalog",
                    format!("cannot read {from}'s catalog: {e:#}"),
                    "start the cluster's controller (`strait check` says what is down)",
                ),
                None,
            );
        }
    };
    let Some(svc) = s
        .services
        .iter()
        .find(|x| x.name == name && x.namespace == ns)
    else {
        let elsewhere: Vec<&str> = s
            .services
            .iter()
            .filter(|x| x.name == name)
            .map(|x| x.namespace.as_str())
            .collect();
        let peers: Vec<String> = s.links.iter().map(|l| l.peer.to_string()).collect();
        let mut detail = format!("{from}'s catalog has no service {ns}/{name}");
        if !elsewhere.is_empty() {
            detail.push_str(&format!(
                " (it has {name} in namespace {})",
                elsewhere.join(", ")
            ));
        }
        detail.push_str(&format!(
            "; linked clusters: {}",
            if peers.is_empty() {
                "none".to_owned()
            } else {
                peers.join(", ")
            }
        ));
        return (
            Finding::fail(
                "catalog",
                detail,
                &format!(
                    "register it where it runs (`strait service register -f {name}.yaml`) and export it to {from} (`strait export {name} -n {ns} --to {from}`), on a cluster linked with {from}"
                ),
            ),
            None,
        );
    };
    let per: Vec<String> = svc
        .clusters
        .iter()
        .map(|c| format!("{} ({})", c.cluster, c.endpoints.len()))
        .collect();
    let serving = svc
        .serving
        .cluster
        .as_ref()
        .map_or_else(|| "nobody".to_owned(), ToString::to_string);
    (
        Finding::pass(
            "catalog",
            format!(
                "{ns}/{name} known; endpoints in {}; serving {from} now: {serving} ({})",
                if per.is_empty() {
                    "no cluster".to_owned()
                } else {
                    per.join(", ")
                },
                svc.serving.reason
            ),
        ),
        Some(svc.clone()),
    )
}

/// `mutual`: whether both controllers trust the root the other's
/// certificate chains to (`None`: unknown).
fn trust_hop(from: &str, serving: &str, s: &Status, mutual: Option<bool>) -> Finding {
    if serving == from {
        return Finding::pass(
            "trust",
            format!("{from} serves itself: no link on the path"),
        );
    }
    let Some(l) = s.links.iter().find(|l| l.peer.as_str() == serving) else {
        return Finding::fail(
            "trust",
            format!("{from} has no link with {serving}"),
            &format!("link them: strait link --from {from} --to {serving}"),
        );
    };
    let f = link_finding("trust".into(), l, LEASE);
    if f.verdict != Verdict::Pass {
        return f;
    }
    if mutual == Some(false) {
        return Finding::fail(
            "trust",
            format!("{from} and {serving} do not trust each other's root"),
            "finish the root rotation on both clusters (every bundle must hold the root the other's certificates chain to)",
        );
    }
    let note = if mutual == Some(true) {
        ", each trusts the root the other's certificate chains to"
    } else {
        ""
    };
    Finding::pass(
        "trust",
        format!(
            "linked with {serving} as {}, {}{note}",
            l.identity, f.detail
        ),
    )
}

/// [`mutually_trusted`] from what both controllers of a `cluster up`
/// directory report on `/trust` now, else from their files.
async fn mutual_trust(t: &Target, a: &str, b: &str) -> Option<bool> {
    let dir = t.dir.as_deref()?;
    let live = async {
        let clusters = crate::cluster::layout::clusters(dir).ok()?;
        let admin = |c: &str| clusters.iter().find(|i| i.name == c).map(|i| i.admin);
        let report = |addr| crate::ops::get_json::<TrustReport>(addr, "/trust");
        let (ra, rb) = (report(admin(a)?).await.ok()?, report(admin(b)?).await.ok()?);
        Some(trusts_presented(&ra, &rb) && trusts_presented(&rb, &ra))
    };
    match live.await {
        Some(m) => Some(m),
        None => mutually_trusted(dir, a, b),
    }
}

/// Whether `r` trusts the root `other`'s certificate chains to.
fn trusts_presented(r: &TrustReport, other: &TrustReport) -> bool {
    other.presented_root.as_deref().is_some_and(|p| r.trusts(p))
}

/// Whether each cluster's controller certificate (files in `dir`) chains
/// to a root the other cluster's bundle holds. Bundles may differ (in the
/// middle of a root rotation one holds two roots); what matters is that
/// each side trusts what the other presents. `None` when the files are not
/// there to read.
fn mutually_trusted(dir: &Path, a: &str, b: &str) -> Option<bool> {
    let load = |c: &str| {
        let d = certs_dir(dir, c, "controller");
        let chain = strait_ca::pem::certs(&std::fs::read_to_string(d.join("chain.pem")).ok()?);
        let td = strait_ca::verify::spiffe_id_of(chain.first()?)
            .ok()?
            .trust_domain();
        let pem = std::fs::read_to_string(d.join("bundle.pem")).ok()?;
        let bundle = strait_ca::TrustBundle::from_pem(td, &pem).ok()?;
        Some((bundle, chain))
    };
    let ((bundle_a, chain_a), (bundle_b, chain_b)) = (load(a)?, load(b)?);
    Some(
        strait_ca::trust::chains_to(&bundle_a, &chain_b).is_some()
            && strait_ca::trust::chains_to(&bundle_b, &chain_a).is_some(),
    )
}

async fn gateway_hop(t: &Target, from: &str, serving: &str, s: &Status) -> Finding {
    if serving == from {
        return Finding::skip("gateway", format!("not on the path: {from} serves itself"));
    }
    let Some(l) = s.links.iter().find(|l| l.peer.as_str() == serving) else {
        return Finding::skip(
            "gateway",
            format!("{serving}'s gateways are unknown (no link)"),
        );
    };
    if l.gateways.is_empty() {
        return Finding::fail(
            "gateway",
            format!("{serving} advertises no gateway"),
            &format!("set `gateways:` in {serving}'s controller config and link again"),
        );
    }
    let mut errors = Vec::new();
    for g in &l.gateways {
        match probe::tcp_connect(*g, PROBE_TIMEOUT).await {
            Ok(()) => {
                return Finding::pass(
                    "gateway",
                    format!("{serving}'s gateway {g} accepts connections"),
                );
            }
            Err(e) => errors.push(format!("{g}: {e}")),
        }
    }
    let mut hint = format!(
        "start {serving}'s gateway or open the path to it; calls from {from} to {serving} go only through it"
    );
    if let Some(d) = &t.dir {
        if crate::cluster::layout::Layout::new(d, serving)
            .info_file()
            .exists()
        {
            hint.push_str(&format!(
                " (`strait cluster up {serving} --dir {}` restarts a partly running cluster)",
                d.display()
            ));
        }
    }
    Finding::fail(
        "gateway",
        format!("{serving}'s gateway is unreachable: {}", errors.join("; ")),
        &hint,
    )
}

fn endpoints_hop(serving: Option<&str>, svc: &ServiceStatus) -> Finding {
    let Some(serving) = serving else {
        return Finding::fail(
            "endpoints",
            "no cluster has endpoints of this service",
            "register endpoints for it (`strait service register`)",
        );
    };
    let eps: Vec<_> = svc
        .clusters
        .iter()
        .filter(|c| c.cluster.as_str() == serving)
        .flat_map(|c| &c.endpoints)
        .collect();
    let healthy = eps.iter().filter(|e| e.health == Health::Healthy).count();
    if healthy > 0 {
        return Finding::pass(
            "endpoints",
            format!("{healthy} of {} healthy in {serving}", eps.len()),
        );
    }
    // With the health check's own words (a dead app, a wrong identity...).
    let list: Vec<String> = eps
        .iter()
        .map(|e| {
            let why = e
                .detail
                .as_ref()
                .and_then(|d| d.active_error.as_deref())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            format!(
                "{} {}{why}",
                e.address,
                format!("{:?}", e.health).to_lowercase()
            )
        })
        .collect();
    let hint = if eps.iter().any(|e| e.health == Health::Stale) {
        format!(
            "{serving}'s data is stale: its link is down (see the trust hop and `strait check`)"
        )
    } else {
        format!(
            "the sidecars or apps at these addresses fail {serving}'s health checks; look at them"
        )
    };
    Finding::fail(
        "endpoints",
        format!("no healthy endpoint in {serving}: {}", list.join(", ")),
        &hint,
    )
}

async fn diagnose(args: &DiagnoseArgs, t: &Target) -> Diagnosis {
    let (ns, name, from) = (&args.namespace, &args.service, &args.from);
    let status = fetch_status(t.admin).await;
    let (catalog, svc) = catalog_hop(from, ns, name, &status);
    let fqdn = format!("{name}.{ns}.svc.clusterset.local");
    let mut hops = vec![
        dns_hop(t, &fqdn, status.as_ref().ok(), svc.as_ref()).await,
        catalog,
    ];
    let serving = svc.as_ref().and_then(serving_cluster);
    match (&status, &svc) {
        (Ok(s), Some(svc)) => {
            let serving_name = serving.clone().unwrap_or_default();
            if serving.is_some() {
                let mutual = if serving_name == *from {
                    None
                } else {
                    mutual_trust(t, from, &serving_name).await
                };
                hops.push(trust_hop(from, &serving_name, s, mutual));
                hops.push(gateway_hop(t, from, &serving_name, s).await);
            } else {
                hops.push(Finding::skip("trust", "no cluster to reach"));
                hops.push(Finding::skip("gateway", "no cluster to reach"));
            }
            hops.push(endpoints_hop(serving.as_deref(), svc));
        }
        _ => {
            for hop in ["trust", "gateway", "endpoints"] {
                hops.push(Finding::skip(hop, "not reached: the catalog hop failed"));
            }
        }
    }
    let failed_hop = hops
        .iter()
        .find(|h| h.verdict == Verdict::Fail)
        .map(|h| h.check.clone());
    Diagnosis {
        service: format!("{ns}/{name}"),
        from: from.clone(),
        serving,
        failed_hop,
        hops,
    }
}

fn render(d: &Diagnosis) -> String {
    let mut out = format!("diagnose {} from {}\n", d.service, d.from);
    for h in &d.hops {
        out.push_str(&h.line("  "));
    }
    match &d.failed_hop {
        Some(h) => out.push_str(&format!("first failing hop: {h}\n")),
        None => out.push_str("every hop passes\n"),
    }
    out
}

pub fn run(args: DiagnoseArgs, format: Format) -> anyhow::Result<()> {
    strait_api::ClusterName::new(&args.from)
        .map_err(|e| anyhow::anyhow!("--from: bad cluster name {:?}: {e}", args.from))?;
    let target = args
        .target
        .resolve(Some(&args.from))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no cluster {}", args.from))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let d = rt.block_on(diagnose(&args, &target));
    emit(format, &d, render)?;
    if let Some(hop) = &d.failed_hop {
        let detail = d
            .hops
            .iter()
            .find(|h| &h.check == hop)
            .map(|h| h.detail.clone())
            .unwrap_or_default();
        anyhow::bail!(
            "{} from {}: the {hop} hop fails: {detail}",
            d.service,
            d.from
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
