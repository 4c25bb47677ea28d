//! A snapshot [`Service`] to and from its protobuf form
//! (`strait.config.v1.Service`): the resource a config delta carries.
//!
//! Encoding is total. Decoding checks what the protobuf types cannot
//! (addresses, names, enum values, identities) and names the field that is
//! wrong; the whole snapshot is then checked by `Snapshot::validate` as
//! always.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::proto::config as pb;
use crate::snapshot::{
    AuthorizationPolicy, AuthzRule, Distribute, Endpoint, EscapedSlashes, Health, LoadBalancer,
    OutlierDetection, PathParameters, PathPolicy, Protocol, RetryBudgetConfig, RetryOn,
    RetryPolicy, Route, Service, ServicePort, TrafficPolicy,
};

use super::DeltaError;

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn sock(a: SocketAddr) -> pb::SocketAddress {
    pb::SocketAddress {
        ip: ip_bytes(a.ip()),
        port: u32::from(a.port()),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The protobuf form of `s`.
pub fn encode_service(s: &Service) -> pb::Service {
    pb::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        vip: ip_bytes(s.vip),
        ports: s
            .ports
            .iter()
            .map(|p| pb::Port {
                port: u32::from(p.port),
                protocol: protocol_to(p.protocol) as i32,
            })
            .collect(),
        endpoints: s.endpoints.iter().map(encode_endpoint).collect(),
        routes: s.routes.iter().map(encode_route).collect(),
        traffic: Some(encode_traffic(&s.traffic)),
        outlier_detection: Some(pb::Outlier {
            consecutive_failures: s.outlier_detection.consecutive_failures,
            base_ejection_time_ms: ms(s.outlier_detection.base_ejection_time),
            max_ejection_time_ms: ms(s.outlier_detection.max_ejection_time),
            max_ejection_percent: u32::from(s.outlier_detection.max_ejection_percent),
        }),
        authorization: s.authorization.iter().map(encode_authz).collect(),
    }
}

fn encode_endpoint(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        address: Some(sock(e.address)),
        cluster: e.cluster.to_string(),
        locality: e.locality.to_string(),
        health: match e.health {
            Health::Healthy => pb::Health::Healthy,
            Health::Unhealthy => pb::Health::Unhealthy,
            Health::Stale => pb::Health::Stale,
        } as i32,
        weight: e.weight,
        identity: e.identity.to_string(),
        gateways: e.gateways.iter().copied().map(sock).collect(),
    }
}

fn encode_route(r: &Route) -> pb::Route {
    pb::Route {
        path_prefix: r.path_prefix.clone(),
        timeout_ms: ms(r.timeout),
        retry_attempts: r.retry.attempts,
        retry_on: r
            .retry
            .retry_on
            .iter()
            .map(|o| {
                (match o {
                    RetryOn::ConnectFailure => pb::RetryOn::ConnectFailure,
                    RetryOn::RefusedStream => pb::RetryOn::RefusedStream,
                    RetryOn::Reset => pb::RetryOn::Reset,
                    RetryOn::GatewayError => pb::RetryOn::GatewayError,
                    RetryOn::ServerError => pb::RetryOn::ServerError,
                }) as i32
            })
            .collect(),
        budget_percent: r.retry.budget.percent,
        budget_min_per_second: r.retry.budget.min_per_second,
        budget_window_ms: ms(r.retry.budget.window),
    }
}

fn encode_traffic(t: &TrafficPolicy) -> pb::Traffic {
    pb::Traffic {
        failover: t.failover.iter().map(ToString::to_string).collect(),
        distribute: t
            .distribute
            .iter()
            .map(|d| pb::Distribute {
                from: d.from.to_string(),
                to: d.to.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
            .collect(),
        overprovisioning_factor: t.overprovisioning_factor,
        load_balancer: match t.load_balancer {
            LoadBalancer::P2cEwma => pb::LoadBalancer::P2cEwma,
            LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
        } as i32,
    }
}

fn encode_rule(r: &AuthzRule) -> pb::AuthzRule {
    pb::AuthzRule {
        from: r.from.iter().map(ToString::to_string).collect(),
        paths: r.paths.clone(),
        methods: r.methods.clone(),
        hosts: r.hosts.clone(),
    }
}

fn encode_authz(a: &AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: a.name.clone(),
        ports: a.ports.iter().map(|p| u32::from(*p)).collect(),
        deny: a.deny.iter().map(encode_rule).collect(),
        allow: a.allow.iter().map(encode_rule).collect(),
        path: Some(pb::PathPolicy {
            escaped_slashes: match a.path.escaped_slashes {
                EscapedSlashes::Reject => pb::EscapedSlashes::RejectSlashes,
                EscapedSlashes::Decode => pb::EscapedSlashes::DecodeSlashes,
                EscapedSlashes::Keep => pb::EscapedSlashes::KeepSlashes,
            } as i32,
            parameters: match a.path.parameters {
                PathParameters::Reject => pb::PathParameters::RejectParameters,
                PathParameters::Keep => pb::PathParameters::KeepParameters,
            } as i32,
            case_insensitive: a.path.case_insensitive,
        }),
    }
}

fn protocol_to(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http1 => pb::Protocol::Http1,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Tcp => pb::Protocol::Tcp,
    }
}

