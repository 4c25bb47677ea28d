//! The little DER that rcgen cannot write for us: a name constraints
//! extension with a URI subtree (RFC 5280 4.2.1.10).
//!
//! rcgen's `GeneralSubtree` has no URI form, so the root's constraint is a
//! custom extension. OpenSSL enforces it (`openssl verify`); webpki does not
//! implement URI constraints and would fail closed, so [`crate::verify`]
//! enforces the trust domain itself and hands webpki the anchor without it.

/// id-ce-nameConstraints.
pub(crate) const NAME_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 30];

/// `NameConstraints { permittedSubtrees [0] { GeneralSubtree { uniformResourceIdentifier [6] host } } }`.
pub(crate) fn uri_name_constraints(host: &str) -> Vec<u8> {
    let uri = tlv(0x86, host.as_bytes()); // [6] IMPLICIT IA5String
    let subtree = tlv(0x30, &uri); // GeneralSubtree SEQUENCE
    let permitted = tlv(0xa0, &subtree); // [0] IMPLICIT GeneralSubtrees
    tlv(0x30, &permitted) // NameConstraints SEQUENCE
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, NameConstraints};
    use x509_parser::prelude::FromDer;

    #[test]
    fn encodes_a_uri_subtree_that_x509_parser_reads_back() {
        for host in ["strait.local", &"a".repeat(200)] {
            let der = uri_name_constraints(host);
            let (rest, nc) = NameConstraints::from_der(&der).expect("parses");
            assert!(rest.is_empty());
            let permitted = nc.permitted_subtrees.expect("permitted");
            assert_eq!(permitted.len(), 1);
            assert_eq!(permitted[0].base, GeneralName::URI(host));
            assert!(nc.excluded_subtrees.is_none());
        }
    }
}
