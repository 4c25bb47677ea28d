//! `strait injector`: the mutating admission webhook. AdmissionReview v1
//! over TLS (rustls); the answer is a JSON Patch that makes the object
//! what `strait inject` makes of it ([`review`], pure). `GET /ready` and
//! `/live` on the same port serve kubelet's HTTPS probes.
//!
//! Not here: the webhook configuration (see `install::webhook`), and
//! reloading a renewed serving certificate (restart the Deployment).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes_body::{Full, full};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::inject::InjectOptions;

pub mod review;

pub use review::{OptIn, ReviewError};

/// The API server sends at most 3 MiB objects; a little room for the review.
pub const MAX_BODY: usize = 4 << 20;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Why the injector did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// `injector.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectorFile {
    pub listen: SocketAddr,
    /// Strait's namespace: never injected.
    pub namespace: String,
    pub tls: TlsFiles,
    pub inject: InjectOptions,
}

/// The serving certificate (PEM chain) and key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded, checked config.
#[derive(Clone)]
pub struct InjectorConfig {
    pub listen: SocketAddr,
    pub namespace: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub inject: InjectOptions,
}

impl std::fmt::Debug for InjectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectorConfig")
            .field("listen", &self.listen)
            .field("namespace", &self.namespace)
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, InjectorError> {
    std::fs::read_to_string(path).map_err(|source| InjectorError::Read {
        path: path.to_owned(),
        source,
    })
}

impl InjectorConfig {
    /// Parses and checks `injector.yaml`, loading the certificate it names.
    pub fn load(path: &Path) -> Result<Self, InjectorError> {
        let text = read(path)?;
        let bad = |reason: String| InjectorError::Config {
            path: path.to_owned(),
            reason,
        };
        let f: InjectorFile = strait_api::yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if f.inject.image.trim().is_empty() {
            return Err(bad("inject.image: empty".into()));
        }
        f.inject.check().map_err(|e| bad(format!("inject.{e}")))?;
        let tls = server_tls(&read(&f.tls.cert)?, &read(&f.tls.key)?).map_err(|e| {
            bad(format!(
                "tls: {} / {}: {e}",
                f.tls.cert.display(),
                f.tls.key.display()
            ))
        })?;
        Ok(Self {
            listen: f.listen,
            namespace: f.namespace,
            tls,
            inject: f.inject,
        })
    }
}

/// A TLS 1.3 server config for a PEM chain and key; HTTP/1.1 only.
pub fn server_tls(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, InjectorError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let certs = strait_ca::pem::certs(cert_pem);
    if certs.is_empty() {
        return Err(InjectorError::Tls("no certificate in the cert file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| InjectorError::Tls(format!("key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(strait_ca::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| InjectorError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| InjectorError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A running injector.
pub struct Handle {
    /// The address it bound (port 0 picks one).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops accepting, lets requests in flight finish (at most a few
    /// seconds), then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Binds and serves until [`Handle::stop`].
pub async fn start(config: InjectorConfig) -> Result<Handle, InjectorError> {
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| InjectorError::Bind {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| InjectorError::Bind {
            addr: config.listen,
            source,
        })?;
    let (stop, mut stopped) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(config.tls.clone());
    let shared = Arc::new(config);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    conns.spawn(async move {
                        let tls = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "tls handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEAD_TIMEOUT)
                            .serve_connection(TokioIo::new(tls), svc);
                        let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        while tokio::time::timeout(Duration::from_secs(3), conns.join_next())
            .await
            .ok()
            .flatten()
            .is_some()
        {}
    });
    Ok(Handle { addr, stop, task })
}

async fn handle(shared: &InjectorConfig, req: Request<Incoming>) -> Response<Full> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/ready" | "/live") => return full(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, _) => {}
        _ => return full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
    let Some(opt_in) = OptIn::from_path(&path) else {
        return full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "unknown path; the webhook paths are /inject/namespace and /inject/pod\n",
        );
    };
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return full(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                &format!("admission review refused: body: {e} (at most {MAX_BODY} bytes)\n"),
            );
        }
    };
    match review::review(&body, opt_in, &shared.namespace, &shared.inject) {
        Ok(answer) => {
            let text = serde_json::to_string(&answer).unwrap_or_default();
            full(StatusCode::OK, "application/json", &text)
        }
        Err(e) => {
            tracing::warn!(error = %e, "admission review refused");
            full(StatusCode::BAD_REQUEST, "text/plain", &format!("{e}\n"))
        }
    }
}

mod bytes_body {
    use http::{Response, StatusCode, header};

    pub type Full = http_body_util::Full<hyper::body::Bytes>;

    pub fn full(status: StatusCode, content_type: &str, body: &str) -> Response<Full> {
        let mut r = Response::new(Full::new(hyper::body::Bytes::from(body.to_owned())));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    }
}