/// Decoding with the field path of what is being decoded.
struct At<'a>(&'a str);

impl At<'_> {
    fn err(&self, sub: &str, value: impl std::fmt::Debug, reason: impl Into<String>) -> DeltaError {
        DeltaError::Field {
            field: if sub.is_empty() {
                self.0.to_owned()
            } else {
                format!("{}.{sub}", self.0)
            },
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    fn ip(&self, sub: &str, b: &[u8]) -> Result<IpAddr, DeltaError> {
        if let Ok(v4) = <[u8; 4]>::try_from(b) {
            return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
        }
        if let Ok(v6) = <[u8; 16]>::try_from(b) {
            return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
        }
        Err(self.err(sub, b, "an IP address is 4 or 16 bytes"))
    }

    fn port(&self, sub: &str, p: u32) -> Result<u16, DeltaError> {
        u16::try_from(p).map_err(|_| self.err(sub, p, "a port is at most 65535"))
    }

    fn sock(&self, sub: &str, a: Option<&pb::SocketAddress>) -> Result<SocketAddr, DeltaError> {
        let a = a.ok_or_else(|| self.err(sub, "", "missing"))?;
        Ok(SocketAddr::new(
            self.ip(&format!("{sub}.ip"), &a.ip)?,
            self.port(&format!("{sub}.port"), a.port)?,
        ))
    }

    fn parse<T: std::str::FromStr>(&self, sub: &str, s: &str) -> Result<T, DeltaError>
    where
        T::Err: std::fmt::Display,
    {
        s.parse()
            .map_err(|e: T::Err| self.err(sub, s, e.to_string()))
    }

    fn enum_of<T: TryFrom<i32>>(&self, sub: &str, v: i32) -> Result<T, DeltaError> {
        T::try_from(v).map_err(|_| self.err(sub, v, "unknown enum value"))
    }
}

/// The snapshot form of `p`, or the first field that is wrong; `at` is
/// the path of `p` in its message (`upserts[3]`).
pub fn decode_service(at: &str, p: &pb::Service) -> Result<Service, DeltaError> {
    let a = At(at);
    let ports = p
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Ok(ServicePort {
                port: a.port(&format!("ports[{i}].port"), port.port)?,
                protocol: match a.enum_of(&format!("ports[{i}].protocol"), port.protocol)? {
                    pb::Protocol::Http1 => Protocol::Http1,
                    pb::Protocol::Http2 => Protocol::Http2,
                    pb::Protocol::Grpc => Protocol::Grpc,
                    pb::Protocol::Tcp => Protocol::Tcp,
                },
            })
        })
        .collect::<Result<_, DeltaError>>()?;
    let endpoints = p
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| decode_endpoint(&a, &format!("endpoints[{i}]"), e))
        .collect::<Result<_, _>>()?;
    let routes = p
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| decode_route(&a, &format!("routes[{i}]"), r))
        .collect::<Result<_, _>>()?;
    let traffic = match &p.traffic {
        None => TrafficPolicy::default(),
        Some(t) => decode_traffic(&a, t)?,
    };
    let outlier_detection = match &p.outlier_detection {
        None => OutlierDetection::default(),
        Some(o) => OutlierDetection {
            consecutive_failures: o.consecutive_failures,
            base_ejection_time: Duration::from_millis(o.base_ejection_time_ms),
            max_ejection_time: Duration::from_millis(o.max_ejection_time_ms),
            max_ejection_percent: u8::try_from(o.max_ejection_percent).map_err(|_| {
                a.err(
                    "outlier_detection.max_ejection_percent",
                    o.max_ejection_percent,
                    "a percentage is at most 100",
                )
            })?,
        },
    };
    let authorization = p
        .authorization
        .iter()
        .enumerate()
        .map(|(i, z)| decode_authz(&a, &format!("authorization[{i}]"), z))
        .collect::<Result<_, _>>()?;
    Ok(Service {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        vip: a.ip("vip", &p.vip)?,
        ports,
        endpoints,
        routes,
        traffic,
        outlier_detection,
        authorization,
    })
}

