//! Parsing a snapshot and checking what serde cannot: uniqueness,
//! references, ranges and shapes, with errors that name the field.

use super::*;

impl Snapshot {
    /// Parses YAML and validates the result.
    pub fn from_yaml(text: &str) -> Result<Self, SnapshotError> {
        let snap: Self = crate::yaml::from_str(text).map_err(|e| match e {
            crate::yaml::YamlError::TooDeep(reason) => {
                SnapshotError::invalid("<document>", "yaml", reason)
            }
            crate::yaml::YamlError::Parse(e) => SnapshotError::Parse(e),
        })?;
        snap.validate()?;
        Ok(snap)
    }

    /// Every cluster the snapshot may name: the local one and the linked ones.
    pub fn known_clusters(&self) -> BTreeSet<&ClusterName> {
        std::iter::once(&self.local.cluster)
            .chain(&self.clusters)
            .collect()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// Checks what serde cannot: uniqueness, references, ranges and shapes.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let mut seen = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            if !seen.insert(c) || *c == self.local.cluster {
                return Err(dup(format!("clusters[{i}]"), "cluster", c));
            }
        }
        let known = self.known_clusters();
        let mut names = HashSet::new();
        let mut vips = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            check_label(&format!("{f}.name"), &svc.name)?;
            check_label(&format!("{f}.namespace"), &svc.namespace)?;
            if !names.insert((&svc.namespace, &svc.name)) {
                let v = format!("{}/{}", svc.namespace, svc.name);
                return Err(dup(format!("{f}.name"), "service", v));
            }
            check_vip(&format!("{f}.vip"), svc.vip)?;
            if !vips.insert(svc.vip) {
                return Err(dup(format!("{f}.vip"), "vip", svc.vip));
            }
            validate_service(&f, svc, &self.local.cluster, &known)?;
        }
        if let Some(t) = &self.exports {
            t.validate()
                .map_err(|e| SnapshotError::invalid("exports", "export table", e.to_string()))?;
        }
        Ok(())
    }
}

fn dup(field: String, what: &'static str, value: impl fmt::Display) -> SnapshotError {
    SnapshotError::Duplicate {
        field,
        what,
        value: value.to_string(),
    }
}

fn check_label(field: &str, v: &str) -> Result<(), SnapshotError> {
    if crate::label::is_service_label(v) {
        Ok(())
    } else {
        Err(SnapshotError::invalid(
            field,
            v,
            "must be a dns label: lower-case letters, digits and '-', starting with a letter",
        ))
    }
}

fn check_vip(field: &str, vip: IpAddr) -> Result<(), SnapshotError> {
    let reason = match vip {
        IpAddr::V6(_) => "must be an ipv4 loopback address (127.0.0.0/8)",
        IpAddr::V4(v4) if !v4.is_loopback() => "must be in 127.0.0.0/8",
        IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST => "127.0.0.1 is the host's own loopback",
        IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255) => "must not end in .0 or .255",
        IpAddr::V4(_) => return Ok(()),
    };
    Err(SnapshotError::invalid(field, vip, reason))
}

fn check_cluster(
    field: String,
    c: &ClusterName,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    if known.contains(c) {
        return Ok(());
    }
    let list: Vec<&str> = known.iter().map(|c| c.as_str()).collect();
    Err(SnapshotError::UnknownCluster {
        field,
        value: c.to_string(),
        known: list.join(", "),
    })
}

fn validate_service(
    f: &str,
    svc: &Service,
    local: &ClusterName,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    if svc.ports.is_empty() {
        return Err(SnapshotError::invalid(
            format!("{f}.ports"),
            "[]",
            "needs at least one port",
        ));
    }
    let mut ports = HashSet::new();
    for (j, p) in svc.ports.iter().enumerate() {
        if p.port == 0 {
            return Err(SnapshotError::invalid(
                format!("{f}.ports[{j}].port"),
                0,
                "must not be 0",
            ));
        }
        if !ports.insert(p.port) {
            return Err(dup(format!("{f}.ports[{j}].port"), "port", p.port));
        }
    }
    let mut addrs = HashSet::new();
    for (j, ep) in svc.endpoints.iter().enumerate() {
        let ef = format!("{f}.endpoints[{j}]");
        if !addrs.insert(ep.address) {
            return Err(dup(format!("{ef}.address"), "endpoint", ep.address));
        }
        check_cluster(format!("{ef}.cluster"), &ep.cluster, known)?;
        if ep.weight == 0 || ep.weight > MAX_ENDPOINT_WEIGHT {
            let why = format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}");
            return Err(SnapshotError::invalid(
                format!("{ef}.weight"),
                ep.weight,
                why,
            ));
        }
        if ep.cluster != *local && ep.gateways.is_empty() {
            let why = "an endpoint in another cluster needs at least one gateway";
            return Err(SnapshotError::invalid(format!("{ef}.gateways"), "[]", why));
        }
        if ep.cluster == *local && !ep.gateways.is_empty() {
            let why = "a local endpoint is reached directly, without a gateway";
            let v = format!("{:?}", ep.gateways);
            return Err(SnapshotError::invalid(format!("{ef}.gateways"), v, why));
        }
    }
    validate_routes(&format!("{f}.routes"), &svc.routes)?;
    validate_traffic(&format!("{f}.traffic"), &svc.traffic, known)?;
    validate_outlier(&format!("{f}.outlier_detection"), &svc.outlier_detection)?;
    validate_authorization(
        &format!("{f}.authorization"),
        &svc.authorization,
        Some(&svc.ports),
    )
}

