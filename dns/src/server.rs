//! The I/O side: a hickory-server [`Server`] on UDP and TCP (same port) whose
//! request handler asks [`crate::answer::answer`] and sends what it decided.
//!
//! hickory-server parses packets: a packet with a readable header but a
//! broken body gets FORMERR, shorter packets and responses are dropped. It
//! also encodes: a UDP response larger than 512 bytes (or the EDNS size the
//! client offered, capped by [`DnsConfig::max_udp_payload`]) is cut at a
//! record boundary and gets the TC bit; clients retry over TCP and get the
//! full answer there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

use crate::answer::{AnswerConfig, ClientKind, Question, answer};
use crate::metrics::DnsMetrics;
use crate::view::ViewHandle;

/// Largest UDP response by default (the DNS flag day 2020 value).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;

/// Server settings. Build directly in tests; the CLI fills it from flags.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP listen address; port 0 picks one free port for both.
    pub listen: SocketAddr,
    pub answer: AnswerConfig,
    /// Source networks of meshed clients (they get service VIPs). Empty:
    /// every client is unmeshed.
    pub meshed_clients: Vec<IpNet>,
    /// Upper bound of UDP responses, whatever EDNS size the client offers.
    pub max_udp_payload: u16,
    /// Idle TCP connections are closed after this long.
    pub tcp_idle_timeout: Duration,
}

impl DnsConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            answer: AnswerConfig::default(),
            meshed_clients: Vec::new(),
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot bind dns {proto} socket on {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("dns server task failed: {0}")]
    Serve(String),
}

/// A running server: where it listens, and how to stop it.
pub struct DnsServer {
    udp: SocketAddr,
    tcp: SocketAddr,
    server: Server<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The bound TCP address (same port as UDP).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    /// Stops accepting queries and waits for the server tasks to end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| ServerError::Serve(e.to_string()))
    }

    /// Runs until a server task fails (for a process that only serves DNS).
    pub async fn wait(mut self) -> Result<(), ServerError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| ServerError::Serve(e.to_string()))
    }
}

/// Binds UDP and TCP on `config.listen` and starts answering from `view`.
pub async fn run(
    config: DnsConfig,
    view: ViewHandle,
    metrics: DnsMetrics,
) -> Result<DnsServer, ServerError> {
    let (udp, tcp) = bind(config.listen).await?;
    let bind_err = |proto, source| ServerError::Bind {
        proto,
        addr: config.listen,
        source,
    };
    let udp_addr = udp.local_addr().map_err(|e| bind_err("udp", e))?;
    let tcp_addr = tcp.local_addr().map_err(|e| bind_err("tcp", e))?;
    let handler = Handler {
        view,
        answer: config.answer,
        meshed: config.meshed_clients,
        max_udp_payload: config.max_udp_payload.max(512),
        metrics,
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, config.tcp_idle_timeout, 64);
    info!(udp = %udp_addr, tcp = %tcp_addr, "dns server listening");
    Ok(DnsServer {
        udp: udp_addr,
        tcp: tcp_addr,
        server,
    })
}

/// Binds UDP, then TCP on the same port. With port 0 the TCP port may be
/// taken; try a few UDP ports then.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let attempts = if listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                proto: "udp",
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "udp",
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => {
                debug!(%addr, error = %e, "tcp port taken, retrying");
                last = Some((addr, e));
            }
        }
    }
    let (addr, source) = last.unwrap_or_else(|| (listen, std::io::ErrorKind::AddrInUse.into()));
    Err(ServerError::Bind {
        proto: "tcp",
        addr,
        source,
    })
}

struct Handler {
    view: ViewHandle,
    answer: AnswerConfig,
    meshed: Vec<IpNet>,
    max_udp_payload: u16,
    metrics: DnsMetrics,
}

impl Handler {
    fn client_kind(&self, src: SocketAddr) -> ClientKind {
        if self.meshed.iter().any(|n| n.contains(&src.ip())) {
            ClientKind::Meshed
        } else {
            ClientKind::Unmeshed
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let qtype = request.queries.queries().first().map(|q| q.query_type());

        let mut edns_buf = Edns::new();
        let edns = request.edns.as_ref().map(|req| {
            edns_buf.set_max_payload(req.max_payload().clamp(512, self.max_udp_payload));
            edns_buf.set_version(0);
            &edns_buf
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let error = |rcode| {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.response_code = rcode;
            meta
        };

        let bad = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        let result = match (bad, request.queries.queries().first()) {
            (None, Some(q)) => {
                let decided = if q.query_class() == DNSClass::IN {
                    let question = Question {
                        name: q.original().name(),
                        qtype: q.query_type(),
                        client: self.client_kind(request.src()),
                        pick: request.metadata.id,
                    };
                    answer(&self.view.current(), &question, &self.answer)
                } else {
                    crate::answer::Answer {
                        rcode: ResponseCode::Refused,
                        authoritative: false,
                        answers: Vec::new(),
                        soa: None,
                    }
                };
                let mut meta = error(decided.rcode);
                meta.authoritative = decided.authoritative;
                let response =
                    builder.build(meta, decided.answers.iter(), [], decided.soa.iter(), []);
                response_handle.send_response(response).await
            }
            (bad, _) => {
                let rcode = bad.unwrap_or(ResponseCode::FormErr);
                let response = builder.build_no_records(error(rcode));
                response_handle.send_response(response).await
            }
        };

        let info = match result {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, src = %request.src(), "cannot send dns response");
                ResponseInfo::from(Header {
                    metadata: error(ResponseCode::ServFail),
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics
            .record(qtype, info.response_code, start.elapsed());
        info
    }
}
