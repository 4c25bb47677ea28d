//! `strait policy set|show`: a service's failover order, locality weights,
//! authorization and routes (timeouts, retries), in one policy object on
//! the controller.
//!
//! `set` reads the current policy (`GET /v1/policy`), changes what its
//! flags name and writes the whole object back (`POST /v1/policy`): the
//! traffic part (`--failover`, `--distribute`, `--overprovisioning-factor`)
//! is replaced when any of its flags is given, authorization only by the
//! authorization flags, the route of one path prefix only by the route
//! flags. Two operators setting the same policy at once race
//! (the last write wins).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use strait_api::snapshot::{
    AuthorizationPolicy, AuthzRule, PathPolicy, RetryOn, Route, SnapshotError, duration_str,
    validate_routes,
};
use strait_federation::catalog::policy::{AuthzFlags, parse_distribute};
use strait_federation::catalog::{FieldError, PolicySpec, ServiceKey};

use super::{ConnArgs, ServiceArg, block_on, clusters};
use crate::output::{Format, emit};

#[derive(Debug, Subcommand)]
#[allow(
    clippy::doc_overindented_list_items,
    reason = "the help text shows a YAML list verbatim"
)]
pub enum PolicyCommand {
    /// Set a service's policy: ordered failover and locality weights
    /// together, and who may call it.
    ///
    ///   strait policy set reviews -n default --failover east,west,central \
    ///       --distribute 'us-east/*=80,us-west/*=20' --cluster east
    ///   strait policy set reviews --distribute 'us-east/*->us-east/*=80,us-west/*=20;us-west/*->us-west/*=100'
    ///
    ///   # callers from namespaces shop and guest only (policy `cli`) ...
    ///   strait policy set reviews -n shop --cluster east \
    ///       --allow-from 'spiffe://strait.local/ns/shop/*,spiffe://strait.local/ns/guest/*'
    ///   # ... and a second policy: guest may not use /admin
    ///   strait policy set reviews -n shop --authz-name no-guest-admin \
    ///       --deny-from 'spiffe://strait.local/ns/guest/*' --paths /admin --cluster east
    ///   strait policy set reviews -n shop --authz-file reviews-authz.yaml --cluster east
    ///   strait policy set reviews -n shop --clear-authz --cluster east
    ///
    ///   # 2 s timeout and 2 retries on 5xx or connect failure under /api
    ///   strait policy set reviews -n shop --path-prefix /api --timeout 2s \
    ///       --retries 2 --retry-on 5xx,connect-failure --cluster east
    ///   strait policy set reviews -n shop --clear-routes --cluster east
    ///
    /// --distribute: rules separated by ';', each [FROM->]TO=WEIGHT,... where
    /// FROM and TO are region/zone patterns ('*' matches any) and weights sum to 100.
    ///
    /// Flags change only their part: --failover, --distribute and
    /// --overprovisioning-factor together replace the traffic part (unset
    /// ones go back to defaults); the authorization flags change only the
    /// authorization, which the other flags keep.
    ///
    /// Authorization is enforced by the sidecars of this cluster's endpoints
    /// of the service (deny rules first; then, if any allow rule exists for
    /// a port, one must match). --allow-from/--deny-from build one policy
    /// named --authz-name (default `cli`) with an allow and a deny rule, each
    /// narrowed by --ports, --paths and --methods; it replaces the policy of
    /// that name and keeps the others. Patterns: an exact SPIFFE ID,
    /// spiffe://TD/ns/NS/*, spiffe://TD/* or '*' (any mesh identity).
    /// Request paths are canonicalized before rules see them and forwarded
    /// canonical; --escaped-slashes (reject|decode|keep), --path-parameters
    /// (reject|keep) and --case-insensitive-paths set how, for the ports of
    /// the flag-built policy (policies sharing a port must agree).
    /// --authz-file replaces every policy with a YAML list:
    ///
    ///   - name: callers
    ///     ports: [9080]                 # default: every port
    ///     deny:  [{ from: ["spiffe://strait.local/ns/guest/*"], paths: [/admin] }]
    ///     allow: [{ from: ["spiffe://strait.local/ns/shop/*"] },
    ///             { from: ["*"], methods: [GET] }]
    ///
    /// Routes are enforced by this cluster's callers of the service (local
    /// or imported): the longest matching --path-prefix wins, other paths
    /// get the default (15s timeout, 2 retries on connect-failure,
    /// refused-stream, gateway-error). --timeout, --retries and --retry-on
    /// change the route of --path-prefix (default `/`), keeping its other
    /// settings and the other routes.
    #[command(verbatim_doc_comment)]
    Set {
        #[command(flatten)]
        svc: ServiceArg,
        /// Clusters to fail over to, in order (comma-separated).
        #[arg(long)]
        failover: Option<String>,
        /// Locality weights.
        #[arg(long)]
        distribute: Option<String>,
        /// Overprovisioning factor of locality tiers (1.0..=10.0).
        #[arg(long)]
        overprovisioning_factor: Option<f64>,
        #[command(flatten)]
        ejection: EjectionArgs,
        #[command(flatten)]
        authz: Box<AuthzArgs>,
        #[command(flatten)]
        route: RouteArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show a service's policy (failover, weights, authorization, routes).
    ///
    ///   strait policy show reviews -n default --cluster east -o yaml
    #[command(verbatim_doc_comment)]
    Show {
        #[command(flatten)]
        svc: ServiceArg,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Passive ejection (outlier detection) of the service's endpoints by this
/// cluster's callers; unset flags keep the current (or default) value.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EjectionArgs {
    /// Consecutive failures (5xx, connect failures) before an endpoint is
    /// ejected [default: 5; 0 disables ejection].
    #[arg(long, value_name = "N")]
    eject_after: Option<u32>,
    /// How long a first ejection lasts; each next one doubles [default:
    /// 30s]. An ejection also ends when the endpoint's check passes again.
    #[arg(long, value_name = "DURATION", value_parser = crate::output::parse_duration)]
    eject_for: Option<std::time::Duration>,
    /// The longest an ejection lasts [default: 300s].
    #[arg(long, value_name = "DURATION", value_parser = crate::output::parse_duration)]
    eject_max: Option<std::time::Duration>,
}

impl EjectionArgs {
    /// Applies the flags given to `p`'s outlier detection.
    fn apply(&self, p: &mut PolicySpec) {
        if self.eject_after.is_none() && self.eject_for.is_none() && self.eject_max.is_none() {
            return;
        }
        let o = p.outlier_detection.get_or_insert_with(Default::default);
        if let Some(n) = self.eject_after {
            o.consecutive_failures = n;
        }
        if let Some(d) = self.eject_for {
            o.base_ejection_time = d;
        }
        if let Some(d) = self.eject_max {
            o.max_ejection_time = d;
        }
    }
}

/// The authorization flags of `policy set`.
#[derive(Debug, clap::Args)]
pub struct AuthzArgs {
    /// Callers to allow (SPIFFE ID patterns; repeat or comma-separate).
    #[arg(long, value_delimiter = ',', value_name = "PATTERN")]
    allow_from: Vec<String>,
    /// Callers to deny (checked before any allow rule).
    #[arg(long, value_delimiter = ',', value_name = "PATTERN")]
    deny_from: Vec<String>,
    /// Ports the flag-built policy applies to (default: every port).
    #[arg(long, value_delimiter = ',', value_name = "PORT")]
    ports: Vec<u16>,
    /// Path prefixes the flag-built rules match (HTTP ports only).
    #[arg(long, value_delimiter = ',', value_name = "PATH")]
    paths: Vec<String>,
    /// HTTP methods the flag-built rules match.
    #[arg(long, value_delimiter = ',', value_name = "METHOD")]
    methods: Vec<String>,
    /// %2F, %5C and '\' in request paths: reject (400), decode (as '/')
    /// or keep (encoded, as data of the segment).
    #[arg(long, value_name = "MODE")]
    escaped_slashes: Option<String>,
    /// ';' in a request path segment: reject (400) or keep.
    #[arg(long, value_name = "MODE")]
    path_parameters: Option<String>,
    /// Rule paths match ignoring ASCII case (the app gets the path as sent).
    #[arg(long)]
    case_insensitive_paths: bool,
    /// Name of the flag-built policy; replaces the policy of this name.
    #[arg(long, default_value = "cli", value_name = "NAME")]
    authz_name: String,
    /// Replace every authorization policy with the YAML list in FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["allow_from", "deny_from", "clear_authz"])]
    authz_file: Option<PathBuf>,
    /// Remove every authorization policy.
    #[arg(long, conflicts_with_all = ["allow_from", "deny_from"])]
    clear_authz: bool,
}

/// The route flags of `policy set`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RouteArgs {
    /// Path prefix of the route the route flags change.
    #[arg(long, default_value = "/", value_name = "PATH")]
    path_prefix: String,
    /// Timeout of one request, all tries included (e.g. 250ms, 2s, 1m).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Retries after the first try (0 to 10; 0 disables retries).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// What is retried: connect-failure, refused-stream, reset,
    /// gateway-error, 5xx.
    #[arg(long, value_delimiter = ',', value_name = "COND")]
    retry_on: Vec<String>,
    /// Remove every route (callers go back to the default route).
    #[arg(long, conflicts_with_all = ["timeout", "retries", "retry_on"])]
    clear_routes: bool,
}

/// What `policy set` does to the routes.
#[derive(Debug, Clone, PartialEq)]
enum RouteChange {
    Keep,
    Clear,
    /// Change the route of `prefix` (a default one if there is none).
    Edit {
        prefix: String,
        timeout: Option<std::time::Duration>,
        attempts: Option<u32>,
        retry_on: Option<Vec<RetryOn>>,
    },
}

impl RouteArgs {
    fn change(&self) -> anyhow::Result<RouteChange> {
        if self.clear_routes {
            return Ok(RouteChange::Clear);
        }
        if self.timeout.is_none() && self.retries.is_none() && self.retry_on.is_empty() {
            if self.path_prefix != "/" {
                bail!(
                    "--path-prefix selects the route that --timeout, --retries or --retry-on change; give at least one of those"
                );
            }
            return Ok(RouteChange::Keep);
        }
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| {
                duration_str::parse(t).with_context(|| {
                    format!("--timeout: {t:?} is invalid: use a number with ms, s, m or h, e.g. 2s")
                })
            })
            .transpose()?;
        let retry_on = if self.retry_on.is_empty() {
            None
        } else {
            let list = self
                .retry_on
                .iter()
                .map(|s| {
                    RetryOn::deserialize(s.trim().into_deserializer()).map_err(
                        |_: serde::de::value::Error| {
                            anyhow::anyhow!(
                                "--retry-on: {s:?} is invalid: use connect-failure, refused-stream, reset, gateway-error or 5xx"
                            )
                        },
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(list)
        };
        let change = RouteChange::Edit {
            prefix: self.path_prefix.clone(),
            timeout,
            attempts: self.retries,
            retry_on,
        };
        // Check the flags alone (on a default route) before asking the
        // controller, naming the flag.
        let probe = edit_route(None, &change);
        if let Some(route) = probe {
            validate_routes("routes", std::slice::from_ref(&route)).map_err(|e| {
                let field = e.field().unwrap_or_default();
                let flag = if field.ends_with("path_prefix") {
                    "--path-prefix"
                } else if field.ends_with("timeout") {
                    "--timeout"
                } else if field.ends_with("attempts") {
                    "--retries"
                } else {
                    "route"
                };
                match e {
                    SnapshotError::Invalid { value, reason, .. } => {
                        anyhow::anyhow!("{flag}: {value:?} is invalid: {reason}")
                    }
                    other => anyhow::anyhow!("{flag}: {other}"),
                }
            })?;
        }
        Ok(change)
    }
}

/// The route `change` makes of `current` (the route of its prefix, if any).
fn edit_route(current: Option<&Route>, change: &RouteChange) -> Option<Route> {
    let RouteChange::Edit {
        prefix,
        timeout,
        attempts,
        retry_on,
    } = change
    else {
        return None;
    };
    let mut r = current.cloned().unwrap_or_else(|| Route {
        path_prefix: prefix.clone(),
        ..Route::default()
    });
    if let Some(t) = timeout {
        r.timeout = *t;
    }
    if let Some(n) = attempts {
        r.retry.attempts = *n;
    }
    if let Some(on) = retry_on {
        r.retry.retry_on.clone_from(on);
    }
    Some(r)
}

/// What `policy set` does to the authorization list.
#[derive(Debug, Clone, PartialEq)]
enum AuthzChange {
    Keep,
    Upsert(AuthorizationPolicy),
    Replace(Vec<AuthorizationPolicy>),
}

impl AuthzArgs {
    fn change(&self) -> anyhow::Result<AuthzChange> {
        let flags = AuthzFlags {
            name: self.authz_name.clone(),
            allow_from: self.allow_from.clone(),
            deny_from: self.deny_from.clone(),
            ports: self.ports.clone(),
            paths: self.paths.clone(),
            methods: self.methods.clone(),
            path: self.path_policy()?,
        };
        if let Some(file) = &self.authz_file {
            return Ok(AuthzChange::Replace(read_authz_file(file)?));
        }
        if self.clear_authz {
            return Ok(AuthzChange::Replace(Vec::new()));
        }
        let no_rules = flags.allow_from.is_empty() && flags.deny_from.is_empty();
        // --ports also scopes path handling; --paths and --methods only rules.
        let ports_unused = !flags.ports.is_empty() && flags.path.is_default();
        if no_rules && (ports_unused || !flags.paths.is_empty() || !flags.methods.is_empty()) {
            bail!(
                "--ports, --paths and --methods narrow the rules of --allow-from or --deny-from; give at least one of those"
            );
        }
        if flags.is_empty() {
            return Ok(AuthzChange::Keep);
        }
        let policy = flags.to_policy().map_err(|e| flag_error(&e))?;
        Ok(AuthzChange::Upsert(policy))
    }
}

impl AuthzArgs {
    fn path_policy(&self) -> anyhow::Result<PathPolicy> {
        fn mode<T: for<'de> Deserialize<'de>>(
            flag: &str,
            v: &str,
            modes: &str,
        ) -> anyhow::Result<T> {
            T::deserialize(v.trim().into_deserializer()).map_err(|_: serde::de::value::Error| {
                anyhow::anyhow!("{flag}: {v:?} is invalid: use {modes}")
            })
        }
        let mut p = PathPolicy {
            case_insensitive: self.case_insensitive_paths,
            ..PathPolicy::default()
        };
        if let Some(v) = &self.escaped_slashes {
            p.escaped_slashes = mode("--escaped-slashes", v, "reject, decode or keep")?;
        }
        if let Some(v) = &self.path_parameters {
            p.parameters = mode("--path-parameters", v, "reject or keep")?;
        }
        Ok(p)
    }
}

/// Names the flag behind a field of the flag-built policy.
fn flag_error(e: &FieldError) -> anyhow::Error {
    let flag = if e.field.contains(".from") && e.field.contains("deny") {
        "--deny-from"
    } else if e.field.contains(".from") {
        "--allow-from"
    } else if e.field.contains(".paths") {
        "--paths"
    } else if e.field.contains(".methods") {
        "--methods"
    } else if e.field.contains(".ports") {
        "--ports"
    } else {
        "authorization"
    };
    anyhow::anyhow!("{flag}: {:?} is invalid: {}", e.value, e.reason)
}

fn read_authz_file(file: &Path) -> anyhow::Result<Vec<AuthorizationPolicy>> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    strait_api::yaml::from_str(&text).with_context(|| {
        format!(
            "{}: not a list of authorization policies (name, ports, deny, allow)",
            file.display()
        )
    })
}

fn rule_text(kind: &str, r: &AuthzRule) -> String {
    let list = |v: Vec<String>| v.join(",");
    let mut out = format!("    {kind:<5} from {}", {
        let from: Vec<String> = r.from.iter().map(ToString::to_string).collect();
        if from.is_empty() {
            "*".to_owned()
        } else {
            list(from)
        }
    });
    for (name, v) in [
        ("paths", &r.paths),
        ("methods", &r.methods),
        ("hosts", &r.hosts),
    ] {
        if !v.is_empty() {
            out.push_str(&format!(" {name} {}", list(v.clone())));
        }
    }
    out.push('\n');
    out
}

fn policy_text(p: &PolicySpec) -> String {
    let mut out = format!("policy {}/{}\n", p.namespace, p.name);
    let failover: Vec<String> = p.failover.iter().map(ToString::to_string).collect();
    out.push_str(&format!(
        "  failover    {}\n",
        if failover.is_empty() {
            "(none: any healthy cluster)".to_owned()
        } else {
            failover.join(" -> ")
        }
    ));
    for d in &p.distribute {
        let to: Vec<String> = d.to.iter().map(|(k, w)| format!("{k}={w}")).collect();
        out.push_str(&format!("  distribute  {}->{}\n", d.from, to.join(",")));
    }
    out.push_str(&format!(
        "  overprovisioning factor {}\n",
        p.overprovisioning_factor
    ));
    if let Some(o) = &p.outlier_detection {
        out.push_str(&format!(
            "  ejection    after {} failures, for {} (doubling to {}), at most {}% of endpoints\n",
            o.consecutive_failures,
            strait_api::snapshot::duration_str::format(o.base_ejection_time),
            strait_api::snapshot::duration_str::format(o.max_ejection_time),
            o.max_ejection_percent
        ));
    }
    if p.routes.is_empty() {
        out.push_str("  routes (none: 15s timeout, default retries)\n");
    }
    for r in &p.routes {
        let on: Vec<String> = r
            .retry
            .retry_on
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&format!(
            "  route {:<12} timeout {} retries {} on {}\n",
            r.path_prefix,
            duration_str::format(r.timeout),
            r.retry.attempts,
            if on.is_empty() {
                "(nothing)".to_owned()
            } else {
                on.join(",")
            }
        ));
    }
    if p.authorization.is_empty() {
        out.push_str("  authorization (none: every mesh identity may call)\n");
    }
    for a in &p.authorization {
        let ports: Vec<String> = a.ports.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "  authorization {} (ports {})\n",
            a.name,
            if ports.is_empty() {
                "all".to_owned()
            } else {
                ports.join(",")
            }
        ));
        if !a.path.is_default() {
            out.push_str(&format!(
                "    paths: escaped slashes {:?}, parameters {:?}, case-insensitive {}\n",
                a.path.escaped_slashes, a.path.parameters, a.path.case_insensitive
            ));
        }
        for r in &a.deny {
            out.push_str(&rule_text("deny", r));
        }
        for r in &a.allow {
            out.push_str(&rule_text("allow", r));
        }
    }
    out
}

