//! Transparent capture: connections that nftables redirected to the
//! sidecar (`strait proxy capture install`) instead of the app dialing a
//! VIP or the explicit proxy port.
//!
//! On accept, the original destination comes from the kernel
//! (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6) and [`classify`]
//! maps it, with no I/O, to a service of the snapshot: its VIP:port, or an
//! endpoint's address (the endpoint's IP with one of the service's ports,
//! or the endpoint's exact address when the service has one port). The
//! snapshot carries no ClusterIP, so VIPs and endpoint addresses are all
//! that can match. A matched connection then takes exactly the VIP
//! listener's path ([`crate::outbound::serve_vip`]: sniffing, HTTP routing
//! or TCP over mTLS). Other destinations pass through as plain TCP or are
//! refused, by [`Unknown`]; a connection whose original destination is the
//! capture listener itself (nothing redirected it, or a redirect loop) is
//! refused.
//!
//! What it is not: the rules themselves ([`rules`] writes their text; the
//! CLI applies it), nor inbound capture: inbound rules redirect app ports
//! to the ordinary mTLS inbound port, which needs no original destination.

pub mod rules;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Deserialize;
use socket2::SockRef;
use strait_api::snapshot::Snapshot;
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Direction, TcpLabels};
use crate::route;
use crate::state::Shared;

/// What to do with a captured connection to an address the mesh does not
/// know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Plain TCP to the original destination (the app works as without
    /// the mesh).
    #[default]
    Passthrough,
    /// Close the connection (only mesh services are reachable).
    Refuse,
}

/// `capture:` of the sidecar config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Where redirected outbound connections arrive (the nftables rules'
    /// `--outbound-port`), e.g. `127.0.0.1:15002`; `[::]:15002` takes IPv4
    /// and IPv6. No listener when unset.
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// Destinations that are no mesh service: `passthrough` (default) or
    /// `refuse`.
    #[serde(default)]
    pub unknown: Unknown,
}

/// Where a captured connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To the service at this VIP:port, as if the app had dialed it.
    Service { vip: IpAddr, port: u16 },
    /// Plain TCP to the original destination.
    Passthrough(SocketAddr),
    /// Closed; the reason is a metric label.
    Refuse(&'static str),
}

/// Decides where a connection redirected to the capture listener goes.
///
/// `original` is its original destination, `listener` the capture
/// listener's bound address and `local` the connection's local address
/// (they differ from `original` only when a rule redirected it).
pub fn classify(
    snapshot: &Snapshot,
    original: SocketAddr,
    listener: SocketAddr,
    local: SocketAddr,
    unknown: Unknown,
) -> Destination {
    let original = canonical(original);
    let local = canonical(local);
    let ip = original.ip();
    let to_self = original == local
        || (original.port() == listener.port()
            && (ip.is_loopback() || ip.is_unspecified() || ip == local.ip()));
    if to_self {
        return Destination::Refuse("capture_loop");
    }
    if let Ok((s, p)) = route::find_service(snapshot, ip, original.port()) {
        return Destination::Service {
            vip: s.vip,
            port: p.port,
        };
    }
    let by_endpoint = snapshot.services.iter().find_map(|s| {
        let eps = || s.endpoints.iter().map(|e| canonical(e.address));
        if eps().any(|a| a.ip() == ip) && s.port(original.port()).is_some() {
            return Some((s.vip, original.port()));
        }
        match s.ports.as_slice() {
            [only] if eps().any(|a| a == original) => Some((s.vip, only.port)),
            _ => None,
        }
    });
    match (by_endpoint, unknown) {
        (Some((vip, port)), _) => Destination::Service { vip, port },
        (None, Unknown::Passthrough) => Destination::Passthrough(original),
        (None, Unknown::Refuse) => Destination::Refuse("capture_unknown_destination"),
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener sees them).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The destination the app dialed before a rule redirected it here.
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(tcp);
    let v4 = match tcp.local_addr()?.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let addr = if v4 {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket()
        .map(canonical)
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// Accepts redirected connections until the task is dropped.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let Ok(bound) = listener.local_addr() else {
        return;
    };
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "capture accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        tokio::spawn(connection(shared.clone(), tcp, bound));
    }
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream, listener: SocketAddr) {
    let (original, local) = match (original_dst(&tcp), tcp.local_addr()) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "captured connection without an original destination");
            shared
                .metrics
                .refuse(Direction::outbound, "capture_no_original_dst");
            return;
        }
    };
    let decided = classify(
        &shared.snapshot(),
        original,
        listener,
        local,
        shared.cfg.capture.unknown,
    );
    tracing::debug!(%original, ?decided, "captured connection");
    match decided {
        Destination::Service { vip, port } => {
            crate::outbound::serve_vip(shared, tcp, vip, port).await;
        }
        Destination::Passthrough(addr) => passthrough(shared, tcp, addr).await,
        Destination::Refuse(reason) => shared.metrics.refuse(Direction::outbound, reason),
    }
}

/// Plain TCP to where the app meant to go (the sidecar's own connection
/// is not captured again: the rules exclude its uid or mark).
async fn passthrough(shared: Arc<Shared>, mut tcp: TcpStream, to: SocketAddr) {
    let limits = &shared.cfg.limits;
    let mut upstream =
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(%to, error = %e, "passthrough connect failed");
                shared
                    .metrics
                    .refuse(Direction::outbound, "passthrough_connect");
                return;
            }
            Err(_) => {
                shared
                    .metrics
                    .refuse(Direction::outbound, "passthrough_connect");
                return;
            }
        };
    let _ = tcp.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Passthrough leaves the mesh: no destination cluster.
    let source = shared.snapshot().local.cluster.clone();
    let labels = TcpLabels::new(Direction::outbound, source.as_str(), "passthrough", "");
    shared.metrics.tcp_connections.get_or_create(&labels).inc();
    let (sent, received) =
        crate::copy::bidirectional(&mut tcp, &mut upstream, limits.idle_timeout).await;
    let m = &shared.metrics;
    m.tcp_bytes_sent.get_or_create(&labels).inc_by(sent);
    m.tcp_bytes_received.get_or_create(&labels).inc_by(received);
}

#[cfg(test)]
mod tests;
