//! The workload side of certificate rotation.
//!
//! A [`CertManager`] makes a fresh key and CSR, has it signed, and puts the
//! result in a [`CertStore`] that TLS configs read on every handshake. It
//! renews at 2/3 of the certificate's remaining life (counted from when it
//! was received, so a backdated `notBefore` does not shorten it), retries
//! with jittered exponential back-off when the CA is unreachable, and never
//! drops the current certificate because a renewal failed.

pub mod keep;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strait_api::backoff::Backoff;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strait_api::SpiffeId;
use tokio::sync::watch;

use crate::client::{CaClient, CaTrust, ClientError, SignedChain};
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

    /// What the CA trusts and signs with now, for signers that can say
    /// (`None`: this signer cannot; the manager then only renews on time).
    fn trust<'a>(
        &'a self,
        _current: &'a CertStore,
    ) -> Pin<Box<dyn Future<Output = Result<Option<CaTrust>, ClientError>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }
}

/// Signs through the CA's gRPC service: with the bootstrap token while the
/// workload has no certificate, with its certificate afterwards.
#[derive(Debug, Clone)]
pub struct GrpcSigner {
    pub addr: SocketAddr,
    pub bundle: SharedBundle,
    pub bootstrap_token: String,
    pub ttl: Option<Duration>,
    /// The connection the trust checks (every [`CHECK_EVERY`]) share: one
    /// mTLS handshake per workload, not one per check; dropped after a
    /// failed check, so the next one dials again.
    checks: Arc<tokio::sync::Mutex<Option<CaClient>>>,
}

impl GrpcSigner {
    pub fn new(
        addr: SocketAddr,
        bundle: SharedBundle,
        bootstrap_token: String,
        ttl: Option<Duration>,
    ) -> Self {
        Self {
            addr,
            bundle,
            bootstrap_token,
            ttl,
            checks: Arc::default(),
        }
    }
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

    fn trust<'a>(
        &'a self,
        current: &'a CertStore,
    ) -> Pin<Box<dyn Future<Output = Result<Option<CaTrust>, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            let mut held = self.checks.lock().await;
            let mut client = match held.take() {
                Some(client) => client,
                None => CaClient::connect(self.addr, &self.bundle, current).await?,
            };
            let trust = client.trust().await?;
            *held = Some(client);
            Ok(Some(trust))
        })
    }
}