pub fn policy(cmd: PolicyCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            svc,
            failover,
            distribute,
            overprovisioning_factor,
            ejection,
            authz,
            route,
            conn,
        } => {
            let key = ServiceKey::new(&svc.namespace, &svc.service);
            // Every flag is checked before the controller is asked.
            let mut traffic = PolicySpec::new(&key);
            if let Some(list) = &failover {
                traffic.failover = clusters("--failover", list)?;
            }
            if let Some(d) = &distribute {
                traffic.distribute = parse_distribute(d).map_err(|e| {
                    anyhow::anyhow!(
                        "--distribute: {}: {:?}: {} (syntax: [FROM->]REGION/ZONE=WEIGHT,... with ';' between rules, e.g. 'us-east/*=80,us-west/*=20')",
                        e.field,
                        e.value,
                        e.reason
                    )
                })?;
            }
            if let Some(f) = overprovisioning_factor {
                traffic.overprovisioning_factor = f;
            }
            let sets_traffic =
                failover.is_some() || distribute.is_some() || overprovisioning_factor.is_some();
            let change = authz.change()?;
            let routes = route.change()?;
            let ctl = conn.resolve()?;
            let current: Option<PolicySpec> = block_on(ctl.get_opt(&show_path(&key)))?;
            let mut p = apply(
                key.clone(),
                current,
                sets_traffic.then_some(traffic),
                change,
            );
            apply_routes(&mut p, &routes);
            ejection.apply(&mut p);
            p.validate().map_err(|e| {
                anyhow::anyhow!("policy {key}: {}: {:?}: {}", e.field, e.value, e.reason)
            })?;
            let saved: PolicySpec = block_on(ctl.post("/v1/policy", &p))?;
            emit(format, &saved, policy_text)
        }
        PolicyCommand::Show { svc, conn } => {
            let ctl = conn.resolve()?;
            let key = ServiceKey::new(&svc.namespace, &svc.service);
            let p: PolicySpec = block_on(ctl.get(&show_path(&key)))?;
            emit(format, &p, policy_text)
        }
    }
}

