//! `strait-bench otlp-sink --listen ADDR`: an OTLP/gRPC trace collector
//! that accepts every export and drops it (counting spans), so the
//! tracing-overhead run of `scripts/bench.sh` measures the sidecars'
//! export path as it is with a live collector (an unreachable endpoint
//! would measure the failure path instead). Runs until killed; prints the
//! span count to stderr every 5 s when it changed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn parse(rest: &[String]) -> anyhow::Result<SocketAddr> {
    match rest {
        [flag, addr] if flag == "--listen" => addr.parse().context("--listen ADDR"),
        _ => bail!("usage: strait-bench otlp-sink --listen ADDR"),
    }
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let sink = Sink::default();
    let count = sink.0.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let n = count.load(Ordering::Relaxed);
            if n != last {
                eprintln!("otlp-sink: {n} spans received");
                last = n;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve(listen)
        .await?;
    Ok(serde_json::json!({ "spans": sink.0.load(Ordering::Relaxed) }))
}
