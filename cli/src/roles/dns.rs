//! `strait dns`: the cluster's DNS server, fed by its controller's config
//! push (the same stream sidecars use, over mTLS).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_agent::{Role, Target};
use strait_api::ClusterName;

use strait_ca::identity::IdentitySource;

/// Serve `clusterset.local` for one cluster until Ctrl-C.
///
/// Subscribes to the controller's config push with a workload certificate
/// of the cluster (any identity of the trust domain) and answers from the
/// latest snapshot; when the controller is gone it keeps answering from the
/// last one. (`strait controller` can also serve DNS itself: `dns:` in its
/// config.)
///
///   strait ca issue --cluster east --spiffe-id spiffe://strait.local/ns/strait-system/sa/dns --out ./dns
///   strait dns --controller 127.0.0.1:8610 --cluster east \
///       --chain ./dns/chain.pem --key ./dns/key.pem --bundle ./dns/bundle.pem --listen 127.0.0.1:8653
///   dig @127.0.0.1 -p 8653 echo.demo.svc.clusterset.local
///
/// Or with its certificate from the cluster's CA service (`strait ca serve`),
/// got once with a join token and renewed by itself:
///   strait ca token create --cluster east --namespace strait-system --service-account dns > dns.token
///   strait dns --controller 127.0.0.1:8610 --cluster east --ca 127.0.0.1:8620 \
///       --spiffe-id spiffe://strait.local/ns/strait-system/sa/dns --token-file dns.token --bundle ca/bundle.pem \
///       --keep ./dns-identity
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DnsArgs {
    /// The controller's gRPC address (mTLS), not its admin port.
    #[arg(long)]
    controller: SocketAddr,
    /// The cluster whose controller it is.
    #[arg(long)]
    cluster: String,
    /// UDP and TCP listen address.
    #[arg(long, default_value = "127.0.0.1:8653")]
    listen: SocketAddr,
    /// Source networks of clients that run behind a Strait sidecar
    /// (comma-separated CIDRs): they get the service VIP, where their
    /// sidecar listens. Everyone else gets addresses that work without a
    /// sidecar.
    #[arg(long, value_delimiter = ',')]
    meshed_clients: Vec<strait_dns::IpNet>,
    /// The cluster's egress (a `strait proxy` with `egress:`): clients
    /// without a sidecar reach services served by other clusters through
    /// it, over plain TCP/HTTP. Without it they get the serving cluster's
    /// gateway, which only sidecars can use.
    #[arg(long)]
    egress: Option<std::net::IpAddr>,
    /// Admin HTTP address: `/metrics` (strait_dns_queries_total, ...),
    /// `/ready` (following its controller), `/live`, `/trust` (roots and
    /// certificate, for `strait ca rotate`). Off when unset.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Certificate chain (PEM, leaf first), with --key: identity from files.
    #[arg(long, requires = "key", conflicts_with = "ca")]
    chain: Option<PathBuf>,
    #[arg(long, requires = "chain")]
    key: Option<PathBuf>,
    /// The roots to trust (PEM). With --ca, only for the first contact:
    /// the CA's answers keep it current.
    #[arg(long)]
    bundle: PathBuf,
    /// The cluster's CA service: get the certificate there (with
    /// --token-file the first time) and renew it there.
    #[arg(long, requires_all = ["spiffe_id", "token_file"])]
    ca: Option<SocketAddr>,
    /// The identity to ask the CA for (with --ca).
    #[arg(long, requires = "ca")]
    spiffe_id: Option<strait_api::SpiffeId>,
    /// A file holding the join token (with --ca).
    #[arg(long, requires = "ca")]
    token_file: Option<PathBuf>,
    /// Keep the certificate, key (0600) and roots in this directory (with
    /// --ca): restarted with the same flags, it starts from them and needs
    /// no new token.
    #[arg(long, requires = "ca")]
    keep: Option<PathBuf>,
}

