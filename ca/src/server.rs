//! The CA's gRPC signing service (tonic over rustls).
//!
//! A caller authenticates with a bootstrap token (first certificate) or its
//! current certificate over mTLS (renewal). Each refusal has its own gRPC
//! code, message and a `strait-reason` metadata value.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use strait_api::SpiffeId;
use strait_api::proto::ca::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use strait_api::proto::ca::{SignRequest, SignResponse, TrustBundleRequest, TrustBundleResponse};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{Code, Request, Response, Status};

use crate::authority::{Authority, MAX_WORKLOAD_TTL};
use crate::csr::{self, CsrError};
use crate::tls::{self, CertStore, ClientAuth};
use crate::token::{TokenError, TokenStore};
use crate::verify::{SharedBundle, Usage, VerifyError};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service signs with: one cluster's intermediate. Swapped whole
/// when a root rotation installs a new one ([`CaService::replace_issuer`]).
struct Issuer {
    authority: Authority,
    /// The intermediate's certificate, sent after the leaf.
    intermediate: CertificateDer<'static>,
    /// The cluster this CA signs for (its intermediate's OU): a renewal
    /// is accepted only from a certificate of this cluster.
    cluster: Option<strait_api::ClusterName>,
}

impl Issuer {
    fn new(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            cluster: crate::tls::ca_cluster(authority.cert()),
            intermediate: authority.cert().clone(),
            authority,
        })
    }
}

/// The signing service of one cluster's intermediate. Clones share the
/// issuer, bundle and tokens (keep one to swap the issuer while it serves).
#[derive(Clone)]
pub struct CaService {
    issuer: Arc<RwLock<Arc<Issuer>>>,
    bundle: SharedBundle,
    tokens: Arc<TokenStore>,
    default_ttl: Duration,
    /// Signings in progress (each on a blocking thread): a flood of
    /// requests waits here instead of taking every thread of the pool.
    signing: Arc<tokio::sync::Semaphore>,
    metrics: Option<crate::metrics::CaMetrics>,
    /// Checks projected service account tokens (Kubernetes).
    pub(crate) reviewer: Option<Arc<dyn crate::tokenreview::TokenReviewer>>,
}

/// How many requests are signed at once.
const SIGNING_AT_ONCE: usize = 8;

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("trust_domain", self.bundle.get().trust_domain())
            .finish_non_exhaustive()
    }
}

/// The metadata key naming why a request was refused.
const REASON: &str = "strait-reason";

impl CaService {
    /// One signing request: the TokenReview when configured, then the
    /// signing on a blocking thread (refusals are counted and logged by
    /// the caller, [`CertificateAuthority::sign`]).
    async fn review_and_sign(&self, request: Request<SignRequest>) -> Result<SignResponse, Status> {
        let peer = request.peer_certs();
        let peer: Option<Vec<CertificateDer<'static>>> =
            peer.map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
        // Kubernetes: a projected service account token, checked by a
        // TokenReview (none configured: `None`, the usual paths).
        let td = self.issuer().authority.trust_domain().clone();
        let reviewed =
            crate::tokenreview::review(self.reviewer.as_deref(), &td, request.get_ref()).await;
        let (peer, reviewed) = match reviewed.transpose()? {
            Some(id) => (None, Some(id)),
            None => (peer, None),
        };
        // Signing reads and writes the token table (file I/O, a lock file
        // shared with other processes): off the async workers.
        let (svc, req) = (self.clone(), request.into_inner());
        // The permit goes with the blocking task: a caller that gives up
        // does not free its place while the signing still runs.
        let permit = self.signing.clone().acquire_owned().await.map_err(|_| {
            refuse(
                Code::Unavailable,
                "shutting_down",
                "the CA is stopping".into(),
            )
        })?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            svc.sign(&req, peer.as_deref(), reviewed.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(refuse(Code::Internal, "sign_failed", e.to_string())))
    }
}

pub(crate) fn refuse(code: Code, reason: &'static str, message: String) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(REASON, tonic::metadata::MetadataValue::from_static(reason));
    status
}

