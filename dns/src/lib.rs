//! Strait global DNS: an authoritative server for the mesh zone
//! (`clusterset.local` by default) that answers A, AAAA and SRV for global
//! services, `<svc>.<ns>.svc.<zone>` and per-cluster
//! `<cluster>.<svc>.<ns>.svc.<zone>`, with health-aware failover to the next
//! cluster's gateway when the local cluster has no healthy endpoint.
//!
//! Layers: [`view`] is what answers come from (a [`DnsView`] swapped
//! through a [`ViewHandle`]), built from the controller's snapshot by
//! [`from_snapshot`]; [`mod@answer`] decides every response as a pure
//! function of view and question; [`server`] runs hickory-server on UDP and
//! TCP and only executes those decisions; [`role`] is `strait dns`: a
//! server that follows its cluster's controller; [`metrics`] counts
//! queries and answer latency.
//!
//! It is not a recursive resolver: names outside the zone get REFUSED and
//! nothing is forwarded upstream. It does not check health itself (the view
//! lists healthy endpoints only), does no DNSSEC, zone transfer, or DNS over
//! TLS/HTTPS/QUIC.

pub mod answer;
pub mod from_snapshot;
pub mod metrics;
pub mod role;
pub mod server;
pub mod view;

pub use answer::{Answer, AnswerConfig, ClientKind, DEFAULT_TTL, Question, answer};
pub use ipnet::IpNet;
pub use metrics::{DnsMetrics, encode_metrics};
pub use server::{DnsConfig, DnsServer, ServerError, run};
pub use view::{
    ClusterEndpoints, DEFAULT_ZONE, DnsView, GlobalService, IndexedView, LocalityWeight,
    PortProtocol, ServicePort, ViewError, ViewHandle,
};