fn decode_endpoint(a: &At<'_>, at: &str, e: &pb::Endpoint) -> Result<Endpoint, DeltaError> {
    Ok(Endpoint {
        address: a.sock(&format!("{at}.address"), e.address.as_ref())?,
        cluster: a.parse(&format!("{at}.cluster"), &e.cluster)?,
        locality: a.parse(&format!("{at}.locality"), &e.locality)?,
        health: match a.enum_of(&format!("{at}.health"), e.health)? {
            pb::Health::Healthy => Health::Healthy,
            pb::Health::Unhealthy => Health::Unhealthy,
            pb::Health::Stale => Health::Stale,
        },
        weight: e.weight,
        identity: a.parse(&format!("{at}.identity"), &e.identity)?,
        gateways: e
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| a.sock(&format!("{at}.gateways[{i}]"), Some(g)))
            .collect::<Result<_, _>>()?,
    })
}

fn decode_route(a: &At<'_>, at: &str, r: &pb::Route) -> Result<Route, DeltaError> {
    let retry_on = r
        .retry_on
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(match a.enum_of(&format!("{at}.retry_on[{i}]"), *v)? {
                pb::RetryOn::ConnectFailure => RetryOn::ConnectFailure,
                pb::RetryOn::RefusedStream => RetryOn::RefusedStream,
                pb::RetryOn::Reset => RetryOn::Reset,
                pb::RetryOn::GatewayError => RetryOn::GatewayError,
                pb::RetryOn::ServerError => RetryOn::ServerError,
            })
        })
        .collect::<Result<_, DeltaError>>()?;
    Ok(Route {
        path_prefix: r.path_prefix.clone(),
        timeout: Duration::from_millis(r.timeout_ms),
        retry: RetryPolicy {
            attempts: r.retry_attempts,
            retry_on,
            budget: RetryBudgetConfig {
                percent: r.budget_percent,
                min_per_second: r.budget_min_per_second,
                window: Duration::from_millis(r.budget_window_ms),
            },
        },
    })
}

fn decode_traffic(a: &At<'_>, t: &pb::Traffic) -> Result<TrafficPolicy, DeltaError> {
    let failover = t
        .failover
        .iter()
        .enumerate()
        .map(|(i, c)| a.parse(&format!("traffic.failover[{i}]"), c))
        .collect::<Result<_, _>>()?;
    let distribute = t
        .distribute
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let at = format!("traffic.distribute[{i}]");
            let to =
                d.to.iter()
                    .map(|(k, v)| Ok((a.parse(&format!("{at}.to"), k)?, *v)))
                    .collect::<Result<BTreeMap<_, _>, DeltaError>>()?;
            Ok(Distribute {
                from: a.parse(&format!("{at}.from"), &d.from)?,
                to,
            })
        })
        .collect::<Result<_, DeltaError>>()?;
    Ok(TrafficPolicy {
        failover,
        distribute,
        overprovisioning_factor: t.overprovisioning_factor,
        load_balancer: match a.enum_of("traffic.load_balancer", t.load_balancer)? {
            pb::LoadBalancer::P2cEwma => LoadBalancer::P2cEwma,
            pb::LoadBalancer::RoundRobin => LoadBalancer::RoundRobin,
        },
    })
}

fn decode_rule(a: &At<'_>, at: &str, r: &pb::AuthzRule) -> Result<AuthzRule, DeltaError> {
    Ok(AuthzRule {
        from: r
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| a.parse(&format!("{at}.from[{i}]"), f))
            .collect::<Result<_, _>>()?,
        paths: r.paths.clone(),
        methods: r.methods.clone(),
        hosts: r.hosts.clone(),
    })
}

fn decode_authz(
    a: &At<'_>,
    at: &str,
    z: &pb::AuthorizationPolicy,
) -> Result<AuthorizationPolicy, DeltaError> {
    let rules = |which: &str, rs: &[pb::AuthzRule]| {
        rs.iter()
            .enumerate()
            .map(|(i, r)| decode_rule(a, &format!("{at}.{which}[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()
    };
    let path = match &z.path {
        None => PathPolicy::default(),
        Some(p) => PathPolicy {
            escaped_slashes: match a
                .enum_of(&format!("{at}.path.escaped_slashes"), p.escaped_slashes)?
            {
                pb::EscapedSlashes::RejectSlashes => EscapedSlashes::Reject,
                pb::EscapedSlashes::DecodeSlashes => EscapedSlashes::Decode,
                pb::EscapedSlashes::KeepSlashes => EscapedSlashes::Keep,
            },
            parameters: match a.enum_of(&format!("{at}.path.parameters"), p.parameters)? {
                pb::PathParameters::RejectParameters => PathParameters::Reject,
                pb::PathParameters::KeepParameters => PathParameters::Keep,
            },
            case_insensitive: p.case_insensitive,
        },
    };
    Ok(AuthorizationPolicy {
        name: z.name.clone(),
        ports: z
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| a.port(&format!("{at}.ports[{i}]"), *p))
            .collect::<Result<_, _>>()?,
        deny: rules("deny", &z.deny)?,
        allow: rules("allow", &z.allow)?,
        path,
    })
}
