//! Garbage where a TLS ClientHello belongs, on every TLS listener of a live
//! two-cluster mesh (sidecar inbound, east-west gateway, controller sync,
//! CA), while cross-cluster traffic keeps flowing through the same
//! listeners. Each attack connection must be closed: at once for bytes that
//! cannot be TLS, within the listener's handshake timeout for a stalled
//! hello; the answer is at most a TLS alert (never bigger than what was
//! sent); and no good request fails. The plaintext listeners (admin ports,
//! the sidecar's proxy port, DNS over TCP) get a slowloris in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_ca::server::{self, CaService};
use strait_ca::token::TokenStore;
use strait_ca::{CertStore, SharedBundle};
use strait_scenarios::mesh::Mesh;
use strait_scenarios::runner::{mesh_spec, wait_for_vip};
use strait_scenarios::spec::Scenario;
use strait_scenarios::traffic::Generator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESH: &str = r#"
name: tls-garbage
duration: 1s
clusters:
  - { name: east, region: us-east, zone: us-east-1a }
  - name: west
    region: us-west
    zone: us-west-1a
    workloads:
      - { service: echo, namespace: demo, port: 8080, replicas: 1, export: all }
links: [[east, west]]
traffic:
  - { name: main, from: east, service: echo, namespace: demo, rate: 50 }
"#;

/// Every listener here gives a client 10 s to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request head that never ends.
const SLOW_HEAD: &[u8] = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: a";
/// A DNS-over-TCP length prefix promising 100 bytes, then two of them.
const SLOW_DNS: &[u8] = &[0, 100, 0x12, 0x34];

/// Deterministic noise (no `rand` dependency for one buffer).
fn noise(len: usize, mut seed: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        })
        .collect()
}

/// (name, bytes, stalls): `stalls` means a valid-looking start that waits
/// for more, which only the handshake timeout can end.
fn attacks() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut random = noise(600, 7);
    random[0] = 0x42; // not a TLS record
    // A handshake record whose ClientHello body is noise.
    let mut hello = vec![0x16, 0x03, 0x01, 0x01, 0x04, 0x01, 0x00, 0x01, 0x00];
    hello.extend(noise(256, 11));
    // A record claiming 64 KiB, more than TLS allows.
    let mut huge = vec![0x16, 0x03, 0x03, 0xff, 0xff];
    huge.extend(noise(64, 13));
    // A record header promising 128 bytes, then silence.
    let mut stall = vec![0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x7c];
    stall.extend(noise(8, 17));
    vec![
        ("random bytes", random, false),
        ("noise ClientHello", hello, false),
        ("oversized record", huge, false),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("stalled ClientHello", stall, true),
    ]
}

/// Sends `bytes`, then reads until the server closes. Returns how long
/// that took and how many bytes came back.
async fn attack(addr: SocketAddr, bytes: Vec<u8>) -> Result<(Duration, usize), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    // The server may close before taking everything: that is a refusal too.
    let _ = s.write_all(&bytes).await;
    let mut got = 0usize;
    let mut buf = [0u8; 4096];
    let patience = HANDSHAKE_TIMEOUT + Duration::from_secs(3);
    loop {
        match tokio::time::timeout(patience, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((started.elapsed(), got)),
            Ok(Ok(n)) => got += n,
            Err(_) => return Err(format!("still open after {patience:?}")),
        }
    }
}

