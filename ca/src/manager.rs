//! The workload side of certificate rotation.
//!
//! A [`CertManager`] makes a fresh key and CSR, has it signed, and puts the
//! result in a [`CertStore`] that TLS configs read on every handshake. It
//! renews at 2/3 of the certificate's remaining life (counted from when it
//! was received, so a backdated `notBefore` does not shorten it), retries
//! with jittered exponential back-off when the CA is unreachable, and never
//! drops the current certificate because a renewal failed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strait_api::backoff::Backoff;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use strait_api::SpiffeId;
use tokio::sync::watch;

use crate::client::{CaClient, ClientError, SignedChain};
use crate::tls::CertStore;
use crate::verify::{SharedBundle, TrustBundle};

/// Something that signs CSRs: the CA over gRPC, or an in-process CA in tests.
pub trait Signer: Send + Sync + 'static {
    /// Signs `csr_der`; `current` holds the caller's current certificate,
    /// if any, for renewal over mTLS.
    fn sign<'a>(
        &'a self,
        csr_der: Vec<u8>,
        current: &'a CertStore,
    ) -> Pin<Box<dyn Future<Output = Result<SignedChain, ClientError>> + Send + 'a>>;
}

/// Signs through the CA's gRPC service: with the bootstrap token while the
/// workload has no certificate, with its certificate afterwards.
#[derive(Debug, Clone)]
pub struct GrpcSigner {
    pub addr: SocketAddr,
    pub bundle: SharedBundle,
    pub bootstrap_token: String,
    pub ttl: Option<Duration>,
}

impl Signer for GrpcSigner {
    fn sign<'a>(
        &'a self,
        csr_der: Vec<u8>,
        current: &'a CertStore,
    ) -> Pin<Box<dyn Future<Output = Result<SignedChain, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            // A new connection per renewal: it must present the current cert.
            let mut client = CaClient::connect(self.addr, &self.bundle, current).await?;
            let token = if current.current().is_some() {
                ""
            } else {
                self.bootstrap_token.as_str()
            };
            client.sign(csr_der, token, self.ttl).await
        })
    }
}

/// When to renew and how to retry.
#[derive(Debug, Clone)]
pub struct RenewPolicy {
    /// Renew after this share of the remaining life (default 2/3).
    pub at_fraction: f64,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            at_fraction: 2.0 / 3.0,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// What the manager has done so far (for metrics, status and tests).
#[derive(Debug, Clone, Default)]
pub struct ManagerStatus {
    pub renewals: u64,
    pub failures: u64,
    pub not_after: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// Keeps a workload's certificate fresh.
pub struct CertManager {
    id: SpiffeId,
    store: CertStore,
    bundle: Option<SharedBundle>,
    signer: Arc<dyn Signer>,
    policy: RenewPolicy,
    status: watch::Sender<ManagerStatus>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    pub fn new(id: SpiffeId, signer: Arc<dyn Signer>, policy: RenewPolicy) -> Self {
        Self {
            id,
            store: CertStore::empty(),
            bundle: None,
            signer,
            policy,
            status: watch::channel(ManagerStatus::default()).0,
        }
    }

    /// Also refresh `bundle` with the roots the CA returns (root rotation).
    pub fn with_bundle(mut self, bundle: SharedBundle) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// The store TLS configs should read.
    pub fn store(&self) -> CertStore {
        self.store.clone()
    }

    pub fn status(&self) -> watch::Receiver<ManagerStatus> {
        self.status.subscribe()
    }

    /// Gets one certificate now. The current one stays if this fails.
    pub async fn renew_once(&self) -> Result<SystemTime, ClientError> {
        let key = KeyPair::generate().map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let mut params = CertificateParams::default();
        let uri = self
            .id
            .as_str()
            .to_owned()
            .try_into()
            .map_err(|_| ClientError::BadAnswer("identity is not IA5".into()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let signed = self.signer.sign(csr.der().to_vec(), &self.store).await?;
        let got = crate::verify::spiffe_id_of(&signed.chain[0])
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        if got != self.id {
            return Err(ClientError::BadAnswer(format!(
                "CA issued {got}, expected {}",
                self.id
            )));
        }
        if let Some(bundle) = &self.bundle {
            if !signed.roots.is_empty() {
                let td = bundle.get().trust_domain().clone();
                let next = TrustBundle::new(td, signed.roots.clone())
                    .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
                bundle.set(next);
            }
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.store.set_parts(signed.chain, key)?;
        self.status.send_modify(|s| {
            s.renewals += 1;
            s.not_after = Some(signed.not_after);
            s.last_error = None;
        });
        tracing::info!(identity = %self.id, "workload certificate renewed");
        Ok(signed.not_after)
    }

    /// Renews forever: at `at_fraction` of each certificate's remaining
    /// life, retrying failures with jittered back-off. Call after a first
    /// successful [`Self::renew_once`] (or it starts with a renewal).
    pub async fn run(self: Arc<Self>) {
        let mut not_after = self.status.borrow().not_after;
        loop {
            if let Some(end) = not_after {
                let left = end.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(left.mul_f64(self.policy.at_fraction)).await;
            }
            let mut backoff = Backoff::new(self.policy.retry_min, self.policy.retry_max);
            not_after = loop {
                match self.renew_once().await {
                    Ok(t) => break Some(t),
                    Err(e) => {
                        let retry_in = backoff.next_delay(rand::random());
                        tracing::warn!(identity = %self.id, error = %e, ?retry_in, "certificate renewal failed; keeping the current certificate");
                        self.status.send_modify(|s| {
                            s.failures += 1;
                            s.last_error = Some(e.to_string());
                        });
                        tokio::time::sleep(retry_in).await;
                    }
                }
            };
        }
    }
}

/// Gets a workload's first certificate from the CA at `addr` with its
/// bootstrap token (six tries with doubling back-off from 200 ms), then
/// renews it forever in a spawned task. Proxies and gateways both start
/// this way.
pub async fn bootstrap(
    addr: SocketAddr,
    id: SpiffeId,
    bootstrap_token: String,
    bundle: SharedBundle,
) -> Result<(CertStore, tokio::task::JoinHandle<()>), ClientError> {
    let signer = Arc::new(GrpcSigner {
        addr,
        bundle: bundle.clone(),
        bootstrap_token,
        ttl: None,
    });
    let mgr = Arc::new(CertManager::new(id, signer, RenewPolicy::default()).with_bundle(bundle));
    let mut delay = Duration::from_millis(200);
    let mut last = ClientError::BadAnswer("no attempt was made".into());
    for _ in 0..6 {
        match mgr.renew_once().await {
            Ok(_) => {
                let store = mgr.store();
                return Ok((store, tokio::spawn(mgr.run())));
            }
            Err(e) => {
                tracing::warn!(error = %e, "first certificate not issued yet; retrying");
                last = e;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Err(last)
}
