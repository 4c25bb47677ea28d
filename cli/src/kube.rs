//! The Kubernetes verbs: `strait install kubernetes` (print or write every
//! manifest), `strait inject` (add the sidecar to workload YAML) and
//! `strait injector` (the admission webhook role).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use strait_api::{ClusterName, TrustDomain};
use strait_k8s::inject::{Decision, InjectOptions};
use strait_k8s::injector::{self, InjectorConfig};
use strait_k8s::install::{self, CaMaterial, InstallOptions, WebhookTls, coredns};

/// Install Strait on a platform (prints manifests; applies nothing).
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    Kubernetes(InstallArgs),
}

/// Print every manifest of one cluster's install as multi-document YAML.
///
///   strait install kubernetes --cluster east | kubectl apply -f -
///   strait install kubernetes --cluster east --ca-dir ./ca --out ./east/
///   strait install kubernetes --cluster east --coredns --dns-ip 10.96.0.53
///
/// The namespace, CRDs (GlobalService, TrafficPolicy, MCS ServiceExport),
/// RBAC, the controller, gateway, DNS and injector Deployments with their
/// Services and ConfigMaps, and the injection webhook. With --ca-dir, also
/// the cluster's intermediate and bundle and the controller's, gateway's
/// and DNS server's certificates as Secrets (issued now, valid --identity-ttl;
/// without it, create those Secrets yourself: docs/kubernetes.md).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InstallArgs {
    /// The cluster's name.
    #[arg(long)]
    cluster: String,
    /// The mesh's trust domain [default: the CA dir's, else strait.local].
    #[arg(long)]
    trust_domain: Option<String>,
    /// The Strait image every Deployment and sidecar runs.
    #[arg(long, default_value = concat!("localhost/strait:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Controller replicas; one leads (a Lease). Links live in the
    /// leader pod until Kubernetes-backed state exists: use 1 for a mesh
    /// whose links must survive a controller pod (docs/kubernetes.md).
    #[arg(long, default_value_t = 2)]
    controller_replicas: i32,
    /// Where Strait's objects go.
    #[arg(long, default_value = "strait-system")]
    namespace: String,
    /// Region and zone of the cluster's endpoints.
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    /// The CA dir (`strait ca init`) holding this cluster's intermediate.
    #[arg(long, env = "STRAIT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Life of the certificates issued with --ca-dir.
    #[arg(long, default_value = "24h", value_parser = crate::output::parse_duration)]
    identity_ttl: Duration,
    /// The address peers dial for this controller (the peering
    /// LoadBalancer's, IP:8610).
    #[arg(long)]
    controller_advertise: Option<SocketAddr>,
    /// The gateways' public address (their LoadBalancer's, IP:15443); repeat.
    #[arg(long = "gateway-address")]
    gateway_addresses: Vec<SocketAddr>,
    /// A fixed ClusterIP for the strait-dns Service (needed by --coredns).
    #[arg(long)]
    dns_ip: Option<IpAddr>,
    /// Print only the CoreDNS stub domain for clusterset.local.
    #[arg(long)]
    coredns: bool,
    /// The ConfigMap name your CoreDNS imports (--coredns).
    #[arg(long, default_value = "coredns-custom")]
    coredns_configmap: String,
    /// Write one file per object into DIR instead of printing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Check the running install these options describe (CRDs
    /// established, Deployments ready, the webhook's Service with a ready
    /// endpoint) instead of printing; exits 1 naming what is not.
    #[arg(long, conflicts_with_all = ["out", "coredns"])]
    check: bool,
    /// The kubeconfig for --check [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, requires = "check")]
    kubeconfig: Option<PathBuf>,
}