/// How often a workload asks its CA for the current roots and intermediate.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// When to renew and how to retry.
#[derive(Debug, Clone)]
pub struct RenewPolicy {
    /// Renew after this share of the remaining life (default 2/3).
    pub at_fraction: f64,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How often to ask the CA what it trusts and signs with between
    /// renewals (`None`: never). New roots are adopted at once, and a new
    /// intermediate (a root rotation's re-issue) triggers a renewal.
    pub check_every: Option<Duration>,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            at_fraction: 2.0 / 3.0,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            check_every: Some(CHECK_EVERY),
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
    /// Where the certificate, key and roots are kept between runs.
    keep: Option<PathBuf>,
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
            keep: None,
        }
    }

    /// Also keep the certificate, key (0600) and roots in `dir` after every
    /// change, and start from them ([`Self::resume`]).
    pub fn with_keep(mut self, dir: PathBuf) -> Self {
        self.keep = Some(dir);
        self
    }

    /// Starts from what was kept, if it is still good (`Ok(false)`: nothing
    /// kept; `Err`: why it is not used).
    pub fn resume(&self) -> Result<bool, String> {
        let Some(dir) = &self.keep else {
            return Ok(false);
        };
        let Some((store, roots, not_after)) = keep::load(dir, &self.id)? else {
            return Ok(false);
        };
        if let Some(ck) = store.current() {
            self.store.set_certified(ck);
        }
        if let Some(bundle) = &self.bundle {
            bundle.set(roots);
        }
        self.status.send_modify(|s| s.not_after = Some(not_after));
        Ok(true)
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
        self.adopt_roots(&signed.roots, &signed.chain)?;
        let key_pem = key.serialize_pem();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.store.set_parts(signed.chain.clone(), key)?;
        self.keep_now(Some((&signed.chain, &key_pem)));
        self.status.send_modify(|s| {
            s.renewals += 1;
            s.not_after = Some(signed.not_after);
            s.last_error = None;
        });
        tracing::info!(identity = %self.id, "workload certificate renewed");
        Ok(signed.not_after)
    }

    /// Trusts `roots` from now on, when they differ from the bundle's and
    /// `chain` (the certificate it presents then) verifies under them: a
    /// bundle that would leave it unable to prove itself is refused.
    /// `Ok(true)`: the bundle changed.
    fn adopt_roots(
        &self,
        roots: &[CertificateDer<'static>],
        chain: &[CertificateDer<'static>],
    ) -> Result<bool, ClientError> {
        let Some(bundle) = &self.bundle else {
            return Ok(false);
        };
        let current = bundle.get();
        if roots.is_empty() || current.roots() == roots {
            return Ok(false);
        }
        let next = TrustBundle::new(current.trust_domain().clone(), roots.to_vec())
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        if crate::trust::chains_to(&next, chain).is_none() {
            return Err(ClientError::BadAnswer(format!(
                "the CA's {} root(s) do not include the root of this workload's certificate; keeping the current bundle",
                roots.len()
            )));
        }
        bundle.set(next);
        tracing::info!(identity = %self.id, roots = roots.len(), "trust bundle changed at the CA; adopted");
        Ok(true)
    }

    /// With `keep`: writes the roots trusted now, and `identity` (a new
    /// chain and its key) when given. A failure is logged; the workload
    /// goes on with what it holds.
    fn keep_now(&self, identity: Option<(&[CertificateDer<'static>], &str)>) {
        let Some(dir) = &self.keep else {
            return;
        };
        let roots = self.bundle.as_ref().map(|b| b.get().roots().to_vec());
        let kept = identity
            .map_or(Ok(()), |(chain, key_pem)| {
                keep::save_identity(dir, chain, key_pem)
            })
            .and_then(|()| roots.map_or(Ok(()), |r| keep::save_roots(dir, &r)));
        if let Err(e) = kept {
            tracing::warn!(identity = %self.id, error = %e, "cannot keep the certificate for a restart");
        }
    }

    /// Sleeps until `due`, asking the CA every `check_every` meanwhile;
    /// returns early when the CA signs with another intermediate than the
    /// current certificate's.
    async fn wait_until(&self, due: tokio::time::Instant) {
        let Some(every) = self.policy.check_every else {
            return tokio::time::sleep_until(due).await;
        };
        loop {
            // ±10 % so the workloads of one CA do not ask in step.
            let every = every.mul_f64(0.9 + 0.2 * rand::random::<f64>());
            let next = (tokio::time::Instant::now() + every).min(due);
            tokio::time::sleep_until(next).await;
            if next >= due {
                return;
            }
            let trust = match self.signer.trust(&self.store).await {
                Ok(Some(t)) => t,
                Ok(None) => return tokio::time::sleep_until(due).await,
                Err(e) => {
                    tracing::debug!(identity = %self.id, error = %e, "cannot ask the CA what it trusts");
                    continue;
                }
            };
            let chain = self
                .store
                .current()
                .map(|ck| ck.cert.clone())
                .unwrap_or_default();
            match self.adopt_roots(&trust.roots, &chain) {
                Ok(true) => self.keep_now(None),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(identity = %self.id, error = %e, "the CA's trust bundle is unusable");
                }
            }
            let ours = chain.get(1).cloned();
            if trust.issuer.is_some() && trust.issuer != ours {
                tracing::info!(identity = %self.id, "the CA signs with a new intermediate; renewing now");
                return;
            }
        }
    }

    /// Renews forever: at `at_fraction` of each certificate's remaining
    /// life, or at once when the CA's intermediate changes, retrying
    /// failures with jittered back-off. Call after a first successful
    /// [`Self::renew_once`] (or it starts with a renewal).
    pub async fn run(self: Arc<Self>) {
        let mut not_after = self.status.borrow().not_after;
        loop {
            if let Some(end) = not_after {
                let left = end.duration_since(SystemTime::now()).unwrap_or_default();
                let due = tokio::time::Instant::now() + left.mul_f64(self.policy.at_fraction);
                self.wait_until(due).await;
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
/// renews it forever in a spawned task. With `keep`, it starts from the
/// certificate kept there by an earlier run when that is still good (no
/// token needed: it renews over mTLS), and keeps every new one there.
/// Proxies, gateways, controllers and DNS all start this way.
pub async fn bootstrap(
    addr: SocketAddr,
    id: SpiffeId,
    bootstrap_token: String,
    bundle: SharedBundle,
    keep: Option<PathBuf>,
) -> Result<(CertStore, tokio::task::JoinHandle<()>), ClientError> {
    let signer = Arc::new(GrpcSigner::new(addr, bundle.clone(), bootstrap_token, None));
    let mut mgr = CertManager::new(id, signer, RenewPolicy::default()).with_bundle(bundle);
    if let Some(dir) = keep {
        mgr = mgr.with_keep(dir);
    }
    let mgr = Arc::new(mgr);
    match mgr.resume() {
        Ok(true) => {
            tracing::info!(identity = %mgr.id, "started from the kept certificate");
            let store = mgr.store();
            return Ok((store, tokio::spawn(mgr.run())));
        }
        Ok(false) => {}
        Err(why) => {
            tracing::warn!(identity = %mgr.id, %why, "not using the kept certificate; asking with the join token");
        }
    }
    let mut delay = Duration::from_millis(200);
    let mut last = ClientError::BadAnswer("no attempt was made".into());
    for _ in 0..6 {
        match mgr.renew_once().await {
            Ok(_) => {
                let store = mgr.store();
                return Ok((store, tokio::spawn(mgr.run())));
            }
            // A refusal of the token or CSR does not change by asking again.
            Err(
                e @ ClientError::Refused {
                    code:
                        tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument,
                    ..
                },
            ) => return Err(e),
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
