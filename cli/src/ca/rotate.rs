//! `strait ca rotate add|reissue|drop|status`: staged root rotation of a
//! live mesh. The file changes are `strait_ca::rotation`'s (the scenario
//! mesh runs the same stages); this verb finds the CA directory, the
//! certificate directories it issued and the components to ask, runs one
//! stage, and waits until every component confirms it on its admin port
//! (`GET /trust`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use strait_ca::CaDir;
use strait_ca::rotation::{self, Expect, Rotation, Stage, State, short};
use strait_ca::trust::TrustReport;

use crate::cluster::configs;
use crate::cluster::layout::{self, Layout};
use crate::output::{Format, emit, parse_duration};

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Stage 1: make the next root (kept in CA_DIR/next) and write old +
    /// new root into every bundle.pem; wait until every component trusts both.
    ///
    ///   strait ca rotate add --dir strait-mesh
    ///   strait ca rotate add --ca-dir ./ca --certs ./certs \
    ///       --confirm 127.0.0.1:8611 --confirm 127.0.0.1:15021 --confirm 127.0.0.5:15000
    #[command(verbatim_doc_comment)]
    Add(RotateArgs),
    /// Stage 2: sign a new intermediate per cluster under the new root and
    /// re-issue every certificate in place (same SPIFFE ID, lifetime and
    /// paths); wait until every component presents a certificate under it.
    ///
    ///   strait ca rotate reissue --dir strait-mesh
    #[command(verbatim_doc_comment)]
    Reissue(RotateArgs),
    /// Stage 3: every bundle.pem holds only the new root, which becomes the
    /// CA directory's root (the old one is kept in CA_DIR/retired); wait
    /// until every component trusts only it.
    ///
    ///   strait ca rotate drop --dir strait-mesh
    #[command(verbatim_doc_comment)]
    Drop(RotateArgs),
    /// Which stage the CA directory is in and, per component, what it
    /// trusts and presents now.
    ///
    ///   strait ca rotate status --dir strait-mesh
    #[command(verbatim_doc_comment)]
    Status(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// A `strait cluster up` (or `strait demo`) directory: its CA (DIR/ca),
    /// its certificate files (DIR/certs) and the admin ports of its running
    /// controllers, gateways, DNS servers, egresses and `sidecar add`
    /// sidecars (those follow the CA service: no files). Takes precedence
    /// over --ca-dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The CA directory, when there is no --dir.
    #[arg(long, env = "STRAIT_CA_DIR", default_value = "strait-ca")]
    ca_dir: PathBuf,
    /// A directory holding certificates the CA issued (searched for
    /// chain.pem + key.pem, e.g. sidecars' `strait ca issue --out` dirs); repeatable.
    #[arg(long = "certs", value_name = "DIR")]
    certs: Vec<PathBuf>,
    /// The admin address of a component that must confirm each stage (a
    /// sidecar's, gateway's or controller's admin port); repeatable.
    #[arg(long = "confirm", value_name = "ADDR")]
    confirm: Vec<SocketAddr>,
    /// How long to wait for every confirmation.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// A component to ask: what it is and its admin address.
#[derive(Debug, Clone, Serialize)]
struct Component {
    who: String,
    address: SocketAddr,
}

/// What the arguments point at.
struct Plan {
    ca: CaDir,
    dirs: Vec<PathBuf>,
    components: Vec<Component>,
}

/// One component's answer.
#[derive(Debug, Serialize)]
struct Seen {
    #[serde(flatten)]
    component: Component,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust: Option<TrustReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Whether it meets the current stage (none: no stage to meet).
    #[serde(skip_serializing_if = "Option::is_none")]
    confirmed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
}

#[derive(Debug, Serialize)]
struct StageReport {
    stage: Stage,
    ca_dir: PathBuf,
    old_roots: Vec<String>,
    new_root: String,
    certificate_dirs: Vec<PathBuf>,
    components: Vec<Seen>,
    next: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    ca_dir: PathBuf,
    rotation: Option<State>,
    next: String,
    root: Option<String>,
    certificate_dirs: usize,
    components: Vec<Seen>,
}

fn progress(line: &str) {
    eprintln!("==> {line}");
}

pub fn run(cmd: RotateCommand, format: Format) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        RotateCommand::Add(a) => rt.block_on(stage(Stage::Add, &a, format)),
        RotateCommand::Reissue(a) => rt.block_on(stage(Stage::Reissue, &a, format)),
        RotateCommand::Drop(a) => rt.block_on(stage(Stage::Drop, &a, format)),
        RotateCommand::Status(a) => rt.block_on(status(&a, format)),
    }
}