/// The `strait-reason` of a refusal (empty when it has none).
pub(crate) fn reason_of(status: &Status) -> &str {
    status
        .metadata()
        .get(REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl From<CsrError> for Status {
    fn from(e: CsrError) -> Self {
        let code = match e {
            CsrError::WrongTrustDomain { .. } | CsrError::CaRequested => Code::PermissionDenied,
            _ => Code::InvalidArgument,
        };
        refuse(code, e.reason(), e.to_string())
    }
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::WrongIdentity { .. } => Code::PermissionDenied,
            TokenError::Storage(_) => Code::Unavailable,
            _ => Code::Unauthenticated,
        };
        refuse(code, e.reason(), e.to_string())
    }
}

impl CaService {
    pub fn new(
        authority: Authority,
        bundle: SharedBundle,
        tokens: Arc<TokenStore>,
        default_ttl: Duration,
    ) -> Self {
        Self {
            issuer: Arc::new(RwLock::new(Issuer::new(authority))),
            bundle,
            tokens,
            default_ttl: default_ttl.min(MAX_WORKLOAD_TTL),
            signing: Arc::new(tokio::sync::Semaphore::new(SIGNING_AT_ONCE)),
            metrics: None,
            reviewer: None,
        }
    }

    fn issuer(&self) -> Arc<Issuer> {
        self.issuer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Signs with `authority` from now on (a new intermediate of the same
    /// cluster, installed by a root rotation's re-issue). Requests being
    /// signed finish with the old one.
    pub fn replace_issuer(&self, authority: Authority) {
        *self
            .issuer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Issuer::new(authority);
        if let Some(m) = &self.metrics {
            m.set_issuer_expiry(self.issuer().authority.not_after());
        }
    }

    /// Counts signings and refusals in `metrics` (and sets the issuer's expiry).
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::CaMetrics) -> Self {
        metrics.set_issuer_expiry(self.issuer().authority.not_after());
        self.metrics = Some(metrics);
        self
    }

    /// The service's own certificate under the issuer it signs with now
    /// ([`crate::follow::server_cert`]).
    pub fn issue_own_cert(&self) -> Result<(CertStore, std::time::SystemTime), crate::CaError> {
        crate::follow::server_cert(&self.issuer().authority)
    }

    /// The intermediate the service signs with now.
    pub fn issuer_cert(&self) -> CertificateDer<'static> {
        self.issuer().intermediate.clone()
    }

    /// The roots the service trusts and hands out.
    pub fn bundle(&self) -> &SharedBundle {
        &self.bundle
    }