pub fn install(cmd: InstallCommand) -> anyhow::Result<()> {
    let InstallCommand::Kubernetes(a) = cmd;
    let cluster = ClusterName::new(&a.cluster)
        .with_context(|| format!("--cluster: bad cluster name {:?}", a.cluster))?;
    if a.coredns {
        let m = coredns::config_map(&a.coredns_configmap, a.dns_ip)?;
        let ip = a.dns_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        print!(
            "# CoreDNS stub domain: clusterset.local -> strait-dns ({ip}).\n# Where CoreDNS imports /etc/coredns/custom/*.server (k3s, AKS), apply this;\n# elsewhere add the block below to the Corefile of the kube-system/coredns ConfigMap:\n{}{}",
            coredns::server_block(ip)
                .lines()
                .map(|l| format!("#   {l}\n"))
                .collect::<String>(),
            install::to_yaml(&[m])?
        );
        return Ok(());
    }
    let ca = match &a.ca_dir {
        Some(dir) => {
            let ca = strait_ca::CaDir::open(dir)
                .with_context(|| format!("--ca-dir {}", dir.display()))?;
            Some(
                CaMaterial::from_ca_dir(&ca, &cluster, a.identity_ttl)
                    .with_context(|| format!("--ca-dir {}", dir.display()))?,
            )
        }
        None => None,
    };
    let trust_domain: TrustDomain = match (&a.trust_domain, &ca) {
        (Some(td), _) => td
            .parse()
            .map_err(|e| anyhow::anyhow!("--trust-domain {td:?}: {e}"))?,
        (None, Some(ca)) => ca.trust_domain.clone(),
        (None, None) => "strait.local"
            .parse()
            .map_err(|e| anyhow::anyhow!("strait.local: {e}"))?,
    };
    let opts = InstallOptions {
        webhook_tls: WebhookTls::generate(&a.namespace, 365)?,
        cluster,
        trust_domain,
        namespace: a.namespace,
        image: a.image,
        controller_replicas: a.controller_replicas,
        region: a.region,
        zone: a.zone,
        controller_advertise: a.controller_advertise,
        gateway_addresses: a.gateway_addresses,
        dns_ip: a.dns_ip,
        ca,
    };
    let manifests = install::manifests(&opts)?;
    if a.check {
        return check(a.kubeconfig, &manifests);
    }
    if opts.controller_replicas > 1 {
        eprintln!(
            "note: {} controller replicas: one leads (a Lease), but links and peering live in the leader pod's state directory and a new leader does not have them; use --controller-replicas 1 for a cluster you link, or re-link after a failover (docs/kubernetes.md)",
            opts.controller_replicas
        );
    }
    match a.out {
        None => print!("{}", install::to_yaml(&manifests)?),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            for (i, m) in manifests.iter().enumerate() {
                let path = dir.join(m.file_name(i + 1));
                write_private(&path, &install::to_yaml(std::slice::from_ref(m))?)?;
            }
            eprintln!(
                "wrote {} manifests to {} (apply with: kubectl apply -f {})",
                manifests.len(),
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// `install kubernetes --check`.
fn check(kubeconfig: Option<PathBuf>, manifests: &[install::Manifest]) -> anyhow::Result<()> {
    let kubeconfig = kubeconfig
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
        .context("--kubeconfig: none given and no $KUBECONFIG or $HOME")?;
    let rt = tokio::runtime::Runtime::new()?;
    let findings = rt.block_on(async {
        let client = strait_federation::kube::client(Some(&kubeconfig)).await?;
        anyhow::Ok(strait_k8s::check::run(client, manifests).await)
    })?;
    let mut bad = 0;
    for f in &findings {
        match &f.result {
            Ok(what) => println!("ok    {}: {what}", f.object),
            Err(why) => {
                bad += 1;
                println!("FAIL  {}: {why}", f.object);
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} checks failed", findings.len());
    }
    println!("install ok: {} checks", findings.len());
    Ok(())
}

/// Manifests may hold private keys (Secrets): owner-only files.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("{}", path.display()))
}

/// Add the Strait sidecar to workloads: YAML in, YAML out.
///
///   kubectl get deploy web -o yaml | strait inject | kubectl apply -f -
///   strait inject -f app.yaml > app-injected.yaml
///
/// Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
/// CronJobs and Lists get the sidecar (`strait proxy` as a native sidecar
/// container); other kinds pass through unchanged. Its config comes from
/// the ConfigMap `strait-proxy-<serviceaccount>` and its identity from the
/// Secret `strait-identity-<serviceaccount>` (annotations
/// strait.io/proxy-config and strait.io/identity-secret name others).
/// Apps reach the mesh through HTTP_PROXY. `strait.io/inject: disabled`
/// (label or annotation) leaves a pod template alone. Injecting twice
/// changes nothing.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InjectArgs {
    /// Input file [default: standard input].
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
    /// The Strait image the sidecar runs.
    #[arg(long, default_value = concat!("localhost/strait:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// How the sidecar gets its certificate: `secret` (files of the Secret
    /// strait-identity-<serviceaccount>) or `token` (from the cluster's CA
    /// with the pod's projected ServiceAccount token, audience strait; the
    /// sidecar config then names `identity: { ca: { token_file:
    /// token/token, keep: identity, ... } }`). The pod annotation
    /// strait.io/identity overrides it.
    #[arg(long, default_value = "secret")]
    identity: strait_k8s::inject::IdentityMode,
    /// Lifetime of the projected token in seconds (600 to 172800).
    #[arg(long, default_value_t = 3600)]
    token_seconds: i64,
}

pub fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let text = match &args.file {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("standard input")?;
            s
        }
    };
    let source = args
        .file
        .as_deref()
        .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    let mut opts = InjectOptions::new(args.image);
    opts.identity = args.identity;
    opts.token_seconds = args.token_seconds;
    opts.check()
        .map_err(|e| anyhow::anyhow!("--{}", e.replace('_', "-")))?;
    let (out, outcomes) =
        strait_k8s::inject::inject_yaml(&text, &opts).with_context(|| source.clone())?;
    print!("{out}");
    for o in outcomes {
        match o.result {
            Decision::Injected => eprintln!("{} injected", o.object),
            Decision::Skipped(why) => eprintln!("{} skipped: {why}", o.object),
            Decision::NotAWorkload => {}
        }
    }
    Ok(())
}

/// Run the injection webhook (AdmissionReview v1 over TLS) until Ctrl-C.
///
///   strait injector --config injector.yaml
///   strait injector --config injector.yaml --check   # validate and exit
///
/// injector.yaml (relative paths are taken from the working directory):
///   listen: 0.0.0.0:8443
///   namespace: strait-system         # never injected
///   tls: { cert: identity/tls.crt, key: identity/tls.key }
///   inject: { image: localhost/strait:0.1.0 }
///   # or: inject: { image: ..., identity: token, token_seconds: 3600 }
///   #   (sidecars get their certificate from the CA with their
///   #   projected ServiceAccount token; see `strait inject --help`)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InjectorArgs {
    /// Injector config (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the config and certificate, print a summary and exit.
    #[arg(long)]
    check: bool,
}

pub fn injector(args: InjectorArgs) -> anyhow::Result<()> {
    let cfg = InjectorConfig::load(&args.config)?;
    if args.check {
        println!(
            "config ok: injector on {} (TLS), sidecar image {}, never injects {}",
            cfg.listen, cfg.inject.image, cfg.namespace
        );
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let handle = injector::start(cfg).await?;
        eprintln!(
            "strait injector: webhook https://{}/inject/namespace and /inject/pod",
            handle.addr
        );
        crate::signal::wait_for_shutdown().await;
        handle.stop().await;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}