fn show_path(key: &ServiceKey) -> String {
    format!("/v1/policy?namespace={}&name={}", key.namespace, key.name)
}

/// The policy to write: `current` (or a new one) with the traffic part
/// replaced when `traffic` is given and the authorization changed.
fn apply(
    key: ServiceKey,
    current: Option<PolicySpec>,
    traffic: Option<PolicySpec>,
    change: AuthzChange,
) -> PolicySpec {
    let mut p = current.unwrap_or_else(|| PolicySpec::new(&key));
    if let Some(t) = traffic {
        p.failover = t.failover;
        p.distribute = t.distribute;
        p.overprovisioning_factor = t.overprovisioning_factor;
    }
    match change {
        AuthzChange::Keep => {}
        AuthzChange::Upsert(a) => p.upsert_authorization(a),
        AuthzChange::Replace(list) => p.authorization = list,
    }
    p
}

/// Applies the route flags to `p`: the route of the prefix is edited in
/// place (or added), the others kept.
fn apply_routes(p: &mut PolicySpec, change: &RouteChange) {
    match change {
        RouteChange::Keep => {}
        RouteChange::Clear => p.routes.clear(),
        RouteChange::Edit { prefix, .. } => {
            let current = p.routes.iter().find(|r| r.path_prefix == *prefix);
            if let Some(r) = edit_route(current, change) {
                p.upsert_route(r);
            }
        }
    }
}

#[cfg(test)]
mod tests;
