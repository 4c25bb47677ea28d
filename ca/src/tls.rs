//! rustls configuration for mesh mTLS: SPIFFE verifiers for both ends, and a
//! certificate store that swaps the local certificate on rotation without
//! touching open connections.
//!
//! Mesh TLS is TLS 1.3 only, ECDSA P-256 keys, ring provider.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use strait_api::{ClusterName, SpiffeId};

use crate::verify::{SharedBundle, Usage, VerifyError};

/// The crypto provider every Strait component uses.
/// ring, with TLS 1.3 suites in the order AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305 (rustls defaults to AES-256 first). AES-128-GCM is
/// about a third cheaper per byte, and every byte between sidecars (twice
/// across clusters) is sealed once and opened once.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn sig_algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Errors building TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("private key is unusable: {0}")]
    Key(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate chain is empty")]
    EmptyChain,
}

/// The local workload's current certificate and key, swapped atomically on
/// renewal. New handshakes use the new certificate; established connections
/// keep theirs.
#[derive(Debug, Clone)]
pub struct CertStore(Arc<RwLock<Option<Arc<CertifiedKey>>>>);

impl Default for CertStore {
    fn default() -> Self {
        Self::empty()
    }
}

impl CertStore {
    pub fn empty() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }

    /// A store holding `chain` (leaf first) and its PKCS#8 key.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let me = Self::empty();
        me.set_parts(chain, key)?;
        Ok(me)
    }

    /// Reads a chain PEM and a key PEM.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        Self::from_parts(crate::pem::certs(chain_pem), key)
    }

    /// Replaces the certificate. The key must match the leaf.
    pub fn set_parts(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        if chain.is_empty() {
            return Err(TlsError::EmptyChain);
        }
        let ck = CertifiedKey::from_der(chain, key, &provider())?;
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        *g = Some(Arc::new(ck));
        Ok(())
    }

    /// Replaces the certificate with an already-built one.
    pub fn set_certified(&self, ck: Arc<CertifiedKey>) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        *g = Some(ck);
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The SPIFFE ID of the current certificate.
    pub fn identity(&self) -> Option<SpiffeId> {
        let ck = self.current()?;
        crate::verify::spiffe_id_of(ck.end_entity_cert().ok()?).ok()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// How a server treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client must present a certificate that verifies (mesh mTLS).
    Required,
    /// A client may present a certificate; if it does, the handshake proves
    /// possession of its key, but the chain is checked by the application
    /// (the CA checks it per request so a renewal with an expired
    /// certificate gets a clear gRPC error instead of a TLS alert).
    Deferred,
}

/// Verifies mesh clients against the trust bundle.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: SharedBundle,
    auth: ClientAuth,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.auth == ClientAuth::Deferred {
            return Ok(ClientCertVerified::assertion());
        }
        verify_chain(&self.bundle, end_entity, intermediates, now, Usage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &sig_algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

/// What a client expects of the server it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Exactly this identity.
    Id(SpiffeId),
    /// Exactly this identity, with a certificate of this cluster (its
    /// issuer's OU): every cluster's CA service has the same identity.
    IdInCluster(SpiffeId, ClusterName),
    /// Any identity in the bundle's trust domain (e.g. a gateway replica).
    AnyInTrustDomain,
}

/// Verifies a mesh server against the trust bundle and an expected identity.
/// The TLS server name is ignored: identity is the SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: SharedBundle,
    expected: ExpectedServer,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_chain(&self.bundle, end_entity, intermediates, now, Usage::Server)?;
        let (want, cluster) = match &self.expected {
            ExpectedServer::AnyInTrustDomain => return Ok(ServerCertVerified::assertion()),
            ExpectedServer::Id(want) => (want, None),
            ExpectedServer::IdInCluster(want, c) => (want, Some(c)),
        };
        if &id != want {
            return Err(to_rustls(VerifyError::UnexpectedIdentity {
                got: id.to_string(),
                expected: want.to_string(),
            }));
        }
        if let Some(c) = cluster {
            let got = peer_cluster(Some(std::slice::from_ref(end_entity)));
            if got.as_ref() != Some(c) {
                return Err(to_rustls(VerifyError::UnexpectedIdentity {
                    got: format!(
                        "{id} of {}",
                        got.map_or_else(|| "no cluster".to_owned(), |g| format!("cluster {g}"))
                    ),
                    expected: format!("{want} of cluster {c}"),
                }));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &sig_algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &sig_algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        sig_algs().supported_schemes()
    }
}

fn verify_chain(
    bundle: &SharedBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    bundle.get().verify(&chain, now, usage).map_err(to_rustls)
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// A server config for mesh listeners: TLS 1.3, SPIFFE client verification,
/// the certificate from `certs`, and the given ALPN protocols.
pub fn server_config(
    certs: &CertStore,
    bundle: &SharedBundle,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier {
        bundle: bundle.clone(),
        auth,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certs.clone()));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A client config for dialing a mesh server that must present `expected`.
/// Presents the certificate in `certs` when it holds one.
pub fn client_config(
    certs: &CertStore,
    bundle: &SharedBundle,
    expected: ExpectedServer,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier {
        bundle: bundle.clone(),
        expected,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(certs.clone()));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The verified peer's SPIFFE ID after a handshake (the chain was checked
/// during the handshake; this only reads the leaf).
pub fn peer_identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, VerifyError> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or(VerifyError::NoCertificate)?;
    crate::verify::spiffe_id_of(leaf)
}

/// The cluster a Strait intermediate CA certificate belongs to: the OU of
/// its subject (what [`peer_cluster`] reads as its leaves' issuer).
pub fn ca_cluster(cert: &CertificateDer<'_>) -> Option<ClusterName> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let ou = cert.subject().iter_organizational_unit().next()?;
    ClusterName::new(ou.as_str().ok()?).ok()
}

/// The cluster a verified peer belongs to: the organizational unit of its
/// leaf's issuer (Strait intermediates carry their cluster's name there,
/// see [`crate::authority::Authority::new_intermediate`]). The chain was
/// verified in the handshake, so the issuer name is the verified
/// intermediate's subject. `None` when there is no leaf, or its issuer
/// names no valid cluster (a leaf signed by the root itself).
pub fn peer_cluster(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<ClusterName> {
    use x509_parser::prelude::FromDer;
    let leaf = peer_certs.and_then(|c| c.first())?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let ou = cert.issuer().iter_organizational_unit().next()?;
    ClusterName::new(ou.as_str().ok()?).ok()
}

/// A TLS failure carried in an I/O error, in words: a refused peer
/// certificate reads as Strait's own reason (e.g. "peer is
/// spiffe://…/sa/db, expected spiffe://…/sa/web"), not as rustls's
/// debug form.
pub fn explain_io(e: &std::io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls {
        if let Some(v) = other.0.downcast_ref::<VerifyError>() {
            return format!("the peer's certificate was refused: {v}");
        }
    }
    tls.to_string()
}