    /// Checks, authorizes and signs one request. `peer` is the caller's TLS
    /// chain, when it presented one; `reviewed` the identity a TokenReview
    /// granted ([`crate::tokenreview`]).
    pub fn sign(
        &self,
        req: &SignRequest,
        peer: Option<&[CertificateDer<'static>]>,
        reviewed: Option<&SpiffeId>,
    ) -> Result<SignResponse, Status> {
        let issuer = self.issuer();
        let checked = csr::check(&req.csr_der, issuer.authority.trust_domain())?;
        // The service's own identity: workloads trust new roots from
        // whoever presents it, so no CSR ever gets it (the service issues
        // its own certificate directly, `crate::follow::server_cert`).
        if checked.id == server_identity(issuer.authority.trust_domain()) {
            return Err(refuse(
                Code::PermissionDenied,
                "reserved_identity",
                format!(
                    "{} is the CA service's own identity; it is never issued to a workload",
                    checked.id
                ),
            ));
        }
        // A TokenReview already granted exactly this identity; anything
        // else needs a bootstrap token or the caller's certificate.
        if reviewed != Some(&checked.id) {
            self.authorize(&issuer, &checked.id, &req.bootstrap_token, peer)?;
        }
        let ttl = match req.ttl_seconds {
            0 => self.default_ttl,
            s => Duration::from_secs(s).min(MAX_WORKLOAD_TTL),
        };
        let id = checked.id.clone();
        let issued = issuer
            .authority
            .issue_for_csr(checked, ttl)
            .map_err(|e| refuse(Code::Internal, "sign_failed", e.to_string()))?;
        tracing::info!(identity = %id, not_after = %issued.not_after, "issued workload certificate");
        Ok(SignResponse {
            chain_der: vec![issued.cert.to_vec(), issuer.intermediate.to_vec()],
            trust_bundle_der: self
                .bundle
                .get()
                .roots()
                .iter()
                .map(|r| r.to_vec())
                .collect(),
            not_before_unix: issued.not_before.unix_timestamp(),
            not_after_unix: issued.not_after.unix_timestamp(),
        })
    }

    fn authorize(
        &self,
        issuer: &Issuer,
        requested: &SpiffeId,
        token: &str,
        peer: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), Status> {
        if !token.is_empty() {
            return Ok(self.tokens.redeem(token, requested)?);
        }
        let Some(chain) = peer.filter(|c| !c.is_empty()) else {
            return Err(refuse(
                Code::Unauthenticated,
                "no_credentials",
                "no bootstrap token and no client certificate: present one of them".into(),
            ));
        };
        let caller = self
            .bundle
            .get()
            .verify(chain, UnixTime::now(), Usage::Client)
            .map_err(|e: VerifyError| {
                refuse(
                    Code::Unauthenticated,
                    "client_cert_invalid",
                    format!("client certificate refused for renewal: {e}"),
                )
            })?;
        // Every cluster's certificates verify under the shared root: a
        // renewal here would launder another cluster's workload into this
        // one (its certificate would then name this cluster's issuer).
        let from = crate::tls::peer_cluster(Some(chain));
        if issuer.cluster.is_none() || from != issuer.cluster {
            return Err(refuse(
                Code::PermissionDenied,
                "other_cluster",
                format!(
                    "{caller} holds a certificate of {}; this CA renews only certificates of cluster {}",
                    from.map_or_else(|| "no cluster".to_owned(), |c| format!("cluster {c}")),
                    issuer.cluster.as_ref().map_or_else(
                        || "(none: its intermediate names no cluster)".to_owned(),
                        ToString::to_string
                    )
                ),
            ));
        }
        if &caller != requested {
            return Err(refuse(
                Code::PermissionDenied,
                "renewal_identity_mismatch",
                format!(
                    "a renewal must keep the caller's identity: caller is {caller}, csr asks for {requested}"
                ),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let res = self.review_and_sign(request).await;
        if let Some(m) = &self.metrics {
            m.record(res.as_ref().err().map(|s| match reason_of(s) {
                "" => "other",
                reason => reason,
            }));
        }
        if let Err(status) = &res {
            tracing::warn!(code = ?status.code(), message = status.message(), "refused signing request");
        }
        res.map(Response::new)
    }

    async fn trust_bundle(
        &self,
        _request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        let bundle = self.bundle.get();
        Ok(Response::new(TrustBundleResponse {
            trust_domain: bundle.trust_domain().to_string(),
            roots_der: bundle.roots().iter().map(|r| r.to_vec()).collect(),
            issuer_der: self.issuer_cert().to_vec(),
        }))
    }
}

/// A running CA server.
#[derive(Debug)]
pub struct Bound {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Bound {
    /// Stops the server.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The identity the CA server presents.
pub fn server_identity(td: &strait_api::TrustDomain) -> SpiffeId {
    // "strait-system"/"ca" are valid segments, so this cannot fail.
    td.workload_id("strait-system", "ca")
        .unwrap_or_else(|_| td.id())
}

/// Serves `service` on `listener` over TLS with `server_cert` (which should
/// carry [`server_identity`]). Client certificates are optional at the TLS
/// layer and checked per request.
pub fn serve(
    service: CaService,
    listener: TcpListener,
    server_cert: CertStore,
) -> Result<Bound, crate::tls::TlsError> {
    let addr = listener
        .local_addr()
        .map_err(|e| crate::tls::TlsError::Key(format!("listener has no address: {e}")))?;
    let cfg = tls::server_config(
        &server_cert,
        &service.bundle,
        ClientAuth::Deferred,
        &[b"h2"],
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    // Handshakes run in their own tasks, so a slow or silent client never
    // holds up the others; finished TLS streams go to tonic via a channel.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept_loop = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "ca tls handshake failed"),
                    Err(_) => tracing::debug!("ca tls handshake timed out"),
                }
            });
        }
    };
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let svc = CertificateAuthorityServer::new(service);
    let task = tokio::spawn(async move {
        let server = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming);
        tokio::select! {
            res = server => if let Err(e) = res {
                tracing::error!(error = %e, "ca server stopped");
            },
            () = accept_loop => {}
        }
    });
    Ok(Bound { addr, task })
}
