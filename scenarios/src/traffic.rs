//! Traffic generators: HTTP/1.1 GETs at a fixed rate through a cluster's
//! client sidecar (the service VIP), recording when each request was sent,
//! whether it succeeded and which cluster's workload answered (the echo
//! apps answer with `<cluster>/<service>-<replica>`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the scenario started.
    pub at: Duration,
    pub ok: bool,
    pub status: u16,
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Sample>>>);

impl Recorder {
    fn push(&self, s: Sample) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running generator; stops when dropped.
#[derive(Debug)]
pub struct Generator {
    pub recorder: Recorder,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Generator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Generator {
    /// Sends `rate` requests per second to `target` (a VIP:port), spread
    /// over several keep-alive connections.
    pub fn start(target: SocketAddr, host: String, rate: u32, epoch: Instant) -> Self {
        let recorder = Recorder::default();
        let workers = rate.div_ceil(50).max(1);
        let interval = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
        let tasks = (0..workers)
            .map(|w| {
                let rec = recorder.clone();
                let host = host.clone();
                let offset = interval.mul_f64(f64::from(w) / f64::from(workers));
                tokio::spawn(
                    async move { worker(target, host, interval, offset, epoch, rec).await },
                )
            })
            .collect();
        Self { recorder, tasks }
    }

    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn worker(
    target: SocketAddr,
    host: String,
    interval: Duration,
    offset: Duration,
    epoch: Instant,
    rec: Recorder,
) {
    let mut next = tokio::time::Instant::now() + offset;
    let mut send: Option<Sender> = None;
    loop {
        tokio::time::sleep_until(next).await;
        next += interval;
        let at = epoch.elapsed();
        if send.as_ref().is_none_or(|s| s.is_closed()) {
            send = connect(target).await;
        }
        let result = match send.as_mut() {
            Some(s) => one(s, &host).await,
            None => Err(0),
        };
        match result {
            Ok((status, cluster)) => rec.push(Sample {
                at,
                ok: (200..300).contains(&status),
                status,
                cluster,
            }),
            Err(status) => {
                send = None;
                rec.push(Sample {
                    at,
                    ok: false,
                    status,
                    cluster: None,
                });
            }
        }
    }
}

async fn one(send: &mut Sender, host: &str) -> Result<(u16, Option<String>), u16> {
    let fut = async {
        send.ready().await.map_err(|_| 0u16)?;
        let req = http::Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .map_err(|_| 0u16)?;
        let resp = send.send_request(req).await.map_err(|_| 0u16)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| status)?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let cluster = text
            .split(' ')
            .next()
            .and_then(|who| who.split_once('/'))
            .map(|(c, _)| c.to_owned());
        Ok((status, cluster))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .unwrap_or(Err(0))
}
