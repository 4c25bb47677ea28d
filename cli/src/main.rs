//! `strait`: one binary, a subcommand per role (like `consul agent`).
//!
//! The binary only parses arguments and calls into the component crates;
//! it is the one place where `anyhow` is used.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ca;
mod capture;
mod check;
mod cluster;
mod diagnose;
mod kube;
mod mesh_cmds;
mod meshdir;
mod ops;
mod output;
mod probe;
mod proxy;
mod roles;
mod runtime;
mod sidecar;
mod signal;
mod status;
mod top;

use output::Format;

// The data path allocates and frees small buffers and futures per request;
// glibc's malloc spent ~18% of a sidecar's CPU there (consolidation and
// unlinking). mimalloc's per-thread free lists cost a fraction of that.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Strait: a multi-cluster service mesh.
///
/// Try it first (three clusters on this machine, no root, Ctrl-C stops it):
///
///   strait demo
///   strait status
///   strait scenario list
///
/// Or run clusters as background processes on this host, link them and
/// check them:
///
///   strait cluster up east
///   strait cluster up west
///   strait link --from east --to west --dir strait-mesh
///   strait check
///   strait diagnose echo -n demo --from east
///
/// For a real mesh, start with the certificate authority, then run the
/// components (strait controller, strait gateway, strait proxy):
///
///   strait ca init --trust-domain strait.local --out ./ca
///   strait ca intermediate --ca-dir ./ca --cluster east
///   strait ca issue --ca-dir ./ca --cluster east \
///       --spiffe-id spiffe://strait.local/ns/default/sa/web --out ./web-certs
#[derive(Debug, Parser)]
#[command(name = "strait", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Output format for results: human tables, or json/yaml for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Human)]
    output: Format,

    /// Log filter (tracing syntax), e.g. `info` or `strait_ca=debug`
    /// [default: `warn,strait::access=info`; `error` for `demo`].
    #[arg(long, global = true, env = "STRAIT_LOG")]
    log: Option<String>,

    /// Log lines as text (coloured only on a terminal) or as JSON objects,
    /// one per line, for log collectors.
    #[arg(long, global = true, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Variants without a doc comment take their help (with examples) from
    // their args' docs; a comment here would replace it.
    /// Certificate authority: make the root, cluster intermediates and
    /// workload certificates; run the signing service; manage tokens.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    Proxy(proxy::ProxyArgs),
    Demo(mesh_cmds::DemoArgs),
    /// Declarative multi-cluster scenarios: faults and assertions.
    #[command(subcommand)]
    Scenario(mesh_cmds::ScenarioCommand),
    Status(status::StatusArgs),
    #[command(alias = "stat")]
    Top(top::TopArgs),
    Controller(roles::ControllerArgs),
    Gateway(roles::GatewayArgs),
    Dns(roles::DnsArgs),
    Export(ops::ExportArgs),
    Unexport(ops::UnexportArgs),
    /// Policy of a service: failover order, locality weights, authorization.
    #[command(subcommand)]
    Policy(ops::PolicyCommand),
    /// Peering tokens: one side issues, the other establishes.
    #[command(subcommand)]
    Peering(ops::PeeringCommand),
    Link(ops::LinkArgs),
    Unlink(ops::UnlinkArgs),
    /// The local catalog: register and deregister services.
    #[command(subcommand)]
    Service(ops::ServiceCommand),
    /// Workloads in `cluster up` clusters: add a sidecar (certificate,
    /// config, registration) with one command; list; remove.
    #[command(subcommand)]
    Sidecar(sidecar::SidecarCommand),
    /// Start or stop one cluster (controller, gateway, DNS) on this host.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    Check(check::CheckArgs),
    Diagnose(diagnose::DiagnoseArgs),
    /// Install Strait on a platform: print its manifests.
    #[command(subcommand)]
    Install(kube::InstallCommand),
    Inject(kube::InjectArgs),
    Injector(kube::InjectorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The access log (`access_log: true`) shows at the default level.
    let default_log = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "warn,strait::access=info"
    };
    let filter = cli.log.as_deref().unwrap_or(default_log);
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Access lines are encoded by the proxy's own writer, in this format.
    strait_proxy::access::set_format(matches!(cli.log_format, LogFormat::Json));
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour only for a person at a terminal: log files, pipes and
        // journald get plain text (and NO_COLOR is honoured).
        LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init(),
    }
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd, cli.output),
        Command::Proxy(args) => proxy::run(args),
        Command::Demo(args) => mesh_cmds::demo(args),
        Command::Scenario(cmd) => mesh_cmds::scenario(cmd, cli.output),
        Command::Status(args) => status::status(args, cli.output),
        Command::Top(args) => top::run(args, cli.output),
        Command::Controller(args) => roles::run_controller(args),
        Command::Gateway(args) => roles::run_gateway(args),
        Command::Dns(args) => roles::run_dns(args),
        Command::Export(args) => ops::export(args, cli.output),
        Command::Unexport(args) => ops::unexport(args, cli.output),
        Command::Policy(cmd) => ops::policy(cmd, cli.output),
        Command::Peering(cmd) => ops::peering(cmd, cli.output),
        Command::Link(args) => ops::link_clusters(args, cli.output),
        Command::Unlink(args) => ops::unlink(args, cli.output),
        Command::Service(cmd) => ops::service(cmd, cli.output),
        Command::Sidecar(cmd) => sidecar::run(cmd, cli.output),
        Command::Cluster(cmd) => cluster::run(cmd, cli.output),
        Command::Check(args) => check::run(args, cli.output),
        Command::Diagnose(args) => diagnose::run(args, cli.output),
        Command::Install(cmd) => kube::install(cmd),
        Command::Inject(args) => kube::inject(args),
        Command::Injector(args) => kube::injector(args),
    };
    strait_proxy::access::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
