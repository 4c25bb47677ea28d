//! gRPC over the mesh's rustls configs (from `strait_ca::tls`): a server that
//! runs tonic routes on connections it owns, and a client channel.
//!
//! The server does the TLS handshake itself (mTLS required, SPIFFE
//! verification by `strait_ca::tls::server_config`), puts the verified peer
//! identity into every request as a [`PeerIdentity`] extension, and serves
//! HTTP/2 on a task per connection. Stopping the server aborts every
//! connection at once, so long-lived streams end with it (a graceful tonic
//! shutdown would wait for them forever).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use strait_api::{ClusterName, SpiffeId};
use strait_ca::tls::{self, ClientAuth, ExpectedServer, TlsError};
use strait_ca::{CertStore, SharedBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

/// How long a peer may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who called, as the handshake proved it: the SPIFFE ID of the caller's
/// certificate and the cluster whose intermediate signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// `None` when the issuer names no cluster ([`tls::peer_cluster`]).
    pub cluster: Option<ClusterName>,
}

/// The verified caller of a request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    req.extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified client certificate"))
}

/// A refusal with a machine-readable `strait-reason` label beside the
/// message (clients and tests match on the label, people read the message).
pub fn refuse(code: tonic::Code, reason: &'static str, message: String) -> tonic::Status {
    let mut status = tonic::Status::new(code, message);
    status.metadata_mut().insert(
        "strait-reason",
        tonic::metadata::MetadataValue::from_static(reason),
    );
    status
}

/// Refuses a caller whose certificate was not signed by `cluster`'s
/// intermediate: every workload of the mesh verifies under the shared
/// root, so verification alone says nothing about which cluster's
/// controller it may talk to.
pub fn require_cluster(
    peer: &PeerIdentity,
    cluster: &ClusterName,
    what: &str,
) -> Result<(), tonic::Status> {
    match &peer.cluster {
        Some(c) if c == cluster => Ok(()),
        other => Err(refuse(
            tonic::Code::PermissionDenied,
            "other_cluster",
            format!(
                "{} holds a certificate of {}; only workloads and components of cluster {cluster} may {what}",
                peer.id,
                other.as_ref().map_or_else(
                    || "no cluster (its issuer names none)".to_owned(),
                    |c| format!("cluster {c}")
                ),
            ),
        )),
    }
}

/// A running gRPC server; dropping it stops the server and every connection.
#[derive(Debug)]
pub struct GrpcServer {
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl GrpcServer {
    /// Stops the server and waits until the port and every connection are
    /// closed.
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Serves `routes` on `listener` over mTLS with the certificate in `certs`;
/// clients must present a certificate that chains to `bundle`.
pub fn serve(
    listener: TcpListener,
    certs: &CertStore,
    bundle: &SharedBundle,
    routes: Routes,
) -> Result<GrpcServer, TlsError> {
    let addr = listener
        .local_addr()
        .map_err(|e| TlsError::Key(format!("listener has no address: {e}")))?;
    let cfg = tls::server_config(certs, bundle, ClientAuth::Required, &[b"h2"])?;
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, from)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(connection(acceptor.clone(), tcp, from, routes.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(GrpcServer {
        addr,
        task: Some(task),
    })
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, from: SocketAddr, routes: Routes) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%from, error = %e, "grpc tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%from, "grpc tls handshake timed out");
            return;
        }
    };
    let certs = tls.get_ref().1.peer_certificates();
    let id = match tls::peer_identity(certs) {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(%from, error = %e, "grpc peer has no usable identity");
            return;
        }
    };
    let peer = PeerIdentity {
        id,
        cluster: tls::peer_cluster(certs),
    };
    let svc = tower::ServiceExt::map_request(routes, move |mut req: http::Request<_>| {
        req.extensions_mut().insert(peer.clone());
        req
    });
    let res = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
        .await;
    if let Err(e) = res {
        tracing::debug!(%from, error = %e, "grpc connection ended");
    }
}

/// A channel to a mesh gRPC server over mTLS, presenting `certs` and
/// expecting the server to be `expected`. Connects lazily on first use and
/// reconnects on the next call after a failure.
pub fn channel(
    addr: SocketAddr,
    certs: &CertStore,
    bundle: &SharedBundle,
    expected: ExpectedServer,
) -> Result<Channel, TlsError> {
    let cfg = tls::client_config(certs, bundle, expected, &[b"h2"])?;
    let connect = strait_ca::dial::connector(addr, cfg, "controller.strait.invalid");
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| TlsError::Key(format!("bad address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connect))
}