fn resolve(args: &RotateArgs) -> anyhow::Result<Plan> {
    let (ca_dir, mut roots, mut components) = match &args.dir {
        Some(d) => (d.join("ca"), vec![d.join("certs")], discover(d)?),
        None => (args.ca_dir.clone(), Vec::new(), Vec::new()),
    };
    for c in &args.certs {
        if !c.is_dir() {
            bail!("--certs {}: no such directory", c.display());
        }
        roots.push(c.clone());
    }
    let ca =
        CaDir::open(&ca_dir).with_context(|| format!("no CA directory at {}", ca_dir.display()))?;
    let mut dirs: Vec<PathBuf> = roots.iter().flat_map(|r| rotation::find(r)).collect();
    dirs.sort();
    dirs.dedup();
    components.extend(args.confirm.iter().map(|a| Component {
        who: "component".into(),
        address: *a,
    }));
    let mut seen = std::collections::BTreeSet::new();
    components.retain(|c| seen.insert(c.address));
    Ok(Plan {
        ca,
        dirs,
        components,
    })
}

/// Every role of the running clusters of a `cluster up` directory
/// (controller, gateway, DNS, egress, and the sidecars `strait sidecar add`
/// started), or the controllers of a running `strait demo`.
fn discover(dir: &Path) -> anyhow::Result<Vec<Component>> {
    let mut out = Vec::new();
    let sidecars = crate::sidecar::list(dir, None)?;
    for c in layout::clusters(dir)? {
        if !Layout::new(dir, &c.name).pid_file().exists() {
            continue;
        }
        let n = &c.name;
        out.extend(
            [
                (format!("controller {n}"), c.admin),
                (format!("gateway {n}"), c.gateway_admin),
                (
                    format!("dns {n}"),
                    std::net::SocketAddr::new(c.ip, configs::DNS_ADMIN_PORT),
                ),
                (format!("egress {n}"), configs::egress_admin(&c)),
            ]
            .map(|(who, address)| Component { who, address }),
        );
        for s in sidecars.iter().filter(|s| !s.running && &s.cluster == n) {
            progress(&format!(
                "sidecar {}/{} of {n} is stopped and will not follow this rotation: once `drop` is done its kept certificate is no longer trusted; `strait sidecar rm` and `sidecar add` it again then",
                s.namespace, s.name
            ));
        }
        out.extend(
            sidecars
                .iter()
                .filter(|s| s.running && &s.cluster == n)
                .map(|s| Component {
                    who: format!("sidecar {}/{} {n}", s.namespace, s.name),
                    address: s.admin,
                }),
        );
    }
    if out.is_empty() && crate::meshdir::state_file(dir).exists() {
        let state = crate::meshdir::read_state(dir, "--confirm ADDR")?;
        for c in state.clusters {
            if let Some(admin) = c.admin {
                out.push(Component {
                    who: format!("controller {}", c.name),
                    address: admin,
                });
            }
        }
    }
    Ok(out)
}

