//! TLS micro-benchmarks on the sidecars' own rustls configs (in memory, no
//! sockets), and the memory of an idle sidecar with a large snapshot.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::tls::{ClientAuth, ExpectedServer};
use strait_ca::{CaDir, CertStore, SharedBundle};

struct Pki {
    _tmp: tempfile::TempDir,
    ca: CaDir,
    cluster: ClusterName,
}

fn pki() -> anyhow::Result<Pki> {
    let tmp = tempfile::tempdir()?;
    let td = TrustDomain::new("strait.local")?;
    let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400))?;
    let cluster = ClusterName::new("bench")?;
    ca.new_intermediate(&cluster, Duration::from_secs(86400))?;
    Ok(Pki {
        _tmp: tmp,
        ca,
        cluster,
    })
}

fn store(p: &Pki, sa: &str, dir: &Path) -> anyhow::Result<CertStore> {
    let id = SpiffeId::parse(&format!("spiffe://strait.local/ns/default/sa/{sa}"))?;
    let f =
        p.ca.issue(&p.cluster, &id, Duration::from_secs(3600), &dir.join(sa))?;
    Ok(CertStore::from_pem(
        &std::fs::read_to_string(f.chain)?,
        &std::fs::read_to_string(f.key)?,
    )?)
}

/// Moves TLS records from one side to the other; returns the time spent in
/// the server's processing when `server_side` is true.
fn pump(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Duration> {
    let mut server_time = Duration::ZERO;
    buf.clear();
    while c.wants_write() {
        c.write_tls(buf)?;
    }
    if !buf.is_empty() {
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd)?;
        }
        s.process_new_packets()?;
        server_time += t.elapsed();
    }
    buf.clear();
    let t = Instant::now();
    while s.wants_write() {
        s.write_tls(buf)?;
    }
    server_time += t.elapsed();
    if !buf.is_empty() {
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd)?;
        }
        c.process_new_packets()?;
    }
    Ok(server_time)
}

fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(ClientConnection, ServerConnection, Duration)> {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from("bench.invalid")?)?;
    let mut s = ServerConnection::new(server.clone())?;
    let mut server_time = Duration::ZERO;
    for _ in 0..10 {
        server_time += pump(&mut c, &mut s, buf)?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            break;
        }
    }
    anyhow::ensure!(!s.is_handshaking(), "handshake did not finish");
    Ok((c, s, server_time))
}

/// Handshakes/s (full and resumed), server CPU per handshake, bulk MB/s.
pub fn tls() -> anyhow::Result<serde_json::Value> {
    let p = pki()?;
    let tmp = tempfile::tempdir()?;
    let bundle = SharedBundle::new(p.ca.bundle()?);
    let server_store = store(&p, "server", tmp.path())?;
    let client_store = store(&p, "client", tmp.path())?;
    let server = Arc::new(strait_ca::tls::server_config(
        &server_store,
        &bundle,
        ClientAuth::Required,
        &[b"h2"],
    )?);
    let mut full_cfg = strait_ca::tls::client_config(
        &client_store,
        &bundle,
        ExpectedServer::AnyInTrustDomain,
        &[b"h2"],
    )?;
    full_cfg.resumption = rustls::client::Resumption::disabled();
    let full_cfg = Arc::new(full_cfg);
    let resumed_cfg = Arc::new(strait_ca::tls::client_config(
        &client_store,
        &bundle,
        ExpectedServer::AnyInTrustDomain,
        &[b"h2"],
    )?);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut measure = |cfg: &Arc<ClientConfig>, n: u32| -> anyhow::Result<(f64, f64)> {
        // Warm up (and, for resumption, fill the session cache).
        for _ in 0..20 {
            handshake(cfg, &server, &mut buf)?;
        }
        let t = Instant::now();
        let mut server_time = Duration::ZERO;
        for _ in 0..n {
            server_time += handshake(cfg, &server, &mut buf)?.2;
        }
        let per_sec = f64::from(n) / t.elapsed().as_secs_f64();
        Ok((per_sec, server_time.as_secs_f64() * 1e3 / f64::from(n)))
    };
    let (full_rate, full_server_ms) = measure(&full_cfg, 1000)?;
    let (res_rate, res_server_ms) = measure(&resumed_cfg, 2000)?;

    // Bulk: client -> server application data in 16 KiB writes.
    let (mut c, mut s, _) = handshake(&full_cfg, &server, &mut buf)?;
    let chunk = vec![0x5au8; 16 * 1024];
    let total: usize = 512 * 1024 * 1024;
    let mut sink = vec![0u8; 64 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        c.writer().write_all(&chunk)?;
        sent += chunk.len();
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf)?;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd)?;
            s.process_new_packets()?;
        }
        while let Ok(n) = s.reader().read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    let mbps = sent as f64 / 1e6 / t.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "full_handshakes_per_sec": full_rate,
        "full_handshake_server_cpu_ms": full_server_ms,
        "resumed_handshakes_per_sec": res_rate,
        "resumed_handshake_server_cpu_ms": res_server_ms,
        "bulk_encrypt_decrypt_mb_per_sec": mbps,
        "cipher": format!("{:?}", s.negotiated_cipher_suite().map(|c| c.suite())),
    }))
}