/// Checks a service's routes: normalized, unique path prefixes, positive
/// timeouts, retry attempts and budgets in range. `field` prefixes the
/// field paths of errors (`routes` gives `routes[0].timeout`).
pub fn validate_routes(field: &str, routes: &[Route]) -> Result<(), SnapshotError> {
    let mut prefixes = HashSet::new();
    for (j, r) in routes.iter().enumerate() {
        let rf = format!("{field}[{j}]");
        check_path(&format!("{rf}.path_prefix"), &r.path_prefix)?;
        if !prefixes.insert(&r.path_prefix) {
            return Err(dup(
                format!("{rf}.path_prefix"),
                "route prefix",
                &r.path_prefix,
            ));
        }
        if r.timeout.is_zero() {
            return Err(SnapshotError::invalid(
                format!("{rf}.timeout"),
                "0s",
                "must be positive",
            ));
        }
        validate_retry(&format!("{rf}.retry"), &r.retry)?;
    }
    Ok(())
}

/// Checks a service's authorization policies: unique names, normalized
/// paths, upper-case methods and host names; with the service's `ports`,
/// also that every policy names ports of the service and that paths,
/// methods and hosts are only used on HTTP ports. A controller checks a
/// policy with `ports: None` before it knows the service, and again with
/// the ports when it builds a snapshot. `field` prefixes the field paths
/// of errors (`authorization` gives `authorization[0].deny[1].paths[0]`).
pub fn validate_authorization(
    field: &str,
    policies: &[AuthorizationPolicy],
    ports: Option<&[ServicePort]>,
) -> Result<(), SnapshotError> {
    let mut pnames = HashSet::new();
    for (j, p) in policies.iter().enumerate() {
        let pf = format!("{field}[{j}]");
        if !pnames.insert(&p.name) {
            return Err(dup(format!("{pf}.name"), "policy", &p.name));
        }
        validate_policy(&pf, p, ports)?;
        let earlier = policies[..j]
            .iter()
            .find(|q| q.overlaps(p) && q.path != p.path);
        if let Some(q) = earlier {
            let why = format!(
                "policies covering the same port must agree on `path`, and {:?} differs",
                q.name
            );
            return Err(SnapshotError::invalid(format!("{pf}.path"), &p.name, why));
        }
    }
    Ok(())
}

fn validate_retry(f: &str, r: &RetryPolicy) -> Result<(), SnapshotError> {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        let why = format!("at most {MAX_RETRY_ATTEMPTS}");
        return Err(SnapshotError::invalid(
            format!("{f}.attempts"),
            r.attempts,
            why,
        ));
    }
    let b = &r.budget;
    if !(b.percent.is_finite() && (0.0..=100.0).contains(&b.percent)) {
        let why = "must be between 0 and 100";
        return Err(SnapshotError::invalid(
            format!("{f}.budget.percent"),
            b.percent,
            why,
        ));
    }
    if b.window < Duration::from_secs(1) || b.window > Duration::from_secs(600) {
        let why = "must be between 1s and 10m";
        let v = duration_str::format(b.window);
        return Err(SnapshotError::invalid(format!("{f}.budget.window"), v, why));
    }
    Ok(())
}

