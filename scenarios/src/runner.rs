//! Runs a scenario: starts its mesh, sends its traffic, plays its timeline,
//! checks its assertions, and returns a report a person can read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;
use strait_api::ClusterName;
use strait_federation::catalog::PolicySpec as FedPolicy;
use strait_proxy::testing::Behaviour;

use crate::mesh::{self, Mesh, MeshSpec};
use crate::spec::{Assertion, DnsCheck, DnsExpect, Scenario, Step, Window};
use crate::traffic::{Generator, Sample};

/// One checked expectation.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub what: String,
    pub passed: bool,
    pub measured: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub passed: bool,
    pub outcomes: Vec<Outcome>,
    pub requests: BTreeMap<String, usize>,
}

impl Report {
    /// The readable form: one line per expectation, then the verdict.
    pub fn render(&self) -> String {
        let mut out = format!("scenario {}\n", self.scenario);
        for (t, n) in &self.requests {
            let _ = writeln!(out, "  traffic {t}: {n} requests");
        }
        for o in &self.outcomes {
            let mark = if o.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "  {mark}  {}  (measured: {})", o.what, o.measured);
        }
        let failed = self.outcomes.iter().filter(|o| !o.passed).count();
        let _ = writeln!(
            out,
            "{}: {} passed, {} failed",
            if self.passed { "PASSED" } else { "FAILED" },
            self.outcomes.len() - failed,
            failed
        );
        out
    }
}

/// The mesh a scenario describes, with its files under `dir` and addresses
/// in the `127.<base_octet>+` range (for tests that drive a mesh by hand).
pub fn mesh_spec(s: &Scenario, dir: &Path, base_octet: u8) -> anyhow::Result<MeshSpec> {
    let clusters = s
        .clusters
        .iter()
        .map(|c| mesh::ClusterSpec {
            name: c.name.clone(),
            region: c.region.clone(),
            zone: c.zone.clone(),
            gateways: c.gateways,
            workloads: c
                .workloads
                .iter()
                .map(|w| mesh::WorkloadSpec {
                    service: w.service.clone(),
                    namespace: w.namespace.clone(),
                    protocol: w.protocol,
                    port: w.port,
                    replicas: w.replicas,
                    behaviour: Behaviour {
                        latency: w.latency.unwrap_or_default(),
                        failure_rate: w.failure_rate,
                    },
                    export: w.export.clone(),
                    zone: w.zone.clone(),
                    authorization: w.authorization.clone(),
                })
                .collect(),
        })
        .collect();
    let mut policies = Vec::new();
    for p in &s.policies {
        let mut f = FedPolicy::new(&strait_federation::catalog::ServiceKey {
            namespace: p.namespace.clone(),
            name: p.service.clone(),
        });
        f.failover = p
            .failover
            .iter()
            .map(|c| ClusterName::new(c))
            .collect::<Result<_, _>>()?;
        if let Some(d) = &p.distribute {
            f.distribute = strait_federation::catalog::policy::parse_distribute(d)
                .map_err(|e| anyhow!("policy {}: {}: {}", p.service, e.field, e.reason))?;
        }
        if p.timeout.is_some() || p.retries.is_some() {
            let mut route = strait_api::snapshot::Route::default();
            if let Some(t) = p.timeout {
                route.timeout = t;
            }
            if let Some(n) = p.retries {
                route.retry.attempts = n;
            }
            f.routes = vec![route];
        }
        policies.push((p.cluster.clone(), f));
    }
    Ok(MeshSpec {
        base_octet,
        dir: dir.to_owned(),
        clusters,
        links: s
            .links
            .iter()
            .map(|[a, b]| (a.clone(), b.clone()))
            .collect(),
        policies,
        lease: s.lease,
    })
}

/// Runs `s` with its files under `dir`, in the `127.<base_octet>+` address
/// range; `progress` gets one line per step.
pub async fn run(
    s: &Scenario,
    dir: &Path,
    base_octet: u8,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    progress(&format!("starting {} cluster(s)", s.clusters.len()));
    let mut mesh = Mesh::start(mesh_spec(s, dir, base_octet)?).await?;
    let result = run_on(s, &mut mesh, progress).await;
    progress("stopping the mesh");
    mesh.shutdown().await;
    result
}

