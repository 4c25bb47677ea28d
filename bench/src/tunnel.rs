//! What a cross-cluster tunnel costs to open, measured against a running
//! east-west gateway and a sidecar behind it, by a client that speaks the
//! protocol itself (as a sidecar would, without its pools):
//!
//! - new tunnel: TCP + outer mTLS to the gateway + HTTP/2 + `CONNECT` +
//!   inner mTLS to the sidecar + HTTP/2 + one request, to its response;
//! - new stream: `CONNECT` + inner mTLS + HTTP/2 + one request on an outer
//!   connection that is already open (what a sidecar pays per new upstream
//!   connection once its gateway connection is pooled);
//! - request: one more request on an open tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use strait_api::{SpiffeId, TrustDomain};
use strait_ca::tls::ExpectedServer;
use strait_ca::{CertStore, SharedBundle, TrustBundle};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// `strait-bench tunnel` arguments.
#[derive(Debug)]
pub struct Args {
    gateway: SocketAddr,
    endpoint: SocketAddr,
    identity: SpiffeId,
    dst: String,
    certs: PathBuf,
    n: usize,
}

const USAGE: &str = "usage: strait-bench tunnel --gateway ADDR --endpoint ADDR --identity SPIFFE_ID --dst NAME.NS:PORT --certs DIR [--n N]";

pub fn parse(argv: &[String]) -> anyhow::Result<Args> {
    let (mut gateway, mut endpoint, mut identity, mut dst, mut certs, mut n) =
        (None, None, None, None, None, 200);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let Some(v) = it.next() else { bail!(USAGE) };
        match a.as_str() {
            "--gateway" => gateway = Some(v.parse()?),
            "--endpoint" => endpoint = Some(v.parse()?),
            "--identity" => identity = Some(SpiffeId::parse(v)?),
            "--dst" => dst = Some(v.clone()),
            "--certs" => certs = Some(PathBuf::from(v)),
            "--n" => n = v.parse()?,
            _ => bail!(USAGE),
        }
    }
    match (gateway, endpoint, identity, dst, certs) {
        (Some(gateway), Some(endpoint), Some(identity), Some(dst), Some(certs)) => Ok(Args {
            gateway,
            endpoint,
            identity,
            dst,
            certs,
            n,
        }),
        _ => bail!(USAGE),
    }
}

struct Client {
    outer: TlsConnector,
    inner: TlsConnector,
}

fn configs(certs: &Path, identity: &SpiffeId) -> anyhow::Result<Client> {
    let read = |f: &str| {
        std::fs::read_to_string(certs.join(f))
            .with_context(|| format!("{}", certs.join(f).display()))
    };
    let store = CertStore::from_pem(&read("chain.pem")?, &read("key.pem")?)?;
    let td = TrustDomain::new(identity.trust_domain_str())?;
    let bundle = SharedBundle::new(TrustBundle::from_pem(td, &read("bundle.pem")?)?);
    let make = |expected| -> anyhow::Result<TlsConnector> {
        let cfg: ClientConfig = strait_ca::tls::client_config(&store, &bundle, expected, &[b"h2"])?;
        Ok(TlsConnector::from(Arc::new(cfg)))
    };
    Ok(Client {
        outer: make(ExpectedServer::AnyInTrustDomain)?,
        inner: make(ExpectedServer::Id(identity.clone()))?,
    })
}

async fn h2<T>(io: T) -> anyhow::Result<SendRequest<Empty<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    Ok(send)
}

fn name() -> ServerName<'static> {
    ServerName::try_from("strait.invalid")
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// An outer mTLS HTTP/2 connection to the gateway.
async fn outer(c: &Client, gateway: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(gateway).await?;
    tcp.set_nodelay(true)?;
    let tls = c.outer.connect(name(), tcp).await.context("outer mTLS")?;
    h2(TokioIo::new(tls)).await
}

/// A `CONNECT` stream to `endpoint`, inner mTLS in it, HTTP/2 on top.
async fn stream(
    c: &Client,
    outer: &mut SendRequest<Empty<Bytes>>,
    endpoint: SocketAddr,
) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    outer.ready().await?;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(endpoint.to_string())
        .body(Empty::new())?;
    let resp = outer.send_request(req).await?;
    if resp.status() != http::StatusCode::OK {
        bail!("CONNECT {endpoint}: {}", resp.status());
    }
    let up: Upgraded = hyper::upgrade::on(resp).await?;
    let tls = c
        .inner
        .connect(name(), TokioIo::new(up))
        .await
        .context("inner mTLS")?;
    h2(TokioIo::new(tls)).await
}

async fn request(send: &mut SendRequest<Empty<Bytes>>, dst: &str) -> anyhow::Result<()> {
    send.ready().await?;
    let req = http::Request::builder()
        .uri("http://bench/")
        .header("strait-dst", dst)
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("request through the tunnel: {status}");
    }
    Ok(())
}

fn percentiles(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).map(|d| d.as_secs_f64() * 1e3)
    };
    serde_json::json!({ "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "n": v.len() })
}

pub async fn run(a: Args) -> anyhow::Result<serde_json::Value> {
    let c = configs(&a.certs, &a.identity)?;
    // Warm up (page in code, fill caches) with a few whole tunnels.
    for _ in 0..10 {
        let mut o = outer(&c, a.gateway).await?;
        request(&mut stream(&c, &mut o, a.endpoint).await?, &a.dst).await?;
    }
    let (mut new_tunnel, mut new_stream, mut reqs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.n {
        let t = Instant::now();
        let mut o = outer(&c, a.gateway).await?;
        let mut s = stream(&c, &mut o, a.endpoint).await?;
        request(&mut s, &a.dst).await?;
        new_tunnel.push(t.elapsed());
    }
    let mut o = outer(&c, a.gateway).await?;
    for _ in 0..a.n {
        let t = Instant::now();
        let mut s = stream(&c, &mut o, a.endpoint).await?;
        request(&mut s, &a.dst).await?;
        new_stream.push(t.elapsed());
    }
    let mut s = stream(&c, &mut o, a.endpoint).await?;
    for _ in 0..a.n {
        let t = Instant::now();
        request(&mut s, &a.dst).await?;
        reqs.push(t.elapsed());
    }
    let (nt, ns, rq) = (
        percentiles(new_tunnel),
        percentiles(new_stream),
        percentiles(reqs),
    );
    Ok(serde_json::json!({
        "new_tunnel_p50_ms": nt["p50_ms"],
        "new_stream_p50_ms": ns["p50_ms"],
        "request_on_open_tunnel_p50_ms": rq["p50_ms"],
        "new_tunnel": nt,
        "new_stream": ns,
        "request_on_open_tunnel": rq,
    }))
}
