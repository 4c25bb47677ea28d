//! Certificates for test clusters (a real `CaDir` in a tempdir), waiting
//! helpers and a fault-injecting TCP relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::{CaDir, CertStore, SharedBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

pub fn td() -> TrustDomain {
    TrustDomain::new("strait.local").unwrap()
}

pub fn c(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

/// One mesh root with an intermediate per cluster.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub ca: CaDir,
}

impl Mesh {
    pub fn new(clusters: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::init(&dir.path().join("ca"), &td(), Duration::from_secs(86400)).unwrap();
        for cl in clusters {
            ca.new_intermediate(&c(cl), Duration::from_secs(86400))
                .unwrap();
        }
        Self { dir, ca }
    }

    pub fn bundle(&self) -> SharedBundle {
        SharedBundle::new(self.ca.bundle().unwrap())
    }

    /// A certificate for `ns/sa` issued by `cluster`'s intermediate.
    pub fn certs(&self, cluster: &str, ns: &str, sa: &str) -> CertStore {
        let id = td().workload_id(ns, sa).unwrap();
        let out = self
            .dir
            .path()
            .join("issued")
            .join(cluster)
            .join(format!("{ns}-{sa}"));
        let f = self
            .ca
            .issue(&c(cluster), &id, Duration::from_secs(3600), &out)
            .unwrap();
        let chain = strait_ca::pem::certs(&std::fs::read_to_string(f.chain).unwrap());
        let key = PrivateKeyDer::from_pem_file(f.key).unwrap();
        CertStore::from_parts(chain, key).unwrap()
    }

    /// The controller identity of a cluster.
    pub fn controller_id(cluster: &str) -> SpiffeId {
        td().controller_id(&c(cluster))
    }

    pub fn controller_certs(&self, cluster: &str) -> CertStore {
        let id = Self::controller_id(cluster);
        let sa = id.service_account().unwrap().to_owned();
        self.certs(cluster, "strait-system", &sa)
    }
}

/// Polls `f` every 20 ms until it is true, failing after `secs`.
pub async fn eventually(secs: f64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay that can cut every connection and refuse new ones.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (cut2, conns2) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut a, _)) = l.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                conns2.lock().await.spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            conns,
            task,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub async fn partition(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.conns.lock().await.abort_all();
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