/// The identity the flags name: files, or the CA service.
fn identity(args: &DnsArgs) -> anyhow::Result<(IdentitySource, strait_api::TrustDomain)> {
    match (&args.ca, &args.chain, &args.key) {
        (Some(address), None, None) => {
            let (Some(spiffe_id), Some(token_file)) = (&args.spiffe_id, &args.token_file) else {
                anyhow::bail!("--ca needs --spiffe-id and --token-file");
            };
            Ok((
                IdentitySource::Ca {
                    address: *address,
                    spiffe_id: spiffe_id.clone(),
                    token_file: token_file.clone(),
                    bundle: args.bundle.clone(),
                    keep: args.keep.clone(),
                },
                spiffe_id.trust_domain(),
            ))
        }
        (None, Some(chain), Some(key)) => {
            let id = strait_ca::CertStore::from_pem(&super::read(chain)?, &super::read(key)?)
                .with_context(|| format!("identity: {}", chain.display()))?
                .identity()
                .with_context(|| format!("{}: no SPIFFE ID in the certificate", chain.display()))?;
            Ok((
                IdentitySource::Files {
                    chain: chain.clone(),
                    key: key.clone(),
                    bundle: args.bundle.clone(),
                },
                id.trust_domain(),
            ))
        }
        _ => anyhow::bail!(
            "name the identity: --chain and --key (certificate files), or --ca, --spiffe-id and --token-file (the cluster's CA service)"
        ),
    }
}

pub fn run_dns(args: DnsArgs) -> anyhow::Result<()> {
    let cluster = ClusterName::new(&args.cluster)
        .with_context(|| format!("--cluster: bad cluster name {:?}", args.cluster))?;
    let (source, td) = identity(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // Files are watched (rotation swaps them in place); a CA-issued
        // certificate is renewed, and re-issued when the CA's intermediate
        // changes.
        let (certs, bundle, reload) = source.start(&td).await.context("identity")?;
        let target = Target {
            address: args.controller,
            cluster: cluster.clone(),
            trust_domain: td,
            role: Role::Dns,
            node_id: format!("dns {}", args.listen),
            locality: None,
            registration: None,
            scope: Vec::new(),
        };
        let trust = (certs.clone(), bundle.clone());
        let following = strait_dns::role::Following {
            target,
            certs,
            bundle,
        };
        let mut config = strait_dns::DnsConfig::new(args.listen);
        config.meshed_clients = args.meshed_clients;
        config.answer.egress = args.egress;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = strait_dns::DnsMetrics::register(&mut registry);
        let server = strait_dns::role::start(config, following, metrics)
            .await
            .with_context(|| format!("dns on {}", args.listen))?;
        let admin = match args.admin {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin on {addr}"))?;
                eprintln!("strait dns admin: http://{addr}/metrics");
                Some(tokio::spawn(admin(
                    l,
                    std::sync::Arc::new(registry),
                    server.following_watch(),
                    trust,
                )))
            }
            None => None,
        };
        eprintln!(
            "strait dns for cluster {cluster}: udp {}, tcp {}, from controller {}",
            server.udp_addr(),
            server.tcp_addr(),
            args.controller
        );
        crate::signal::wait_for_shutdown().await;
        reload.abort();
        if let Some(a) = admin {
            a.abort();
        }
        let _ = server.shutdown().await;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}

/// The DNS server's admin port.
async fn admin(
    listener: tokio::net::TcpListener,
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    following: tokio::sync::watch::Receiver<bool>,
    (certs, bundle): (strait_ca::CertStore, strait_ca::SharedBundle),
) {
    use http::{Response, StatusCode};
    strait_ca::admin_http::serve(
        listener,
        move |req: http::Request<hyper::body::Incoming>| {
            let (code, body) = match req.uri().path() {
                "/metrics" => match strait_dns::encode_metrics(&registry) {
                    Ok(text) => (StatusCode::OK, text),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                },
                "/live" => (StatusCode::OK, "live\n".to_owned()),
                "/trust" => (
                    StatusCode::OK,
                    strait_ca::trust::TrustReport::of(&certs, &bundle).to_json(),
                ),
                "/ready" if *following.borrow() => (StatusCode::OK, "ready\n".to_owned()),
                "/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not following its controller yet\n".to_owned(),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    "no such page: /metrics, /ready, /live, /trust\n".to_owned(),
                ),
            };
            let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *resp.status_mut() = code;
            async move { resp }
        },
    )
    .await;
}
