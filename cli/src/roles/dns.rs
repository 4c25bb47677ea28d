//! `strait dns`: the cluster's DNS server, fed by its controller's config
//! push (the same stream sidecars use, over mTLS).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_agent::{Role, Target};
use strait_api::ClusterName;

use super::IdentityFiles;

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
    /// `/ready` (following its controller), `/live`. Off when unset.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[arg(long)]
    chain: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
}

pub fn run_dns(args: DnsArgs) -> anyhow::Result<()> {
    let cluster = ClusterName::new(&args.cluster)
        .with_context(|| format!("--cluster: bad cluster name {:?}", args.cluster))?;
    let files = IdentityFiles {
        chain: args.chain,
        key: args.key,
        bundle: args.bundle,
    };
    let id = strait_ca::CertStore::from_pem(&super::read(&files.chain)?, &super::read(&files.key)?)
        .with_context(|| format!("identity: {}", files.chain.display()))?
        .identity()
        .with_context(|| format!("{}: no SPIFFE ID in the certificate", files.chain.display()))?;
    let td = id.trust_domain();
    let (certs, bundle) = files.load(&td)?;
    // A reload never changes who the DNS server is.
    let watched =
        strait_ca::reload::IdentityFiles::new(files.chain, files.key, files.bundle, td.clone())
            .expecting(id);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // New certificate or bundle files (rotation) are swapped in place.
        let reload = tokio::spawn(strait_ca::reload::watch(
            watched,
            certs.clone(),
            bundle.clone(),
        ));
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
                "/ready" if *following.borrow() => (StatusCode::OK, "ready\n".to_owned()),
                "/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not following its controller yet\n".to_owned(),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    "no such page: /metrics, /ready, /live\n".to_owned(),
                ),
            };
            let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *resp.status_mut() = code;
            async move { resp }
        },
    )
    .await;
}