/// RSS of an idle `strait proxy` holding a snapshot of `services` services
/// (each with a VIP listener and two endpoints).
#[allow(clippy::disallowed_methods)] // a synchronous tool, no async runtime here
pub fn memory(strait: &Path, services: usize) -> anyhow::Result<serde_json::Value> {
    let p = pki()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let id = SpiffeId::parse("spiffe://strait.local/ns/default/sa/idle")?;
    let f =
        p.ca.issue(&p.cluster, &id, Duration::from_secs(3600), &d.join("id"))?;
    let mut snap =
        String::from("version: 1\nlocal: { cluster: bench, locality: r/a }\nservices:\n");
    for i in 0..services {
        let vip = format!("127.78.{}.{}", i / 250, i % 250 + 1);
        snap.push_str(&format!(
            "  - name: svc{i}\n    namespace: default\n    vip: {vip}\n    ports: [{{ port: 8080, protocol: http1 }}]\n    endpoints:\n      - {{ address: 127.0.0.1:{}, cluster: bench, locality: r/a, identity: spiffe://strait.local/ns/default/sa/svc{i} }}\n      - {{ address: 127.0.0.1:{}, cluster: bench, locality: r/b, identity: spiffe://strait.local/ns/default/sa/svc{i} }}\n",
            20000 + i % 1000,
            21000 + i % 1000
        ));
    }
    std::fs::write(d.join("snapshot.yaml"), snap)?;
    let cfg = format!(
        "trust_domain: strait.local\nidentity:\n  files: {{ chain: {c}, key: {k}, bundle: {b} }}\nlisteners: {{ inbound: 127.0.0.1:0, outbound: 127.0.0.1:0, admin: 127.0.0.1:0, bind_vips: true }}\nsnapshot_file: {s}\n",
        c = f.chain.display(),
        k = f.key.display(),
        b = f.bundle.display(),
        s = d.join("snapshot.yaml").display()
    );
    std::fs::write(d.join("sidecar.yaml"), cfg)?;
    let mut child = std::process::Command::new(strait)
        .args(["proxy", "--config"])
        .arg(d.join("sidecar.yaml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", strait.display()))?;
    // Let it bind every VIP and settle.
    let mut rss_kb = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        rss_kb = rss(child.id()).unwrap_or(0);
    }
    let listening = count_listeners(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Ok(serde_json::json!({
        "services": services,
        "vip_listeners": listening,
        "idle_rss_mib": rss_kb as f64 / 1024.0,
    }))
}

fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn count_listeners(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
