//! Between catalog types and the sync protocol's messages.

use std::net::SocketAddr;

use strait_api::proto::federation::{Endpoint as PbEndpoint, ExportedService, Port};
use strait_api::snapshot::{Health, MAX_ENDPOINT_WEIGHT, Protocol, ServicePort};
use strait_api::{ClusterName, Locality, SpiffeId, TrustDomain};

use crate::catalog::{Registration, ServiceKey, check_label};
use crate::snapshot::{ImportedEndpoint, ImportedService};

/// The message form of a local registration, with merged health.
pub fn export_service(
    cluster: &ClusterName,
    td: &TrustDomain,
    default_locality: &Locality,
    reg: &Registration,
    health: &dyn Fn(SocketAddr) -> Health,
) -> ExportedService {
    ExportedService {
        namespace: reg.namespace.clone(),
        name: reg.name.clone(),
        ports: reg
            .ports
            .iter()
            .map(|p| Port {
                port: u32::from(p.port),
                protocol: p.protocol.as_str().into(),
            })
            .collect(),
        endpoints: reg
            .endpoints
            .iter()
            .filter_map(|ep| {
                Some(PbEndpoint {
                    address: ep.address.to_string(),
                    locality: ep.locality.as_ref().unwrap_or(default_locality).to_string(),
                    identity: reg.identity_of(ep, td)?.to_string(),
                    health: match health(ep.address) {
                        Health::Unhealthy => "unhealthy",
                        _ => "healthy",
                    }
                    .into(),
                    weight: ep.weight,
                })
            })
            .collect(),
        cluster: cluster.to_string(),
    }
}

/// Checks and converts an imported service; the error names the field.
pub fn import_service(
    s: &ExportedService,
    td: &TrustDomain,
) -> Result<(ServiceKey, ImportedService), String> {
    check_label("namespace", &s.namespace)
        .map_err(|e| format!("{}: {:?} {}", e.field, e.value, e.reason))?;
    check_label("name", &s.name).map_err(|e| format!("{}: {:?} {}", e.field, e.value, e.reason))?;
    let key = ServiceKey::new(&s.namespace, &s.name);
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{key}: ports[{i}].port {} is out of range", p.port))?;
        let protocol = Protocol::parse(&p.protocol)
            .ok_or_else(|| format!("{key}: ports[{i}].protocol {:?} is unknown", p.protocol))?;
        ports.push(ServicePort { port, protocol });
    }
    if ports.is_empty() {
        return Err(format!("{key}: no ports"));
    }
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    // Endpoints of one service mostly share locality and identity: each
    // distinct string is parsed and checked once.
    let mut last: Option<(&str, Locality, &str, SpiffeId)> = None;
    for (i, ep) in s.endpoints.iter().enumerate() {
        let f = format_args!("{key}: endpoints[{i}]");
        let address: SocketAddr = ep
            .address
            .parse()
            .map_err(|_| format!("{f}.address {:?} is not ip:port", ep.address))?;
        let (locality, identity) = match &last {
            Some((l, loc, id, sid)) if *l == ep.locality && *id == ep.identity => {
                (loc.clone(), sid.clone())
            }
            _ => {
                let locality: Locality = ep
                    .locality
                    .parse()
                    .map_err(|e| format!("{f}.locality: {e}"))?;
                let identity =
                    SpiffeId::parse(&ep.identity).map_err(|e| format!("{f}.identity: {e}"))?;
                if identity.trust_domain_str() != td.as_str() {
                    return Err(format!(
                        "{f}.identity {identity} is outside trust domain {td}"
                    ));
                }
                last = Some((
                    &ep.locality,
                    locality.clone(),
                    &ep.identity,
                    identity.clone(),
                ));
                (locality, identity)
            }
        };
        let health = match ep.health.as_str() {
            "healthy" | "" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            other => return Err(format!("{f}.health {other:?} is unknown")),
        };
        if ep.weight == 0 || ep.weight > MAX_ENDPOINT_WEIGHT {
            return Err(format!("{f}.weight {} is out of range", ep.weight));
        }
        endpoints.push(ImportedEndpoint {
            address,
            locality,
            identity,
            health,
            weight: ep.weight,
        });
    }
    Ok((key, ImportedService { ports, endpoints }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, locality: &str, identity: &str) -> PbEndpoint {
        PbEndpoint {
            address: addr.into(),
            locality: locality.into(),
            identity: identity.into(),
            health: "healthy".into(),
            weight: 1,
        }
    }

    fn svc(endpoints: Vec<PbEndpoint>) -> ExportedService {
        ExportedService {
            namespace: "default".into(),
            name: "reviews".into(),
            ports: vec![Port {
                port: 80,
                protocol: "http1".into(),
            }],
            endpoints,
            cluster: "west".into(),
        }
    }

    #[test]
    fn every_endpoint_is_checked_even_when_strings_repeat() {
        let td = TrustDomain::new("strait.local").unwrap();
        let id = "spiffe://strait.local/ns/default/sa/reviews";
        let (_, s) = import_service(
            &svc(vec![
                ep("10.0.0.1:1", "us-west/a", id),
                ep("10.0.0.2:1", "us-west/a", id),
                ep("10.0.0.3:1", "us-west/b", id),
            ]),
            &td,
        )
        .unwrap();
        let zones: Vec<&str> = s
            .endpoints
            .iter()
            .map(|e| e.locality.zone.as_str())
            .collect();
        assert_eq!(zones, ["a", "a", "b"]);
        assert!(s.endpoints.iter().all(|e| e.identity.as_str() == id));
        let e = import_service(
            &svc(vec![
                ep("10.0.0.1:1", "us-west/a", id),
                ep(
                    "10.0.0.2:1",
                    "us-west/a",
                    "spiffe://other.td/ns/default/sa/reviews",
                ),
            ]),
            &td,
        )
        .unwrap_err();
        assert!(
            e.contains("endpoints[1].identity") && e.contains("outside trust domain"),
            "{e}"
        );
        let e = import_service(
            &svc(vec![
                ep("10.0.0.1:1", "us-west/a", id),
                ep("10.0.0.2:1", "us-west/a/b/c", id),
            ]),
            &td,
        )
        .unwrap_err();
        assert!(e.contains("endpoints[1].locality"), "{e}");
    }
}
