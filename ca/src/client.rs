//! The client of the CA's signing service.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use strait_api::proto::ca::certificate_authority_client::CertificateAuthorityClient;
use strait_api::proto::ca::{SignRequest, TrustBundleRequest};
use tonic::transport::{Channel, Endpoint};

use crate::tls::{self, CertStore, ExpectedServer};
use crate::verify::SharedBundle;

/// Errors talking to the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `reason` is the innermost cause in words (tonic's own message is
    /// only "transport error").
    #[error("cannot reach the CA at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("CA refused: {code:?}: {message} (reason: {reason})")]
    Refused {
        code: tonic::Code,
        message: String,
        reason: String,
    },
    #[error("CA answered with an unusable chain: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let reason = crate::server::reason_of(&s).to_owned();
        Self::Refused {
            code: s.code(),
            message: s.message().to_owned(),
            reason,
        }
    }
}

/// The innermost cause of `e`, in words: a refused certificate as
/// Strait's reason ([`tls::explain_io`]), else the last source's text.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return tls::explain_io(io);
        }
        last = inner.to_string();
        cur = inner.source();
    }
    last
}

/// A signed chain as returned by the CA.
#[derive(Debug, Clone)]
pub struct SignedChain {
    /// Leaf first, then the intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// What the CA trusts and signs with now (its `TrustBundle` answer).
#[derive(Debug, Clone)]
pub struct CaTrust {
    pub roots: Vec<CertificateDer<'static>>,
    /// The intermediate it signs with; `None` from a CA that does not say.
    pub issuer: Option<CertificateDer<'static>>,
}

/// A connection to one CA server.
#[derive(Debug, Clone)]
pub struct CaClient {
    inner: CertificateAuthorityClient<Channel>,
}

impl CaClient {
    /// Connects over TLS, verifying that the server is the CA of the bundle's
    /// trust domain (and, when `identity` holds a certificate, of its
    /// cluster), and presenting `identity`'s certificate if it has one.
    pub async fn connect(
        addr: SocketAddr,
        bundle: &SharedBundle,
        identity: &CertStore,
    ) -> Result<Self, ClientError> {
        let id = crate::server::server_identity(bundle.get().trust_domain());
        // Every cluster's CA service has that identity: once the caller
        // has a certificate, only its own cluster's CA will do.
        let own_cluster = identity
            .current()
            .and_then(|ck| ck.cert.get(1).and_then(|i| tls::ca_cluster(i)));
        let expected = match own_cluster {
            Some(c) => ExpectedServer::IdInCluster(id, c),
            None => ExpectedServer::Id(id),
        };
        Self::connect_expecting(addr, bundle, identity, expected).await
    }

    /// [`Self::connect`] with an explicit expectation of the server (tests
    /// play clients that skip the cluster check with it).
    pub async fn connect_expecting(
        addr: SocketAddr,
        bundle: &SharedBundle,
        identity: &CertStore,
        expected: ExpectedServer,
    ) -> Result<Self, ClientError> {
        let cfg = tls::client_config(identity, bundle, expected, &[b"h2"])?;
        let connect = crate::dial::connector(addr, cfg, "ca.strait.invalid");
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::Connect {
                addr,
                reason: describe(&e),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(connect)
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                reason: describe(&e),
            })?;
        Ok(Self {
            inner: CertificateAuthorityClient::new(channel),
        })
    }

    /// Sends a CSR; `token` is empty for a renewal over mTLS.
    pub async fn sign(
        &mut self,
        csr_der: Vec<u8>,
        token: &str,
        ttl: Option<Duration>,
    ) -> Result<SignedChain, ClientError> {
        let resp = self
            .inner
            .sign(SignRequest {
                csr_der,
                bootstrap_token: token.to_owned(),
                ttl_seconds: ttl.map(|d| d.as_secs()).unwrap_or(0),
            })
            .await?
            .into_inner();
        if resp.chain_der.is_empty() {
            return Err(ClientError::BadAnswer("empty chain".into()));
        }
        let not_after = u64::try_from(resp.not_after_unix)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| ClientError::BadAnswer("negative not_after".into()))?;
        Ok(SignedChain {
            chain: resp
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            roots: resp
                .trust_bundle_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            not_after,
        })
    }

    /// The CA's current roots and intermediate.
    pub async fn trust(&mut self) -> Result<CaTrust, ClientError> {
        let resp = self
            .inner
            .trust_bundle(TrustBundleRequest {})
            .await?
            .into_inner();
        if resp.roots_der.is_empty() {
            return Err(ClientError::BadAnswer("the CA trusts no root".into()));
        }
        Ok(CaTrust {
            roots: resp
                .roots_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            issuer: (!resp.issuer_der.is_empty()).then(|| CertificateDer::from(resp.issuer_der)),
        })
    }
}