fn validate_traffic(
    f: &str,
    t: &TrafficPolicy,
    known: &BTreeSet<&ClusterName>,
) -> Result<(), SnapshotError> {
    let mut seen = HashSet::new();
    for (i, c) in t.failover.iter().enumerate() {
        check_cluster(format!("{f}.failover[{i}]"), c, known)?;
        if !seen.insert(c) {
            return Err(dup(format!("{f}.failover[{i}]"), "cluster", c));
        }
    }
    let factor = t.overprovisioning_factor;
    if !(factor.is_finite() && (1.0..=10.0).contains(&factor)) {
        let why = "must be between 1.0 and 10.0";
        return Err(SnapshotError::invalid(
            format!("{f}.overprovisioning_factor"),
            factor,
            why,
        ));
    }
    let mut froms = HashSet::new();
    for (i, d) in t.distribute.iter().enumerate() {
        let df = format!("{f}.distribute[{i}]");
        if !froms.insert(&d.from) {
            return Err(dup(format!("{df}.from"), "pattern", &d.from));
        }
        if d.to.is_empty() {
            return Err(SnapshotError::invalid(
                format!("{df}.to"),
                "{}",
                "needs at least one locality",
            ));
        }
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 {
            return Err(SnapshotError::WeightSum {
                field: format!("{df}.to"),
                sum,
            });
        }
    }
    Ok(())
}

/// Ranges of an outlier-detection setting (a snapshot's, or a policy's).
pub fn validate_outlier(f: &str, o: &OutlierDetection) -> Result<(), SnapshotError> {
    if o.max_ejection_percent > 100 {
        let why = "must be between 0 and 100";
        let field = format!("{f}.max_ejection_percent");
        return Err(SnapshotError::invalid(field, o.max_ejection_percent, why));
    }
    if o.base_ejection_time.is_zero() {
        let field = format!("{f}.base_ejection_time");
        return Err(SnapshotError::invalid(field, "0s", "must be positive"));
    }
    if o.max_ejection_time < o.base_ejection_time {
        let v = duration_str::format(o.max_ejection_time);
        let why = "must not be shorter than base_ejection_time";
        return Err(SnapshotError::invalid(
            format!("{f}.max_ejection_time"),
            v,
            why,
        ));
    }
    Ok(())
}

fn validate_policy(
    f: &str,
    p: &AuthorizationPolicy,
    ports: Option<&[ServicePort]>,
) -> Result<(), SnapshotError> {
    let find = |port: u16| ports.and_then(|all| all.iter().find(|sp| sp.port == port));
    for (k, port) in p.ports.iter().enumerate() {
        if *port == 0 {
            return Err(SnapshotError::invalid(
                format!("{f}.ports[{k}]"),
                0,
                "must not be 0",
            ));
        }
        if ports.is_some() && find(*port).is_none() {
            let why = "not a port of this service";
            return Err(SnapshotError::invalid(format!("{f}.ports[{k}]"), port, why));
        }
    }
    // Without the service's ports, HTTP conditions cannot be judged yet.
    let all_tcp = match ports {
        None => false,
        Some(all) if p.ports.is_empty() => all.iter().all(|sp| !sp.protocol.is_http()),
        Some(_) => p
            .ports
            .iter()
            .all(|port| find(*port).is_some_and(|sp| !sp.protocol.is_http())),
    };
    let deny = p.deny.iter().enumerate().map(|(k, r)| ("deny", k, r));
    let allow = p.allow.iter().enumerate().map(|(k, r)| ("allow", k, r));
    for (kind, idx, rule) in deny.chain(allow) {
        let rf = format!("{f}.{kind}[{idx}]");
        if all_tcp && rule.has_http_conditions() {
            let why = "paths, methods and hosts need an http port";
            return Err(SnapshotError::invalid(rf, "tcp", why));
        }
        for (m, path) in rule.paths.iter().enumerate() {
            check_path(&format!("{rf}.paths[{m}]"), path)?;
        }
        for (m, method) in rule.methods.iter().enumerate() {
            let ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                let why = "must be an upper-case http method";
                return Err(SnapshotError::invalid(
                    format!("{rf}.methods[{m}]"),
                    method,
                    why,
                ));
            }
        }
        for (m, host) in rule.hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'));
            if !ok {
                let why = "must be a host name";
                return Err(SnapshotError::invalid(
                    format!("{rf}.hosts[{m}]"),
                    host,
                    why,
                ));
            }
        }
    }
    Ok(())
}

/// A configured path must already be in normalized form, so that it can be
/// compared with normalized request paths.
fn check_path(field: &str, p: &str) -> Result<(), SnapshotError> {
    let why = if !p.starts_with('/') {
        "must start with '/'"
    } else if p.contains("//") {
        "must not contain '//'"
    } else if p.split('/').any(|s| s == "." || s == "..") {
        "must not contain '.' or '..' segments"
    } else if p
        .bytes()
        .any(|b| matches!(b, b'%' | b'\\' | b'?' | b'#') || !b.is_ascii_graphic())
    {
        "must be a plain path without '%', '\\', '?', '#' or spaces"
    } else {
        return Ok(());
    };
    Err(SnapshotError::invalid(field, p, why))
}
