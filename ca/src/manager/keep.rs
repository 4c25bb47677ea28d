//! Where a CA-issued identity is kept between runs (`identity: { ca: {
//! keep: DIR } }`): `chain.pem`, `key.pem` (0600) and `bundle.pem`, written
//! after every renewal and every adopted bundle. A join token is good for
//! one certificate, so a component restarted by its own command starts from
//! what it kept and renews over mTLS, without a new token.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use strait_api::SpiffeId;

use crate::store::write_atomic;
use crate::verify::{TrustBundle, Usage};
use crate::{CaError, CertStore};

const CHAIN: &str = "chain.pem";
const KEY: &str = "key.pem";
const BUNDLE: &str = "bundle.pem";

/// Writes the certificate and its key (owner-only).
pub fn save_identity(
    dir: &Path,
    chain: &[CertificateDer<'static>],
    key_pem: &str,
) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(CaError::io(dir))?;
    write_atomic(&dir.join(KEY), key_pem.as_bytes(), 0o600)?;
    write_atomic(
        &dir.join(CHAIN),
        crate::pem::encode_certs(chain).as_bytes(),
        0o644,
    )
}

/// Writes the roots it trusts.
pub fn save_roots(dir: &Path, roots: &[CertificateDer<'static>]) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(CaError::io(dir))?;
    write_atomic(
        &dir.join(BUNDLE),
        crate::pem::encode_certs(roots).as_bytes(),
        0o644,
    )
}

/// What was kept, if it is still good: the certificate is `id`'s, the key
/// is its key, and the chain verifies now under the kept roots. `Err`
/// says why not (nothing kept yet is `Ok(None)`).
pub fn load(
    dir: &Path,
    id: &SpiffeId,
) -> Result<Option<(CertStore, TrustBundle, SystemTime)>, String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let (Ok(chain), Ok(key), Ok(bundle)) = (read(CHAIN), read(KEY), read(BUNDLE)) else {
        return Ok(None);
    };
    let store = CertStore::from_pem(&chain, &key).map_err(|e| e.to_string())?;
    let got = store.identity();
    if got.as_ref() != Some(id) {
        return Err(format!(
            "the kept certificate is for {}, not {id}",
            got.map_or_else(|| "no SPIFFE ID".to_owned(), |g| g.to_string())
        ));
    }
    let roots = TrustBundle::from_pem(id.trust_domain(), &bundle).map_err(|e| e.to_string())?;
    let certs = crate::pem::certs(&chain);
    roots
        .verify(&certs, UnixTime::now(), Usage::Client)
        .map_err(|e| format!("the kept certificate does not verify now: {e}"))?;
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .map(|(_, c)| SystemTime::from(c.validity().not_after.to_datetime()))
        .map_err(|e| e.to_string())?;
    Ok(Some((store, roots, not_after)))
}
