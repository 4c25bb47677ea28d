//! `strait-bench`: the tools behind `scripts/bench.sh`.
//!
//! - `strait-bench oha ...`: open-loop fixed-rate load generator with
//!   oha-compatible flags and JSON (used as the reference script's `OHA`);
//! - `strait-bench tls`: handshakes/s (full, resumed), server CPU per
//!   handshake and bulk MB/s of the sidecars' rustls configuration;
//! - `strait-bench memory --strait PATH`: RSS of an idle sidecar holding a
//!   1,000-service snapshot;
//! - `strait-bench tunnel ...`: what opening a cross-cluster tunnel costs,
//!   against a running gateway and sidecar;
//! - `strait-bench push [--services N] [--sessions N]`: config push with
//!   many proxies (a controller child, `push-controller`, and N delta
//!   sessions; see `push`);
//! - `strait-bench otlp-sink --listen ADDR`: an OTLP trace collector that
//!   accepts and drops (the tracing-overhead run).
//!
//! It is a measuring tool, not a test: nothing here asserts.

mod loadgen;
mod micro;
mod otlp_sink;
mod push;
mod tunnel;

use std::path::PathBuf;

use anyhow::bail;

// The shipped `strait` binary's allocator (cli/src/main.rs): the push
// controller child's RSS and the TLS micro-benchmarks depend on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        bail!("usage: strait-bench oha|tls|memory|tunnel|push|otlp-sink ... (see the crate docs)");
    };
    let out = match cmd.as_str() {
        "oha" => {
            let args = loadgen::parse(rest)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(loadgen::run(args))?
        }
        "tls" => micro::tls()?,
        "push" => {
            let args = push::parse(rest)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(push::run(args))?
        }
        "push-controller" => return push::controller_main(rest),
        "otlp-sink" => {
            let listen = otlp_sink::parse(rest)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(otlp_sink::run(listen))?
        }
        "tunnel" => {
            let args = tunnel::parse(rest)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(tunnel::run(args))?
        }
        "memory" => {
            let mut strait = PathBuf::from("target/release/strait");
            let mut services = 1000;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match (a.as_str(), it.next()) {
                    ("--strait", Some(p)) => strait = PathBuf::from(p),
                    ("--services", Some(n)) => services = n.parse()?,
                    _ => bail!("usage: strait-bench memory [--strait PATH] [--services N]"),
                }
            }
            micro::memory(&strait, services)?
        }
        other => {
            bail!("unknown command {other:?}; use oha, tls, memory, tunnel, push or otlp-sink")
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
