//! A one-cluster mesh on loopback: a CA, echo apps and sidecars.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use strait_api::snapshot::Snapshot;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::CaDir;
use strait_proxy::Proxy;
use strait_proxy::config::{AppPort, IdentitySource, Limits, Listeners, ProxyConfig};
use tokio::net::TcpStream;

pub const TD: &str = "strait.local";

pub struct Mesh {
    pub tmp: tempfile::TempDir,
    pub ca: CaDir,
    pub cluster: ClusterName,
}

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/ns/default/sa/{sa}")).unwrap()
}

impl Mesh {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new(TD).unwrap();
        let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
        let cluster = ClusterName::new("east").unwrap();
        ca.new_intermediate(&cluster, Duration::from_secs(86400))
            .unwrap();
        Self { tmp, ca, cluster }
    }

    /// Certificate files for `spiffe://strait.local/ns/default/sa/<sa>`.
    pub fn identity(&self, sa: &str) -> IdentitySource {
        self.identity_for(&id(sa))
    }

    pub fn identity_for(&self, spiffe: &SpiffeId) -> IdentitySource {
        let dir = self.tmp.path().join(format!("certs-{}", rand_suffix()));
        let f = self
            .ca
            .issue(&self.cluster, spiffe, Duration::from_secs(3600), &dir)
            .unwrap();
        IdentitySource::Files {
            chain: f.chain,
            key: f.key,
            bundle: f.bundle,
        }
    }

    pub fn config(
        &self,
        sa: &str,
        app: Vec<AppPort>,
        local_service: Option<&str>,
        bind_vips: bool,
    ) -> ProxyConfig {
        ProxyConfig {
            trust_domain: TrustDomain::new(TD).unwrap(),
            identity: self.identity(sa),
            listeners: Listeners {
                inbound: "127.0.0.1:0".parse().unwrap(),
                outbound: "127.0.0.1:0".parse().unwrap(),
                admin: "127.0.0.1:0".parse().unwrap(),
                bind_vips,
            },
            app,
            local_service: local_service.map(str::to_owned),
            snapshot_file: None,
            controller: None,
            scope: None,
            limits: Limits::default(),
            access_log: false,
            tracing: None,
            capture: Default::default(),
            service: None,
            egress: None,
        }
    }

    /// A server-side sidecar for the app at `target` on service port `port`.
    pub async fn server(
        &self,
        sa: &str,
        port: u16,
        protocol: &str,
        target: SocketAddr,
        snapshot: &str,
    ) -> Proxy {
        let app = vec![AppPort {
            port,
            protocol: serde_yaml_ng::from_str(protocol).unwrap(),
            target: Some(target),
            permissive_listen: None,
        }];
        let cfg = self.config(sa, app, Some(&format!("{sa}.default")), false);
        Proxy::start_with(cfg, snap(snapshot)).await.unwrap()
    }

    /// A west east-west gateway exporting `name.default` on `port` with
    /// `endpoints` (sidecar inbound addresses).
    pub async fn gateway(
        &self,
        name: &str,
        port: u16,
        endpoints: &[SocketAddr],
    ) -> strait_gateway::Handle {
        let IdentitySource::Files { chain, key, bundle } = self.identity("eastwest-gateway") else {
            unreachable!("identity() issues files")
        };
        let cfg = strait_gateway::GatewayConfig {
            cluster: ClusterName::new("west").unwrap(),
            trust_domain: TrustDomain::new(TD).unwrap(),
            identity: strait_gateway::config::IdentitySource::Files { chain, key, bundle },
            listeners: strait_gateway::Listeners {
                public: "127.0.0.1:0".parse().unwrap(),
                admin: "127.0.0.1:0".parse().unwrap(),
            },
            limits: strait_gateway::Limits::default(),
            controller: None,
            tracing: None,
        };
        let exports = strait_gateway::ExportTable {
            services: vec![strait_gateway::ExportedService {
                name: name.to_owned(),
                namespace: "default".to_owned(),
                ports: vec![port],
                to: Vec::new(),
                endpoints: endpoints
                    .iter()
                    .map(|&address| strait_gateway::ExportedEndpoint {
                        address,
                        health: Default::default(),
                    })
                    .collect(),
            }],
        };
        strait_gateway::Gateway::start(cfg, exports).await.unwrap()
    }

    /// A client-side sidecar that binds the snapshot's VIPs.
    pub async fn client(&self, sa: &str, snapshot: &str) -> Proxy {
        let cfg = self.config(sa, vec![], None, true);
        Proxy::start_with(cfg, snap(snapshot)).await.unwrap()
    }
}

fn rand_suffix() -> u64 {
    rand::random()
}

pub fn snap(yaml: &str) -> Snapshot {
    Snapshot::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The snapshot header for cluster east, zone a.
pub fn header(version: u64) -> String {
    format!(
        "version: {version}\nlocal: {{ cluster: east, locality: us-east/a }}\nclusters: [west]\nservices:\n"
    )
}

/// One service block with the given endpoints (`addr zone identity-sa`);
/// `us-west` endpoints name a gateway that does not exist.
pub fn service(
    name: &str,
    vip: &str,
    port: u16,
    protocol: &str,
    endpoints: &[(SocketAddr, &str, &str)],
    extra: &str,
) -> String {
    let nowhere = "127.0.0.1:9".parse().unwrap();
    service_via(nowhere, name, vip, port, protocol, endpoints, extra)
}

/// Like [`service`], with `us-west` endpoints reached through `gateway`.
pub fn service_via(
    gateway: SocketAddr,
    name: &str,
    vip: &str,
    port: u16,
    protocol: &str,
    endpoints: &[(SocketAddr, &str, &str)],
    extra: &str,
) -> String {
    let mut s = format!(
        "  - name: {name}\n    namespace: default\n    vip: {vip}\n    ports: [{{ port: {port}, protocol: {protocol} }}]\n    endpoints:\n"
    );
    for (addr, loc, sa) in endpoints {
        let (cluster, gw) = if loc.starts_with("us-west") {
            ("west", format!("\n        gateways: [{gateway}]"))
        } else {
            ("east", String::new())
        };
        s.push_str(&format!(
            "      - address: {addr}\n        cluster: {cluster}\n        locality: {loc}\n        identity: spiffe://{TD}/ns/default/sa/{sa}{gw}\n"
        ));
    }
    s.push_str(extra);
    s
}

/// Waits until something accepts TCP at `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {addr}");
}

/// HTTP/1.1 request over a fresh connection; returns (status, body).
pub async fn http1(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn get(uri: &str, host: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(uri)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    pub async fn get(&mut self, path: &str, host: &str) -> (u16, String) {
        self.0.ready().await.unwrap();
        let resp = self.0.send_request(get(path, host)).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Raw HTTP/2 frame: length(3) type(1) flags(1) stream(4) payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The complete HTTP/2 frames at the start of `bytes`, as (type, stream,
/// payload); a partial last frame is left out.
pub fn frames(bytes: &[u8]) -> impl Iterator<Item = (u8, u32, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 9 {
            return None;
        }
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            return None;
        }
        let kind = rest[3];
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        Some((kind, stream, payload))
    })
}
