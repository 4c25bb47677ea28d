//! PEM helpers over `rustls-pki-types`.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// All CERTIFICATE blocks in `pem`, in order. Other blocks are skipped.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// The first CERTIFICATE block in `pem`.
pub fn one_cert(pem: &str) -> Option<CertificateDer<'static>> {
    certs(pem).into_iter().next()
}

/// PEM-encodes DER certificates, one block each.
pub fn encode_certs<'a>(ders: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for der in ders {
        out.push_str(&encode("CERTIFICATE", der));
    }
    out
}

pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
            let der = CertificateDer::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            let pem = encode_certs([&der]);
            if len > 0 {
                assert_eq!(certs(&pem), vec![der], "len {len}");
            }
        }
    }
}
