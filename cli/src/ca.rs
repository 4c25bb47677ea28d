//! `strait ca ...`: the certificate authority verbs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::server::{self, CaService};
use strait_ca::token::TokenStore;
use strait_ca::{CaDir, SharedBundle};

use crate::output::{Format, emit, expiry, parse_duration};

mod rotate;

const DEFAULT_DIR: &str = "strait-ca";

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the mesh root CA (ECDSA P-256), or import an existing one.
    ///
    /// The root carries a name constraint that limits it to URIs of the
    /// trust domain. Its key is written with mode 0600.
    ///
    ///   strait ca init --trust-domain strait.local --out ./strait-ca
    ///   strait ca init --trust-domain corp.mesh --import-cert root.pem --import-key root.key
    #[command(verbatim_doc_comment)]
    Init {
        /// The mesh's SPIFFE trust domain, e.g. `strait.local`.
        #[arg(long, default_value = "strait.local")]
        trust_domain: String,
        /// Directory to create the CA in.
        #[arg(long, default_value = DEFAULT_DIR)]
        out: PathBuf,
        /// Root lifetime (s, m, h, d).
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        ttl: Duration,
        /// Import this root certificate (PEM) instead of creating one.
        #[arg(long, requires = "import_key")]
        import_cert: Option<PathBuf>,
        /// The imported root's PKCS#8 private key (PEM).
        #[arg(long, requires = "import_cert")]
        import_key: Option<PathBuf>,
    },
    /// Sign an intermediate CA for one cluster with the root.
    ///
    ///   strait ca intermediate --cluster east
    #[command(verbatim_doc_comment)]
    Intermediate {
        #[command(flatten)]
        ca: CaArgs,
        /// Intermediate lifetime (capped at the root's).
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Issue a workload certificate offline (for operators and tests).
    ///
    /// Writes cert.pem, key.pem (0600), chain.pem (leaf + intermediate) and
    /// bundle.pem (the roots to trust) into --out.
    ///
    ///   strait ca issue --cluster east \
    ///       --spiffe-id spiffe://strait.local/ns/default/sa/web --out ./web
    #[command(verbatim_doc_comment)]
    Issue {
        #[command(flatten)]
        ca: CaArgs,
        /// The workload identity (its only URI SAN).
        #[arg(long)]
        spiffe_id: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime (at most 30d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Lay out a CA directory for one cluster from the files of the
    /// install's `strait-ca` Secret (ca.json, bundle.pem, intermediate.pem,
    /// intermediate.key), with the key 0600: the init step of the CA's pod
    /// (a Secret volume cannot give a non-root user that mode).
    ///
    ///   strait ca unpack --from /etc/strait/ca-secret --ca-dir ca --cluster east
    #[command(verbatim_doc_comment)]
    Unpack {
        /// The directory holding the Secret's files.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        ca: UnpackArgs,
    },
    /// Run the cluster's CA signing service (gRPC over TLS) until Ctrl-C.
    ///
    /// Workloads get their first certificate with a bootstrap token
    /// (`strait ca token create`; good for one certificate) and renew with
    /// their current certificate. It follows the CA directory: a root
    /// rotation's new bundle and intermediate are served without a restart,
    /// and workloads learn of them within 10 s.
    ///
    ///   strait ca serve --cluster east --listen 127.0.0.1:8600
    #[command(verbatim_doc_comment)]
    Serve {
        #[command(flatten)]
        ca: CaArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: std::net::SocketAddr,
        /// Default lifetime of the certificates it signs.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Admin HTTP address: `/metrics` (strait_ca_signings_total, ...),
        /// `/ready`, `/live`. Off when unset.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Also accept projected ServiceAccount tokens (audience `strait`),
        /// checked by a TokenReview with this kubeconfig's credentials, or
        /// the pod's service account with `in-cluster` (docs/kubernetes.md).
        #[arg(long, value_name = "KUBECONFIG|in-cluster")]
        token_review: Option<PathBuf>,
    },
    /// Bootstrap tokens for the signing service.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Staged root rotation on a live mesh: add the new root, re-issue
    /// every certificate under it, drop the old root; each stage waits
    /// until every component confirms it.
    #[command(subcommand)]
    Rotate(rotate::RotateCommand),
    /// Check a certificate chain against the trust bundle and print its identity.
    ///
    ///   strait ca verify --chain ./web/chain.pem
    #[command(verbatim_doc_comment)]
    Verify {
        /// The CA directory (for its trust bundle).
        #[arg(long, env = "STRAIT_CA_DIR", default_value = DEFAULT_DIR)]
        ca_dir: PathBuf,
        /// PEM chain, leaf first.
        #[arg(long)]
        chain: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token that lets one namespace/service account get one
    /// certificate (the CA refuses it once used; renewals need no token).
    ///
    ///   strait ca token create --cluster east --namespace default --service-account web
    #[command(verbatim_doc_comment)]
    Create {
        #[command(flatten)]
        ca: CaArgs,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token may be used.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Revoke every token of a namespace/service account, at once.
    Revoke {
        #[command(flatten)]
        ca: CaArgs,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        service_account: String,
    },
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The CA directory to write.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The cluster whose intermediate the Secret holds.
    #[arg(long)]
    cluster: String,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// The CA directory made by `strait ca init`.
    #[arg(long, env = "STRAIT_CA_DIR", default_value = DEFAULT_DIR)]
    ca_dir: PathBuf,
    /// The cluster whose intermediate is used.
    #[arg(long)]
    cluster: String,
}

impl CaArgs {
    fn open(&self) -> anyhow::Result<(CaDir, ClusterName)> {
        let cluster = ClusterName::new(&self.cluster).context("--cluster")?;
        let ca = CaDir::open(&self.ca_dir).with_context(|| {
            format!(
                "no CA at {} (create one with `strait ca init --out {}`)",
                self.ca_dir.display(),
                self.ca_dir.display()
            )
        })?;
        Ok((ca, cluster))
    }
}

#[derive(Serialize)]
struct Created {
    trust_domain: String,
    dir: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    imported: bool,
}

#[derive(Serialize)]
struct IssuedOut {
    spiffe_id: String,
    cluster: String,
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    bundle: PathBuf,
    not_after: String,
}

pub fn run(cmd: CaCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init {
            trust_domain,
            out,
            ttl,
            import_cert,
            import_key,
        } => {
            let td = TrustDomain::new(&trust_domain).context("--trust-domain")?;
            let imported = import_cert.is_some();
            let ca = match (import_cert, import_key) {
                (Some(c), Some(k)) => {
                    let cert =
                        std::fs::read_to_string(&c).with_context(|| c.display().to_string())?;
                    let key =
                        std::fs::read_to_string(&k).with_context(|| k.display().to_string())?;
                    CaDir::import(&out, &td, &cert, &key)?
                }
                _ => CaDir::init(&out, &td, ttl)?,
            };
            let created = Created {
                trust_domain: td.to_string(),
                dir: out.clone(),
                root: ca.path().join("root.pem"),
                bundle: ca.bundle_path(),
                imported,
            };
            emit(format, &created, |c| {
                format!(
                    "{} root CA for trust domain {}\n  root    {}\n  bundle  {}\nnext: strait ca intermediate --ca-dir {} --cluster <name>\n",
                    if c.imported { "imported" } else { "created" },
                    c.trust_domain,
                    c.root.display(),
                    c.bundle.display(),
                    c.dir.display()
                )
            })
        }
        CaCommand::Intermediate { ca, ttl } => {
            let (dir, cluster) = ca.open()?;
            let path = dir.new_intermediate(&cluster, ttl)?;
            #[derive(Serialize)]
            struct Out {
                cluster: String,
                intermediate: PathBuf,
            }
            emit(
                format,
                &Out {
                    cluster: cluster.to_string(),
                    intermediate: path,
                },
                |o| {
                    format!(
                        "signed intermediate CA for cluster {}\n  cert  {}\n",
                        o.cluster,
                        o.intermediate.display()
                    )
                },
            )
        }
        CaCommand::Issue {
            ca,
            spiffe_id,
            out,
            ttl,
        } => {
            let (dir, cluster) = ca.open()?;
            let id = SpiffeId::parse(&spiffe_id).context("--spiffe-id")?;
            let files = dir.issue(&cluster, &id, ttl, &out)?;
            let o = IssuedOut {
                spiffe_id: id.to_string(),
                cluster: cluster.to_string(),
                cert: files.cert,
                key: files.key,
                chain: files.chain,
                bundle: files.bundle,
                not_after: expiry(files.not_after),
            };
            emit(format, &o, |o| {
                format!(
                    "issued {} (cluster {})\n  cert     {}\n  key      {} (mode 0600)\n  chain    {}\n  bundle   {}\n  expires  {}\n",
                    o.spiffe_id,
                    o.cluster,
                    o.cert.display(),
                    o.key.display(),
                    o.chain.display(),
                    o.bundle.display(),
                    o.not_after
                )
            })
        }
        CaCommand::Unpack { from, ca } => {
            let cluster = ClusterName::new(&ca.cluster).context("--cluster")?;
            unpack(&from, &ca.ca_dir, &cluster)?;
            println!(
                "CA directory {} ready for cluster {cluster}",
                ca.ca_dir.display()
            );
            Ok(())
        }
        CaCommand::Serve {
            ca,
            listen,
            ttl,
            admin,
            token_review,
        } => serve(ca, listen, ttl, admin, token_review),
        CaCommand::Rotate(cmd) => rotate::run(cmd, format),
        CaCommand::Token(TokenCommand::Create {
            ca,
            namespace,
            service_account,
            ttl,
        }) => {
            let (dir, cluster) = ca.open()?;
            let store = TokenStore::open(&dir.cluster_dir(&cluster).join("tokens.json"))?;
            let token = store.create(&namespace, &service_account, ttl)?;
            #[derive(Serialize)]
            struct Out {
                token: String,
                namespace: String,
                service_account: String,
                ttl_seconds: u64,
            }
            emit(
                format,
                &Out {
                    token,
                    namespace,
                    service_account,
                    ttl_seconds: ttl.as_secs(),
                },
                |o| o.token.clone() + "\n",
            )
        }
        CaCommand::Token(TokenCommand::Revoke {
            ca,
            namespace,
            service_account,
        }) => {
            let (dir, cluster) = ca.open()?;
            let store = TokenStore::open(&dir.cluster_dir(&cluster).join("tokens.json"))?;
            let n = store.revoke(&namespace, &service_account)?;
            #[derive(Serialize)]
            struct Out {
                revoked: usize,
            }
            emit(format, &Out { revoked: n }, |o| {
                format!(
                    "revoked {} token(s) of ns/{namespace}/sa/{service_account}\n",
                    o.revoked
                )
            })
        }
        CaCommand::Verify { ca_dir, chain } => {
            let dir = CaDir::open(&ca_dir)?;
            let pem =
                std::fs::read_to_string(&chain).with_context(|| chain.display().to_string())?;
            let certs = strait_ca::pem::certs(&pem);
            if certs.is_empty() {
                bail!("{}: no CERTIFICATE block found", chain.display());
            }
            let id = dir
                .bundle()?
                .verify(
                    &certs,
                    rustls_pki_types::UnixTime::now(),
                    strait_ca::verify::Usage::Client,
                )
                .with_context(|| format!("{} does not verify", chain.display()))?;
            #[derive(Serialize)]
            struct Out {
                spiffe_id: String,
                valid: bool,
            }
            emit(
                format,
                &Out {
                    spiffe_id: id.to_string(),
                    valid: true,
                },
                |o| format!("valid: {}\n", o.spiffe_id),
            )
        }
    }
}

/// Writes `from`'s Secret files as the CA directory `to` and checks it
/// opens with a usable intermediate for `cluster`.
fn unpack(
    from: &std::path::Path,
    to: &std::path::Path,
    cluster: &ClusterName,
) -> anyhow::Result<()> {
    let read = |name: &str| {
        let p = from.join(name);
        std::fs::read(&p).with_context(|| format!("--from: cannot read {}", p.display()))
    };
    let cluster_dir = to.join("clusters").join(cluster.as_str());
    std::fs::create_dir_all(&cluster_dir)
        .with_context(|| format!("--ca-dir: cannot create {}", cluster_dir.display()))?;
    let write = |path: std::path::PathBuf, bytes: Vec<u8>, mode: u32| {
        strait_ca::store::write_atomic(&path, &bytes, mode)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(to.join("ca.json"), read("ca.json")?, 0o644)?;
    write(to.join("bundle.pem"), read("bundle.pem")?, 0o644)?;
    write(
        cluster_dir.join("intermediate.pem"),
        read("intermediate.pem")?,
        0o644,
    )?;
    write(
        cluster_dir.join("intermediate.key"),
        read("intermediate.key")?,
        0o600,
    )?;
    let dir = CaDir::open(to)?;
    dir.intermediate(cluster).with_context(|| {
        format!("the Secret's intermediate is not usable for cluster {cluster}")
    })?;
    dir.bundle()?;
    Ok(())
}

fn serve(
    ca: CaArgs,
    listen: std::net::SocketAddr,
    ttl: Duration,
    admin: Option<std::net::SocketAddr>,
    token_review: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (dir, cluster) = ca.open()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let authority = dir.intermediate(&cluster)?;
        let bundle = SharedBundle::new(dir.bundle()?);
        let tokens = Arc::new(TokenStore::open(
            &dir.cluster_dir(&cluster).join("tokens.json"),
        )?);
        // The server's own certificate, re-issued at each start and by
        // the follower (before it expires, and under a new intermediate).
        let (store, own_until) = strait_ca::follow::server_cert(&authority)?;
        let server_id = server::server_identity(dir.trust_domain());
        let metrics = strait_ca::metrics::CaMetrics::new();
        let mut service =
            CaService::new(authority, bundle, tokens, ttl).with_metrics(metrics.clone());
        if let Some(k) = token_review {
            let kubeconfig = (k.as_os_str() != "in-cluster").then_some(k.as_path());
            let client = strait_federation::kube::client(kubeconfig)
                .await
                .context("--token-review")?;
            let reviewer = strait_k8s::tokenreview::KubeTokenReviewer::new(client);
            service = service.with_token_review(Arc::new(reviewer));
            eprintln!("accepting ServiceAccount tokens (audience strait) checked by TokenReview");
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        // `strait ca rotate` changes the CA directory under a running
        // service: follow it (bundle, intermediate, own certificate).
        let follower = tokio::spawn(strait_ca::follow::follow(
            service.clone(),
            dir.clone(),
            cluster.clone(),
            store.clone(),
            own_until,
            Duration::from_secs(1),
        ));
        let bound = server::serve(service, listener, store)?;
        let admin = match admin {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin on {addr}"))?;
                eprintln!("strait CA admin: http://{}/metrics", l.local_addr()?);
                Some(tokio::spawn(strait_ca::metrics::serve_admin(l, metrics)))
            }
            None => None,
        };
        eprintln!(
            "strait CA for cluster {cluster} serving on {} (identity {server_id}); Ctrl-C to stop",
            bound.addr
        );
        crate::signal::wait_for_shutdown().await;
        bound.shutdown();
        follower.abort();
        if let Some(a) = &admin {
            a.abort();
        }
        eprintln!("stopped");
        anyhow::Ok(())
    })
}