/// A CA signing service for `cluster` with the mesh's own CA directory.
async fn start_ca(mesh: &Mesh, dir: &std::path::Path) -> anyhow::Result<server::Bound> {
    let cluster = strait_api::ClusterName::new("west")?;
    let authority = mesh.ca.intermediate(&cluster)?;
    let bundle = SharedBundle::new(mesh.ca.bundle()?);
    let tokens = Arc::new(TokenStore::open(&dir.join("tokens.json"))?);
    let files = mesh.ca.issue(
        &cluster,
        &server::server_identity(&mesh.td),
        Duration::from_secs(3600),
        &dir.join("ca-server"),
    )?;
    let store = CertStore::from_pem(
        &std::fs::read_to_string(files.chain)?,
        &std::fs::read_to_string(files.key)?,
    )?;
    let service = CaService::new(authority, bundle, tokens, Duration::from_secs(3600));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(server::serve(service, listener, store)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_client_hello_is_closed_on_every_tls_listener() {
    let scenario = Scenario::from_yaml(MESH).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 127.200.x: an address range no other test of this crate uses.
    let mesh = Mesh::start(mesh_spec(&scenario, dir.path(), 200).unwrap())
        .await
        .unwrap();
    let ca = start_ca(&mesh, dir.path()).await.unwrap();
    let vip = wait_for_vip(&mesh, "east", "demo", "echo").await.unwrap();
    let (east, west) = (mesh.cluster("east").unwrap(), mesh.cluster("west").unwrap());
    let targets = [
        ("west gateway", west.gateway_addrs()[0]),
        (
            "west sidecar inbound",
            west.workload("echo").unwrap().replicas[0].sidecar.inbound,
        ),
        ("east client sidecar inbound", east.client.inbound),
        (
            "west controller sync",
            west.controller().unwrap().grpc_addr(),
        ),
        ("CA", ca.addr),
    ];
    // Good traffic crosses east sidecar -> west gateway -> west sidecar.
    let good = Generator::start(
        vip,
        "echo.demo.svc.clusterset.local".into(),
        50,
        Instant::now(),
    );
    let mut runs = tokio::task::JoinSet::new();
    for (target, addr) in targets {
        for (name, bytes, stalls) in attacks() {
            let sent = bytes.len();
            runs.spawn(async move { (target, name, stalls, sent, attack(addr, bytes).await) });
        }
    }
    // Slowloris on the plaintext listeners: a request head (or a DNS
    // length prefix) that never ends must be cut off by the listener's
    // own timeout (5 s for admin heads, 10 s for the app port and DNS).
    let plaintext = [
        ("east sidecar admin", east.client.admin, SLOW_HEAD),
        (
            "east sidecar outbound proxy",
            east.client.outbound,
            SLOW_HEAD,
        ),
        (
            "west gateway admin",
            west.gateways[0].as_ref().unwrap().admin,
            SLOW_HEAD,
        ),
        (
            "west controller admin",
            west.controller().unwrap().admin_addr().unwrap(),
            SLOW_HEAD,
        ),
        ("east DNS over TCP", east.dns.tcp_addr(), SLOW_DNS),
    ];
    for (target, addr, bytes) in plaintext {
        runs.spawn(async move {
            let r = attack(addr, bytes.to_vec())
                .await
                .map(|(took, _)| (took, 0));
            (target, "slowloris", true, bytes.len(), r)
        });
    }
    let mut failures = Vec::new();
    while let Some(run) = runs.join_next().await {
        let (target, name, stalls, sent, result) = run.unwrap();
        let limit = if stalls {
            HANDSHAKE_TIMEOUT + Duration::from_secs(2)
        } else {
            Duration::from_secs(2)
        };
        match result {
            Ok((took, got)) => {
                eprintln!("{target}: {name}: closed after {took:?}, {got} bytes back");
                if took > limit {
                    failures.push(format!("{target}: {name}: closed only after {took:?}"));
                }
                // At most a TLS alert (7 bytes): never an answer bigger
                // than the attack, never an HTTP response.
                if got > 7 || got > sent {
                    failures.push(format!("{target}: {name}: {got} bytes came back"));
                }
            }
            Err(e) => failures.push(format!("{target}: {name}: {e}")),
        }
    }
    let samples = good.recorder.samples();
    drop(good);
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        samples.len() > 200,
        "the good client sent only {} requests",
        samples.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} good requests failed: {:?}",
        failed.len(),
        samples.len(),
        failed.first()
    );
    assert!(
        samples.iter().all(|s| s.cluster.as_deref() == Some("west")),
        "every good request crossed to west"
    );
    ca.shutdown();
    mesh.shutdown().await;
}
