//! One config-push stream to a controller, kept up: connect over mTLS
//! (the role's certificate, the controller's expected SPIFFE ID), send the
//! node, then for each snapshot run the checks (`Snapshot::validate` plus
//! the caller's `accept`), ACK and publish it, or NACK it and keep the
//! previous one. When the controller is unreachable it retries with
//! jittered exponential back-off and the receiver keeps the last good
//! snapshot.
//!
//! Versions must grow within one stream; the first snapshot of a new
//! stream is taken even if its version is lower (a controller restored from
//! backup), since the controller is the authority.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::backoff::Backoff;
use strait_api::proto::config::config_discovery_client::ConfigDiscoveryClient;
use strait_api::proto::config::{Node, SnapshotRequest};
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
        loop {
            let got_any = run_once(
                addr, &certs, &bundle, &expected, &node, &options, &snap_tx, &up_tx,
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
) -> Result<bool, String> {
    let channel = connect(addr, certs, bundle, expected).await?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let held = snap_tx.borrow().as_ref().map_or(0, |s| s.version);
    let hello = SnapshotRequest {
        node: Some(node.clone()),
        version: held,
        error: String::new(),
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
    while let Some(msg) = inbound
        .message()
        .await
        .map_err(|s| s.message().to_owned())?
    {
        let verdict = serde_json::from_slice::<Snapshot>(&msg.snapshot_json)
            .map_err(|e| format!("snapshot is not valid json: {e}"))
            .and_then(|snap| {
                if snap.version != msg.version {
                    return Err(format!(
                        "snapshot carries version {} inside a message of version {}",
                        snap.version, msg.version
                    ));
                }
                if stream_version.is_some_and(|v| snap.version <= v) {
                    return Err(format!(
                        "version {} is not newer than {}",
                        snap.version,
                        stream_version.unwrap_or(0)
                    ));
                }
                snap.validate().map_err(|e| e.to_string())?;
                if let Some(accept) = &options.accept {
                    accept(&snap)?;
                }
                Ok(snap)
            });
        let reply = match verdict {
            Ok(snap) => {
                stream_version = Some(snap.version);
                got_any = true;
                tracing::debug!(version = snap.version, "accepted snapshot");
                snap_tx.send_replace(Some(Arc::new(snap)));
                SnapshotRequest {
                    node: None,
                    version: msg.version,
                    error: String::new(),
                }
            }
            Err(error) => {
                tracing::warn!(version = msg.version, %error, "refused snapshot; keeping the previous one");
                SnapshotRequest {
                    node: None,
                    version: msg.version,
                    error,
                }
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    Ok(got_any)
}
