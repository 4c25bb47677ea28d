//! Starting a cluster's roles for `strait cluster up`: the CA service,
//! controller, gateway, DNS and egress, in that order, each once the one
//! before is ready.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;
use hickory_proto::rr::RecordType;

use super::layout::{ClusterInfo, Layout, Pids, RoleProc};
use super::{START_TIMEOUT, configs, liveness, procs, progress};

/// Waits until `ready` holds, failing early when the process exits.
async fn wait_ready<F, Fut>(
    role: &str,
    child: &mut Child,
    log: &Path,
    ready: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the {role} exited ({status}) while starting; last lines of {}:\n{}",
                log.display(),
                procs::tail(log, 15)
            );
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the {role} is not ready after {START_TIMEOUT:?}; last lines of {}:\n{}",
                log.display(),
                procs::tail(log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn listening(addr: SocketAddr) -> bool {
    crate::probe::tcp_connect(addr, Duration::from_millis(500))
        .await
        .is_ok()
}

/// Starts controller, gateway and DNS in that order (or only the roles in
/// `only`), each once the one before listens, recording them beside the
/// `running` ones; on failure stops what was started.
pub(super) async fn start(
    l: &Layout,
    info: &ClusterInfo,
    only: Option<&[String]>,
    running: Pids,
) -> anyhow::Result<Vec<RoleProc>> {
    let written = configs::write(l, info)?;
    let (ctl_yaml, gw_yaml) = (&written.controller, &written.gateway);
    let s = |x: &Path| x.display().to_string();
    let roles: [(&str, Vec<String>); 5] = [
        (
            "ca",
            vec![
                "ca".into(),
                "serve".into(),
                "--ca-dir".into(),
                s(&l.ca_dir()),
                "--cluster".into(),
                info.name.clone(),
                "--listen".into(),
                configs::ca_addr(info).to_string(),
                "--admin".into(),
                SocketAddr::new(info.ip, configs::CA_ADMIN_PORT).to_string(),
            ],
        ),
        (
            "controller",
            vec!["controller".into(), "--config".into(), s(ctl_yaml)],
        ),
        (
            "gateway",
            vec!["gateway".into(), "--config".into(), s(gw_yaml)],
        ),
        (
            "dns",
            vec![
                "dns".into(),
                "--cluster".into(),
                info.name.clone(),
                "--controller".into(),
                info.controller.to_string(),
                "--listen".into(),
                info.dns.to_string(),
            ]
            .into_iter()
            .chain(written.dns.dns_flags())
            .chain([
                // Clients without a sidecar reach other clusters' services
                // through this cluster's egress.
                "--egress".into(),
                info.ip.to_string(),
                "--admin".into(),
                SocketAddr::new(info.ip, configs::DNS_ADMIN_PORT).to_string(),
            ])
            .chain(
                (!info.meshed_clients.is_empty())
                    .then(|| ["--meshed-clients".to_owned(), info.meshed_clients.join(",")])
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        ),
        (
            "egress",
            vec!["proxy".into(), "--config".into(), s(&written.egress)],
        ),
    ];
    let mut pids = running;
    let already = pids.processes.len();
    for (role, role_args) in roles {
        if only.is_some_and(|o| !o.iter().any(|r| r == role)) {
            continue;
        }
        let log = l.home().join(format!("{role}.log"));
        let mut args = vec!["--log".to_owned(), "info".to_owned()];
        args.extend(role_args);
        progress(&format!(
            "starting the {role} of {} (log {})",
            info.name,
            log.display()
        ));
        let started = async {
            let mut child = procs::spawn(&args, &log)?;
            pids.processes.push(RoleProc {
                role: role.to_owned(),
                pid: child.id(),
                log: log.clone(),
            });
            l.write_pids(&pids)?;
            match role {
                "controller" => wait_ready(role, &mut child, &log, || listening(info.admin)).await,
                "gateway" => wait_ready(role, &mut child, &log, || listening(info.gateway)).await,
                "ca" => {
                    let addr = configs::ca_addr(info);
                    wait_ready(role, &mut child, &log, || listening(addr)).await
                }
                "egress" => {
                    let admin = configs::egress_admin(info);
                    wait_ready(role, &mut child, &log, || listening(admin)).await
                }
                _ => {
                    wait_ready(role, &mut child, &log, || async {
                        crate::probe::dns_query(info.dns, crate::check::ZONE, RecordType::SOA)
                            .await
                            .is_ok()
                    })
                    .await
                }
            }
        }
        .await;
        if let Err(e) = started {
            let ours = Pids {
                processes: pids.processes.split_off(already),
            };
            let live = liveness(l, &ours);
            l.write_pids(&pids)?;
            procs::stop_all(&live, procs::GRACE).await;
            if pids.processes.is_empty() {
                let _ = std::fs::remove_file(l.pid_file());
            }
            return Err(e.context(format!(
                "cluster {} did not start; stopped what had started",
                info.name
            )));
        }
    }
    Ok(pids.processes)
}
