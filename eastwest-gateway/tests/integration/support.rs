//! A mesh PKI with per-cluster intermediates, gateway configs, raw mTLS
//! HTTP/2 clients and TCP echo endpoints on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::tls::{self, ExpectedServer};
use strait_ca::{CaDir, CertStore, SharedBundle};
use strait_gateway::config::IdentitySource;
use strait_gateway::{ExportTable, GatewayConfig, Limits, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "strait.local";

pub struct Pki {
    pub tmp: tempfile::TempDir,
    pub ca: CaDir,
}

pub fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

impl Pki {
    /// A root for `td` with intermediates for east, west and central.
    pub fn new(td: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new(td).unwrap();
        let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
        for c in ["east", "west", "central"] {
            ca.new_intermediate(&cluster(c), Duration::from_secs(86400))
                .unwrap();
        }
        Self { tmp, ca }
    }

    pub fn id(&self, sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!(
            "spiffe://{}/ns/default/sa/{sa}",
            self.ca.trust_domain()
        ))
        .unwrap()
    }

    pub fn identity(&self, cluster_name: &str, sa: &str) -> IdentitySource {
        let dir = self.tmp.path().join(format!(
            "certs-{cluster_name}-{sa}-{}",
            rand::random::<u64>()
        ));
        let f = self
            .ca
            .issue(
                &cluster(cluster_name),
                &self.id(sa),
                Duration::from_secs(3600),
                &dir,
            )
            .unwrap();
        IdentitySource::Files {
            chain: f.chain,
            key: f.key,
            bundle: f.bundle,
        }
    }

    /// A gateway config for `cluster_name`, listening on `ip` (port 0).
    pub fn gateway(&self, cluster_name: &str, ip: &str, limits: Limits) -> GatewayConfig {
        GatewayConfig {
            cluster: cluster(cluster_name),
            trust_domain: self.ca.trust_domain().clone(),
            identity: self.identity(cluster_name, "eastwest-gateway"),
            listeners: Listeners {
                public: format!("{ip}:0").parse().unwrap(),
                admin: format!("{ip}:0").parse().unwrap(),
            },
            limits,
            controller: None,
            tracing: None,
        }
    }

    /// A client TLS config presenting a `cluster_name` workload certificate
    /// (or none), trusting this PKI's root.
    pub fn client(&self, cluster_name: &str, sa: Option<&str>) -> Arc<ClientConfig> {
        let certs = match sa {
            Some(sa) => self.certs(cluster_name, sa),
            None => CertStore::empty(),
        };
        self.client_with(certs)
    }

    /// A workload certificate of this PKI.
    pub fn certs(&self, cluster_name: &str, sa: &str) -> CertStore {
        let IdentitySource::Files { chain, key, .. } = self.identity(cluster_name, sa) else {
            unreachable!()
        };
        CertStore::from_pem(
            &std::fs::read_to_string(chain).unwrap(),
            &std::fs::read_to_string(key).unwrap(),
        )
        .unwrap()
    }

    /// A client presenting `certs` (from any PKI) that trusts this one.
    pub fn client_with(&self, certs: CertStore) -> Arc<ClientConfig> {
        let bundle = SharedBundle::new(self.ca.bundle().unwrap());
        Arc::new(
            tls::client_config(&certs, &bundle, ExpectedServer::AnyInTrustDomain, &[b"h2"])
                .unwrap(),
        )
    }
}

pub type Send = SendRequest<Empty<Bytes>>;

/// An mTLS HTTP/2 connection to a gateway.
pub async fn h2(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Send, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("gateway.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// The answer to one CONNECT.
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub stream: Option<TokioIo<hyper::upgrade::Upgraded>>,
}

pub async fn connect(send: &mut Send, authority: &str) -> Result<Answer, String> {
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("strait-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let stream = if status == 200 {
        Some(TokioIo::new(
            hyper::upgrade::on(resp).await.map_err(|e| e.to_string())?,
        ))
    } else {
        None
    };
    Ok(Answer {
        status,
        reason,
        stream,
    })
}

/// A TCP echo server standing in for a sidecar's inbound port (the gateway
/// does not look at the bytes, so it need not speak TLS).
pub async fn echo(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn roundtrip<S>(s: &mut S, msg: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    back
}

/// An export table with one service `name.default` on `port`.
pub fn exports(name: &str, port: u16, endpoints: &[SocketAddr]) -> ExportTable {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    serde_yaml_ng::from_str(&format!(
        "services:\n  - {{ name: {name}, ports: [{port}], endpoints: [{}] }}\n",
        eps.join(", ")
    ))
    .unwrap()
}

/// The value of the metric line that starts with `prefix`, or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A tiny HTTP/1.1 GET to the admin port.
pub async fn reqwest_like(addr: std::net::SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
