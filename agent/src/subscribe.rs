//! One config-push stream to a controller, kept up: connect over mTLS
//! (the role's certificate, the controller's expected SPIFFE ID), send the
//! node, then for each snapshot run the checks (`Snapshot::validate` plus
//! the caller's `accept`), ACK and publish it, or NACK it and keep the
//! previous one. When the controller is unreachable it retries with
//! jittered exponential back-off and the receiver keeps the last good
//! snapshot.
//!
//! A node that asks for deltas (`Node.deltas`, every role but the gateway)
//! gets protobuf deltas: it applies each to the snapshot it holds
//! (`strait_api::delta::apply`), checks the result like a full snapshot,
//! and tells the controller on reconnect which version (and controller
//! epoch) it holds, so it is sent only what changed since.
//!
//! Versions must grow within one stream; the first snapshot of a new
//! stream (or a full delta) is taken even if its version is lower (a
//! controller restored from backup), since the controller is the authority.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::backoff::Backoff;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Delta, Node, SnapshotRequest, SnapshotResponse};
use strait_api::snapshot::Snapshot;
use strait_ca::tls::{self, ExpectedServer};
use strait_ca::{CertStore, SharedBundle};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Extra checks a subscriber applies before accepting a snapshot.
pub type AcceptFn = Arc<dyn Fn(&Snapshot) -> Result<(), String> + Send + Sync>;

/// How a subscription behaves.
#[derive(Clone)]
pub struct Options {
    pub accept: Option<AcceptFn>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            accept: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("accept", &self.accept.is_some())
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// A running subscription; dropping it stops it.
#[derive(Debug)]
pub struct Subscription {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    connected: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// The last good snapshot (`None` until the first one arrives).
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.clone()
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    /// Whether a stream to the controller is up.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

/// Subscribes to the controller at `addr` as `node`.
pub fn subscribe(
    addr: SocketAddr,
    certs: CertStore,
    bundle: SharedBundle,
    expected: ExpectedServer,
    node: Node,
    options: Options,
) -> Subscription {
    let (snap_tx, snapshots) = watch::channel(None);
    let (up_tx, connected) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::new(options.min_backoff, options.max_backoff);
        let mut epoch = String::new();
        loop {
            let got_any = run_once(
                addr, &certs, &bundle, &expected, &node, &options, &snap_tx, &up_tx, &mut epoch,
            )
            .await;
            up_tx.send_replace(false);
            match got_any {
                Ok(true) => backoff.reset(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(controller = %addr, error = %e, "config stream failed; keeping the last snapshot")
                }
            }
            tokio::time::sleep(backoff.next_delay(rand::random())).await;
        }
    });
    Subscription {
        snapshots,
        connected,
        task,
    }
}

/// An mTLS gRPC channel to the controller at `addr`, presenting `certs`
/// and expecting `expected`.
pub(crate) async fn connect(
    addr: SocketAddr,
    certs: &CertStore,
    bundle: &SharedBundle,
    expected: &ExpectedServer,
) -> Result<tonic::transport::Channel, String> {
    let cfg =
        tls::client_config(certs, bundle, expected.clone(), &[b"h2"]).map_err(|e| e.to_string())?;
    let connect = strait_ca::dial::connector(addr, cfg, "controller.strait.invalid");
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(connect)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// One stream's life. `Ok(true)` when at least one snapshot came in.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    addr: SocketAddr,
    certs: &CertStore,
    bundle: &SharedBundle,
    expected: &ExpectedServer,
    node: &Node,
    options: &Options,
    snap_tx: &watch::Sender<Option<Arc<Snapshot>>>,
    up_tx: &watch::Sender<bool>,
    epoch: &mut String,
) -> Result<bool, String> {
    let channel = connect(addr, certs, bundle, expected).await?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let held = snap_tx.borrow().as_ref().map_or(0, |s| s.version);
    let hello = SnapshotRequest {
        node: Some(node.clone()),
        version: held,
        error: String::new(),
        epoch: epoch.clone(),
    };
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut inbound = client
        .stream_snapshots(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("controller refused the stream: {}", s.message()))?
        .into_inner();
    up_tx.send_replace(true);
    let mut stream_version = None::<u64>;
    let mut got_any = false;
    let mut pieces: Vec<Delta> = Vec::new();
    while let Some(mut msg) = inbound
        .message()
        .await
        .map_err(|s| s.message().to_owned())?
    {
        let verdict = match msg.delta.take() {
            Some(d) if d.partial => {
                pieces.push(d);
                if pieces.len() > MAX_PARTS {
                    return Err(format!(
                        "more than {MAX_PARTS} partial messages for version {}",
                        msg.version
                    ));
                }
                continue;
            }
            Some(d) => {
                pieces.push(d);
                let held = snap_tx.borrow().clone();
                let parts = std::mem::take(&mut pieces);
                from_delta(held.as_deref(), &msg, &parts, stream_version).map(|s| (s, Some(parts)))
            }
            None => from_json(&msg, stream_version).map(|s| (s, None)),
        }
        .and_then(|(snap, parts)| {
            snap.validate().map_err(|e| e.to_string())?;
            if let Some(accept) = &options.accept {
                accept(&snap)?;
            }
            Ok((snap, parts))
        });
        let reply = match verdict {
            Ok((snap, parts)) => {
                stream_version = Some(snap.version);
                got_any = true;
                if let Some(first) = parts.as_ref().and_then(|p| p.first()) {
                    epoch.clone_from(&first.epoch);
                    if first.full {
                        tracing::info!(version = snap.version, reason = %first.full_reason, services = snap.services.len(), "took the full state");
                    }
                }
                tracing::debug!(version = snap.version, "accepted snapshot");
                snap_tx.send_replace(Some(Arc::new(snap)));
                SnapshotRequest {
                    version: msg.version,
                    ..SnapshotRequest::default()
                }
            }
            Err(error) => {
                tracing::warn!(version = msg.version, %error, "refused snapshot; keeping the previous one");
                SnapshotRequest {
                    version: msg.version,
                    error,
                    ..SnapshotRequest::default()
                }
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    Ok(got_any)
}

/// Partial messages one version may take (a full state of half a million
/// services at the controller's 100 per message).
const MAX_PARTS: usize = 5_000;

fn newer(version: u64, stream_version: Option<u64>) -> Result<(), String> {
    match stream_version {
        Some(v) if version <= v => Err(format!("version {version} is not newer than {v}")),
        _ => Ok(()),
    }
}

/// A full JSON snapshot (nodes without deltas).
fn from_json(msg: &SnapshotResponse, stream_version: Option<u64>) -> Result<Snapshot, String> {
    let snap = serde_json::from_slice::<Snapshot>(&msg.snapshot_json)
        .map_err(|e| format!("snapshot is not valid json: {e}"))?;
    if snap.version != msg.version {
        return Err(format!(
            "snapshot carries version {} inside a message of version {}",
            snap.version, msg.version
        ));
    }
    newer(snap.version, stream_version)?;
    Ok(snap)
}

/// The held snapshot with a delta applied.
fn from_delta(
    held: Option<&Snapshot>,
    msg: &SnapshotResponse,
    parts: &[Delta],
    stream_version: Option<u64>,
) -> Result<Snapshot, String> {
    let full = parts.first().is_some_and(|d| d.full);
    if !full {
        newer(msg.version, stream_version.or(held.map(|h| h.version)))?;
    }
    strait_api::delta::apply(held, msg.version, parts).map_err(|e| e.to_string())
}
