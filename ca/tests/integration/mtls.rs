//! Mesh mTLS with the SPIFFE verifiers over loopback sockets, and
//! certificate hot-swap without dropping open connections.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use strait_ca::tls::{self, ClientAuth, ExpectedServer};
use strait_ca::{CertStore, SharedBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fixture::{Fixture, fixture, id};

fn parts(fx: &Fixture, who: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let f = fx
        .ca
        .issue(&fx.cluster, &id(who), Duration::from_secs(3600), dir.path())
        .unwrap();
    let chain = strait_ca::pem::certs(&std::fs::read_to_string(f.chain).unwrap());
    let key = PrivateKeyDer::from_pem_file(f.key).unwrap();
    (chain, key)
}

fn store(fx: &Fixture, who: &str) -> CertStore {
    let (chain, key) = parts(fx, who);
    CertStore::from_parts(chain, key).unwrap()
}

/// An echo server that prefixes each reply with the client's SPIFFE ID.
async fn echo_server(certs: CertStore, bundle: SharedBundle) -> std::net::SocketAddr {
    let cfg = tls::server_config(&certs, &bundle, ClientAuth::Required, &[b"h2"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls::peer_identity(s.get_ref().1.peer_certificates()).unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!("{peer} {}", String::from_utf8_lossy(&buf[..n]));
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn dial(
    addr: std::net::SocketAddr,
    certs: &CertStore,
    bundle: &SharedBundle,
    expected: ExpectedServer,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = tls::client_config(certs, bundle, expected, &[b"h2"]).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("mesh.invalid").unwrap(), tcp)
        .await?;
    // TLS 1.3: a client-cert refusal shows up on the first read.
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).await?;
    if n == 0 {
        return Err(std::io::Error::other("closed"));
    }
    Ok(s)
}

#[tokio::test]
async fn both_sides_see_the_peer_spiffe_id() {
    let fx = fixture();
    let bundle = SharedBundle::new(fx.ca.bundle().unwrap());
    let addr = echo_server(
        store(&fx, "spiffe://strait.local/ns/default/sa/api"),
        bundle.clone(),
    )
    .await;
    let client = store(&fx, "spiffe://strait.local/ns/default/sa/web");
    let api = ExpectedServer::Id(id("spiffe://strait.local/ns/default/sa/api"));
    let mut s = dial(addr, &client, &bundle, api).await.unwrap();
    assert_eq!(
        tls::peer_identity(s.get_ref().1.peer_certificates()).unwrap(),
        id("spiffe://strait.local/ns/default/sa/api")
    );
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"spiffe://strait.local/ns/default/sa/web hi");
}

#[tokio::test]
async fn refuses_unexpected_server_identity_and_foreign_clients() {
    let fx = fixture();
    let bundle = SharedBundle::new(fx.ca.bundle().unwrap());
    let addr = echo_server(
        store(&fx, "spiffe://strait.local/ns/default/sa/api"),
        bundle.clone(),
    )
    .await;
    let client = store(&fx, "spiffe://strait.local/ns/default/sa/web");
    let wrong = ExpectedServer::Id(id("spiffe://strait.local/ns/default/sa/db"));
    let err = dial(addr, &client, &bundle, wrong).await.unwrap_err();
    assert!(err.to_string().contains("UnexpectedIdentity"), "{err}");
    assert!(err.to_string().contains("sa/db"), "{err}");
    // A client of another mesh (same trust domain name, other root) is refused by the server.
    let other = fixture();
    let other_bundle = SharedBundle::new(other.ca.bundle().unwrap());
    let foreign = store(&other, "spiffe://strait.local/ns/default/sa/web");
    assert!(
        dial(
            addr,
            &foreign,
            &other_bundle,
            ExpectedServer::AnyInTrustDomain
        )
        .await
        .is_err()
    );
    // And a client without any certificate.
    assert!(
        dial(
            addr,
            &CertStore::empty(),
            &bundle,
            ExpectedServer::AnyInTrustDomain
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn rotation_swaps_the_certificate_without_dropping_open_connections() {
    let fx = fixture();
    let bundle = SharedBundle::new(fx.ca.bundle().unwrap());
    let server = store(&fx, "spiffe://strait.local/ns/default/sa/api");
    let addr = echo_server(server.clone(), bundle.clone()).await;
    let client = store(&fx, "spiffe://strait.local/ns/default/sa/web");
    let mut open = dial(addr, &client, &bundle, ExpectedServer::AnyInTrustDomain)
        .await
        .unwrap();
    let before = open.get_ref().1.peer_certificates().unwrap()[0].clone();

    // Rotate the server's certificate in place.
    let (chain, key) = parts(&fx, "spiffe://strait.local/ns/default/sa/api");
    server.set_parts(chain, key).unwrap();

    // The open connection keeps working.
    open.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 128];
    let n = open.read(&mut buf).await.unwrap();
    assert!(buf[..n].ends_with(b"still"));
    // A new connection gets the new certificate.
    let s2 = dial(addr, &client, &bundle, ExpectedServer::AnyInTrustDomain)
        .await
        .unwrap();
    let after = s2.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        before, after,
        "new handshakes must use the rotated certificate"
    );
}