/// The VIP:port of `svc.ns` once `from`'s client sidecar has endpoints
/// for it and listens there (20 s at most).
pub async fn wait_for_vip(
    mesh: &Mesh,
    from: &str,
    ns: &str,
    svc: &str,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = mesh.cluster(from)?;
        if let (Some(vip), Ok(snapshot)) = (c.vip(ns, svc), Ok::<_, ()>(c.client.snapshot())) {
            let svc_cfg = snapshot.service(ns, svc).context("service vanished")?;
            let port = svc_cfg.ports.first().map(|p| p.port).unwrap_or(80);
            let addr = SocketAddr::new(vip, port);
            if !svc_cfg.endpoints.is_empty() && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(addr);
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{svc}.{ns} never reached the client sidecar of {from}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_on(s: &Scenario, mesh: &mut Mesh, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    let mut targets = Vec::new();
    for t in &s.traffic {
        let addr = wait_for_vip(mesh, &t.from, &t.namespace, &t.service).await?;
        targets.push((t, addr));
    }
    // Let every client see every cluster's endpoints before traffic starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let epoch = Instant::now();
    let mut gens: BTreeMap<String, Generator> = BTreeMap::new();
    for (t, addr) in &targets {
        progress(&format!(
            "traffic {}: {} req/s from {} to {}.{} ({addr})",
            t.name, t.rate, t.from, t.service, t.namespace
        ));
        let host = format!("{}.{}.svc.clusterset.local", t.service, t.namespace);
        gens.insert(t.name.clone(), Generator::start(*addr, host, t.rate, epoch));
    }
    let mut outcomes = Vec::new();
    let mut steps: Vec<&Step> = s.timeline.iter().collect();
    steps.sort_by_key(|x| x.at);
    for step in steps {
        tokio::time::sleep_until((epoch + step.at).into()).await;
        let what = do_step(mesh, step, &mut outcomes)
            .await
            .with_context(|| format!("timeline step at {:?}", step.at))?;
        progress(&format!(
            "t={:>5.1}s  {what}",
            epoch.elapsed().as_secs_f64()
        ));
    }
    tokio::time::sleep_until((epoch + s.duration).into()).await;
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for (name, mut g) in gens {
        g.stop();
        samples.insert(name, g.recorder.samples());
    }
    for a in &s.assertions {
        outcomes.push(check(a, &samples));
    }
    Ok(Report {
        scenario: s.name.clone(),
        passed: outcomes.iter().all(|o| o.passed),
        requests: samples.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
        outcomes,
    })
}

async fn do_step(
    mesh: &mut Mesh,
    step: &Step,
    outcomes: &mut Vec<Outcome>,
) -> anyhow::Result<String> {
    if let Some(t) = &step.kill_workload {
        mesh.kill_workload(&t.cluster, &t.service)?;
        return Ok(format!("killed workload {} in {}", t.service, t.cluster));
    }
    if let Some(t) = &step.restart_workload {
        mesh.restart_workload(&t.cluster, &t.service).await?;
        return Ok(format!("restarted workload {} in {}", t.service, t.cluster));
    }
    if let Some(t) = &step.pause_workload {
        mesh.pause_workload(&t.cluster, &t.service, true)?;
        return Ok(format!("paused workload {} in {}", t.service, t.cluster));
    }
    if let Some(t) = &step.resume_workload {
        mesh.pause_workload(&t.cluster, &t.service, false)?;
        return Ok(format!("resumed workload {} in {}", t.service, t.cluster));
    }
    if let Some(g) = &step.kill_gateway {
        mesh.kill_gateway(&g.cluster, g.replica)?;
        return Ok(format!("killed gateway {} of {}", g.replica, g.cluster));
    }
    if let Some(g) = &step.restart_gateway {
        mesh.restart_gateway(&g.cluster, g.replica).await?;
        return Ok(format!("restarted gateway {} of {}", g.replica, g.cluster));
    }
    if let Some(c) = &step.kill_controller {
        mesh.kill_controller(&c.cluster).await?;
        return Ok(format!("killed the controller of {}", c.cluster));
    }
    if let Some(c) = &step.restart_controller {
        mesh.restart_controller(&c.cluster).await?;
        return Ok(format!(
            "restarted the controller of {} from its state directory",
            c.cluster
        ));
    }
    if let Some(p) = &step.partition {
        mesh.partition(p)?;
        return Ok(format!(
            "partitioned the control planes of {}",
            p.join(", ")
        ));
    }
    if let Some(p) = &step.heal {
        mesh.heal(p)?;
        return Ok(format!("healed {}", p.join(", ")));
    }
    if let Some(t) = &step.unexport {
        mesh.set_export(&t.cluster, &t.service, false)?;
        return Ok(format!("unexported {} from {}", t.service, t.cluster));
    }
    if let Some(t) = &step.export {
        mesh.set_export(&t.cluster, &t.service, true)?;
        return Ok(format!("exported {} from {}", t.service, t.cluster));
    }
    if let Some(c) = &step.rotate_certs {
        let n = mesh.rotate_certs(&c.cluster).await?;
        return Ok(format!(
            "re-issued the certificates of {n} sidecars in {}",
            c.cluster
        ));
    }
    if step.rotate_root.is_some() {
        let n = mesh.rotate_root().await?;
        return Ok(format!(
            "rotated the root (add, reissue, drop): each stage confirmed by all {n} components"
        ));
    }
    if let Some(d) = &step.check_dns {
        let o = check_dns(mesh, d).await?;
        let line = format!("dns {}: {}", o.what, o.measured);
        outcomes.push(o);
        return Ok(line);
    }
    Err(anyhow!("empty step"))
}

/// Asks `d.cluster`'s DNS server for `d.name` (A) until the answer is the
/// expected cluster's endpoints or gateway, for up to 3 s.
async fn check_dns(mesh: &Mesh, d: &DnsCheck) -> anyhow::Result<Outcome> {
    let server = mesh.cluster(&d.cluster)?.dns_addr();
    let want = mesh.cluster(&d.expect_cluster)?;
    let expected: Vec<IpAddr> = match d.expect {
        DnsExpect::Gateway => want.gateway_addrs().iter().map(|a| a.ip()).collect(),
        DnsExpect::Endpoints => want
            .workloads
            .iter()
            .flat_map(|w| w.replicas.iter().map(|r| IpAddr::V4(r.ip)))
            .collect(),
    };
    let what = format!(
        "{} from {} answers {} {}",
        d.name,
        d.cluster,
        d.expect_cluster,
        if d.expect == DnsExpect::Gateway {
            "gateway"
        } else {
            "endpoints"
        }
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let matches = |ips: &[IpAddr]| !ips.is_empty() && ips.iter().all(|ip| expected.contains(ip));
    let mut last = Vec::new();
    loop {
        last = crate::demo::query_a(server, &d.name).await.unwrap_or(last);
        let ok = matches(&last);
        if ok || Instant::now() > deadline {
            // Where the `dig` command line is installed (CI installs
            // dnsutils), it must see the same answer.
            let dig = dig_a(server, &d.name).await;
            let passed = ok && dig.as_ref().is_none_or(|ips| matches(ips));
            let measured = match dig {
                Some(ips) => format!("{last:?}; dig: {ips:?}"),
                None => format!("{last:?} (dig not installed)"),
            };
            return Ok(Outcome {
                what,
                passed,
                measured,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `dig +short @server -p port name A`, or `None` when `dig` is missing.
async fn dig_a(server: std::net::SocketAddr, name: &str) -> Option<Vec<IpAddr>> {
    let out = tokio::process::Command::new("dig")
        .args([
            "+short",
            "+time=1",
            "+tries=2",
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            name,
            "A",
        ])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn window<'a>(w: &Window, samples: &'a BTreeMap<String, Vec<Sample>>) -> Vec<&'a Sample> {
    let from = w.from.unwrap_or_default();
    let to = w.to.unwrap_or(Duration::MAX);
    samples
        .get(&w.traffic)
        .map(|v| v.iter().filter(|s| s.at >= from && s.at <= to).collect())
        .unwrap_or_default()
}

fn span(w: &Window) -> String {
    let f = |d: Option<Duration>| d.map(|d| format!("{:.1}s", d.as_secs_f64()));
    format!(
        "{} from {} to {}",
        w.traffic,
        f(w.from).unwrap_or_else(|| "start".into()),
        f(w.to).unwrap_or_else(|| "end".into())
    )
}

fn check(a: &Assertion, samples: &BTreeMap<String, Vec<Sample>>) -> Outcome {
    if let Some(sr) = &a.success_rate {
        let v = window(&sr.window, samples);
        let ok = v.iter().filter(|s| s.ok).count();
        let rate = if v.is_empty() {
            0.0
        } else {
            ok as f64 / v.len() as f64
        };
        return Outcome {
            what: format!("success rate of {} >= {:.3}", span(&sr.window), sr.min),
            passed: !v.is_empty() && rate >= sr.min,
            measured: format!("{rate:.4} ({ok}/{})", v.len()),
        };
    }
    if let Some(sh) = &a.share {
        let v: Vec<&Sample> = window(&sh.window, samples)
            .into_iter()
            .filter(|s| s.ok)
            .collect();
        let n = v
            .iter()
            .filter(|s| s.cluster.as_deref() == Some(sh.cluster.as_str()))
            .count();
        let share = if v.is_empty() {
            0.0
        } else {
            n as f64 / v.len() as f64
        };
        return Outcome {
            what: format!(
                "share of {} served by {} is {:.2} +/- {:.2}",
                span(&sh.window),
                sh.cluster,
                sh.expect,
                sh.tolerance
            ),
            passed: !v.is_empty() && (share - sh.expect).abs() <= sh.tolerance,
            measured: format!("{share:.3} ({n}/{})", v.len()),
        };
    }
    if let Some(nl) = &a.no_lost_requests {
        let v = window(nl, samples);
        let lost: Vec<String> = v
            .iter()
            .filter(|s| !s.ok)
            .take(5)
            .map(|s| format!("t={:.2}s status {}", s.at.as_secs_f64(), s.status))
            .collect();
        let n = v.iter().filter(|s| !s.ok).count();
        return Outcome {
            what: format!("no request lost in {}", span(nl)),
            passed: !v.is_empty() && n == 0,
            measured: if n == 0 {
                format!("0 of {} failed", v.len())
            } else {
                format!("{n} of {} failed: {}", v.len(), lost.join("; "))
            },
        };
    }
    if let Some(ss) = &a.status_share {
        let v = window(&ss.window, samples);
        let n = v.iter().filter(|s| s.status == ss.status).count();
        let share = if v.is_empty() {
            0.0
        } else {
            n as f64 / v.len() as f64
        };
        return Outcome {
            what: format!(
                "share of {} answered {} >= {:.3}",
                span(&ss.window),
                ss.status,
                ss.min
            ),
            passed: !v.is_empty() && share >= ss.min,
            measured: format!("{share:.3} ({n}/{})", v.len()),
        };
    }
    if let Some(ft) = &a.failover_time {
        let first = samples.get(&ft.traffic).and_then(|v| {
            v.iter()
                .filter(|s| s.at >= ft.after && s.ok)
                .find(|s| s.cluster.as_deref() == Some(ft.to_cluster.as_str()))
        });
        let took = first.map(|s| s.at.saturating_sub(ft.after));
        return Outcome {
            what: format!(
                "{} fails over to {} within {:.1}s after t={:.1}s",
                ft.traffic,
                ft.to_cluster,
                ft.max.as_secs_f64(),
                ft.after.as_secs_f64()
            ),
            passed: took.is_some_and(|t| t <= ft.max),
            measured: took
                .map(|t| format!("{:.3}s", t.as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
        };
    }
    Outcome {
        what: "empty assertion".into(),
        passed: false,
        measured: "-".into(),
    }
}
