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
    #[error("cannot reach the CA at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
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
        let reason = s
            .metadata()
            .get("strait-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Self::Refused {
            code: s.code(),
            message: s.message().to_owned(),
            reason,
        }
    }
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
    /// trust domain, and presenting `identity`'s certificate if it has one.
    pub async fn connect(
        addr: SocketAddr,
        bundle: &SharedBundle,
        identity: &CertStore,
    ) -> Result<Self, ClientError> {
        let expected =
            ExpectedServer::Id(crate::server::server_identity(bundle.get().trust_domain()));
        let cfg = tls::client_config(identity, bundle, expected, &[b"h2"])?;
        let connect = crate::dial::connector(addr, cfg, "ca.strait.invalid");
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| ClientError::Connect { addr, source })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(connect)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
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