/// `GET /trust` on an admin port.
async fn ask(addr: SocketAddr) -> Result<TrustReport, String> {
    use http_body_util::BodyExt;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("/trust")
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !code.is_success() {
            return Err(format!("/trust answered {code} (not a Strait admin port?)"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("/trust is not a trust report: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .unwrap_or_else(|_| Err("no answer within 2s".into()))
}

async fn look(c: &Component, expect: Option<&Expect>) -> Seen {
    match ask(c.address).await {
        Ok(r) => {
            let waiting_for = expect.and_then(|e| e.shortfall(&r));
            Seen {
                component: c.clone(),
                confirmed: expect.map(|_| waiting_for.is_none()),
                waiting_for,
                trust: Some(r),
                error: None,
            }
        }
        Err(e) => Seen {
            component: c.clone(),
            trust: None,
            confirmed: expect.map(|_| false),
            waiting_for: None,
            error: Some(e),
        },
    }
}

/// Asks every component until each meets `expect`, printing each as it
/// confirms; fails with the list of those that did not within `timeout`.
async fn wait(
    expect: &Expect,
    components: &[Component],
    timeout: Duration,
) -> anyhow::Result<Vec<Seen>> {
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Option<Seen>> = components.iter().map(|_| None).collect();
    loop {
        let mut last = Vec::new();
        for (i, c) in components.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let seen = look(c, Some(expect)).await;
            if seen.confirmed == Some(true) {
                eprintln!("    ✓ {} {}", c.who, c.address);
                done[i] = Some(seen);
            } else {
                last.push(seen);
            }
        }
        if last.is_empty() {
            return Ok(done.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            let lines: Vec<String> = last
                .iter()
                .map(|s| {
                    let why = s
                        .error
                        .as_deref()
                        .or(s.waiting_for.as_deref())
                        .unwrap_or("?");
                    format!("  {} {}: {why}", s.component.who, s.component.address)
                })
                .collect();
            bail!(
                "timed out after {timeout:?}: {} of {} component(s) did not confirm that they {}:\n{}\n\
                 the stage's files are written; run `strait ca rotate {}` again to wait again",
                last.len(),
                components.len(),
                expect.stage.goal(),
                lines.join("\n"),
                expect.stage
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn stage(stage: Stage, args: &RotateArgs, format: Format) -> anyhow::Result<()> {
    let plan = resolve(args)?;
    if plan.components.is_empty() {
        bail!(
            "no component to confirm `{stage}`: pass --confirm ADDR (the admin port of each sidecar, gateway and controller), or --dir of a running `strait cluster up` mesh"
        );
    }
    let rotation = Rotation::new(plan.ca.clone());
    progress(&format!(
        "stage {stage} on {}: {} certificate dir(s), {} component(s) to confirm",
        plan.ca.path().display(),
        plan.dirs.len(),
        plan.components.len()
    ));
    let expect = rotation.run(stage, &plan.dirs)?;
    let (old, new) = (
        expect
            .old_roots
            .iter()
            .map(|r| short(r))
            .collect::<Vec<_>>()
            .join(", "),
        short(&expect.new_root),
    );
    progress(&match stage {
        Stage::Add => {
            format!("every bundle.pem now holds the old root ({old}) and the new root ({new})")
        }
        Stage::Reissue => format!(
            "re-issued {} certificate(s) in place under new intermediates of the new root ({new})",
            plan.dirs.len()
        ),
        Stage::Drop => {
            format!("every bundle.pem now holds only the new root ({new}); it is the CA's root")
        }
    });
    progress(&format!(
        "waiting for {} component(s) to {}",
        plan.components.len(),
        stage.goal()
    ));
    let seen = wait(&expect, &plan.components, args.timeout).await?;
    rotation.confirm(stage)?;
    let next = match stage {
        Stage::Add => Some("reissue"),
        Stage::Reissue => Some("drop"),
        Stage::Drop => None,
    };
    progress(&format!(
        "stage {stage} confirmed by every component{}",
        next.map(|n| format!("; next: strait ca rotate {n}"))
            .unwrap_or_else(|| "; the rotation is finished".into())
    ));
    let report = StageReport {
        stage,
        ca_dir: plan.ca.path().to_owned(),
        old_roots: expect.old_roots.clone(),
        new_root: expect.new_root.clone(),
        certificate_dirs: plan.dirs,
        components: seen,
        next: next.map(|n| format!("strait ca rotate {n}")),
    };
    emit(format, &report, |r| {
        format!(
            "stage {} done: {} component(s) {}\n",
            r.stage,
            r.components.len(),
            r.stage.goal()
        )
    })
}

/// "old", "new" or a short fingerprint.
fn label(fp: &str, state: Option<&State>) -> String {
    match state {
        Some(s) if s.new_root == fp => "new".into(),
        Some(s) if s.old_roots.iter().any(|o| o == fp) => "old".into(),
        _ => short(fp).to_owned(),
    }
}

async fn status(args: &RotateArgs, format: Format) -> anyhow::Result<()> {
    let plan = resolve(args)?;
    let rotation = Rotation::new(plan.ca.clone());
    let state = rotation.state()?;
    let next = rotation::next_stage(state.as_ref());
    let in_progress = state
        .as_ref()
        .filter(|s| !(s.stage == Stage::Drop && s.confirmed));
    let expect = in_progress.map(State::expect);
    let mut components = Vec::new();
    for c in &plan.components {
        components.push(look(c, expect.as_ref()).await);
    }
    let root = plan
        .ca
        .bundle()
        .ok()
        .and_then(|b| b.roots().first().map(|r| strait_ca::trust::fingerprint(r)));
    let report = StatusReport {
        ca_dir: plan.ca.path().to_owned(),
        rotation: state,
        next: format!("strait ca rotate {next}"),
        root,
        certificate_dirs: plan.dirs.len(),
        components,
    };
    emit(format, &report, render_status)
}

fn render_status(r: &StatusReport) -> String {
    let st = r.rotation.as_ref();
    let mut out = format!("CA {}: ", r.ca_dir.display());
    match st {
        None => out.push_str("no root rotation has run"),
        Some(s) if s.stage == Stage::Drop && s.confirmed => {
            out.push_str("the last rotation is finished");
        }
        Some(s) => out.push_str(&format!(
            "stage {} {}",
            s.stage,
            if s.confirmed {
                "(confirmed)"
            } else {
                "(not confirmed yet)"
            }
        )),
    }
    out.push_str(&format!("; next: {}\n", r.next));
    match st {
        Some(s) => out.push_str(&format!(
            "  old root {}   new root {}\n",
            s.old_roots
                .iter()
                .map(|f| short(f))
                .collect::<Vec<_>>()
                .join(","),
            short(&s.new_root)
        )),
        None => out.push_str(&format!(
            "  root {}\n",
            r.root.as_deref().map_or("?", short)
        )),
    }
    out.push_str(&format!("  {} certificate dir(s)\n", r.certificate_dirs));
    if r.components.is_empty() {
        out.push_str("  no component to ask (pass --confirm ADDR or --dir)\n");
        return out;
    }
    out.push_str(&format!(
        "  {:<22} {:<22} {:<18} {:<10} stage\n",
        "component", "address", "trusts", "presents"
    ));
    for s in &r.components {
        let (trusts, presents) = match &s.trust {
            Some(t) => (
                t.roots
                    .iter()
                    .map(|f| label(f, st))
                    .collect::<Vec<_>>()
                    .join("+"),
                t.presented_root
                    .as_deref()
                    .map_or_else(|| "untrusted".into(), |f| label(f, st)),
            ),
            None => ("-".into(), "-".into()),
        };
        let mark = match (s.confirmed, &s.error, &s.waiting_for) {
            (_, Some(e), _) => format!("✗ {e}"),
            (Some(true), ..) => "✓".into(),
            (Some(false), _, Some(w)) => format!("✗ {w}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {:<22} {:<22} {:<18} {:<10} {mark}\n",
            s.component.who,
            s.component.address.to_string(),
            trusts,
            presents
        ));
    }
    out
}
