//! `strait dns` as a library: a DNS server that follows its cluster's
//! controller over the config push (as a subscriber of role `dns`) and
//! answers from the latest snapshot; while the controller is away it keeps
//! answering from the last one. A controller that serves DNS itself runs
//! the same thing against its own gRPC port.

use std::net::SocketAddr;

use strait_agent::{Subscription, Target};
use strait_ca::{CertStore, SharedBundle};

use crate::from_snapshot::view_of;
use crate::metrics::DnsMetrics;
use crate::server::{DnsConfig, DnsServer, ServerError, run};
use crate::view::{DnsView, ViewHandle};

/// Whom the server follows, and with which certificate.
#[derive(Debug, Clone)]
pub struct Following {
    /// Must have [`strait_agent::Role::Dns`].
    pub target: Target,
    pub certs: CertStore,
    pub bundle: SharedBundle,
}

/// A running DNS server that follows its controller.
#[derive(Debug)]
pub struct Handle {
    server: DnsServer,
    /// The view answers come from (swapped on every accepted snapshot).
    pub view: ViewHandle,
    following: Subscription,
}

/// Binds `config.listen` (UDP and TCP), starts answering from an empty view
/// of the target's cluster and subscribes to its controller.
pub async fn start(
    config: DnsConfig,
    follow: Following,
    metrics: DnsMetrics,
) -> Result<Handle, ServerError> {
    let view = ViewHandle::new(DnsView::new(follow.target.cluster.clone()))
        .map_err(|e| ServerError::Serve(e.to_string()))?;
    let server = run(config, view.clone(), metrics).await?;
    let feed = view.clone();
    let following = strait_agent::follow(&follow.target, follow.certs, follow.bundle, move |s| {
        feed.update(view_of(s)).map_err(|e| e.to_string())
    });
    Ok(Handle {
        server,
        view,
        following,
    })
}

impl Handle {
    pub fn udp_addr(&self) -> SocketAddr {
        self.server.udp_addr()
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.server.tcp_addr()
    }

    /// Whether the config-push stream to the controller is up.
    pub fn following(&self) -> bool {
        *self.following.connected().borrow()
    }

    /// The same, as a watch (for an admin port's `/ready`).
    pub fn following_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.following.connected()
    }

    /// Stops following and answering.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        drop(self.following);
        self.server.shutdown().await
    }
}
