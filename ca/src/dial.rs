//! The one way mesh gRPC clients dial: TCP without Nagle, then TLS with a
//! mesh client config (the peer is checked by SPIFFE ID; the server name is
//! only SNI). The CA client, the controllers' federation channels and every
//! role's config-push subscription use it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A tonic connector (`Endpoint::connect_with_connector`) that dials
/// `addr` and runs TLS with `cfg`, sending `sni` as the server name.
pub fn connector(
    addr: SocketAddr,
    cfg: ClientConfig,
    sni: &'static str,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future: Future + Send,
> + Clone
+ Send
+ 'static {
    let connector = TlsConnector::from(Arc::new(cfg));
    tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name =
                ServerName::try_from(sni).map_err(|e| std::io::Error::other(e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}
