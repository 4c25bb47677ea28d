//! Who may report an endpoint's health to a controller, and how often.
//!
//! Every workload in the mesh holds a certificate under the same root, so a
//! verified certificate is no permission. A passive report is accepted when
//! all of these hold (checked in this order; the first failure is the
//! refusal):
//! 1. the reporter's certificate was signed by this cluster's intermediate
//!    (`other_cluster`, checked by the push service before this module);
//! 2. the reporter is a workload (`spiffe://<td>/ns/<ns>/sa/<sa>` outside
//!    `strait-system`): components never report (`not_a_workload`);
//! 3. the reporter is under its rate ([`RateLimiter`], `rate_limited`),
//!    checked before anything reads the catalog;
//! 4. the endpoint is in this cluster's catalog (`unknown_endpoint`);
//! 5. the reporter could call the service on some port: there, no deny
//!    rule without HTTP conditions names it, and when allow rules apply,
//!    one of them admits it by source (`may_not_call`) — a workload that
//!    may not call a service cannot have observed its endpoints.
//!
//! An accepted report is one vote; [`super::HealthTable`] turns an
//! endpoint down only when a quorum of distinct reporters agree.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strait_api::SpiffeId;
use strait_api::identity::SYSTEM_NAMESPACE;
use strait_api::snapshot::AuthorizationPolicy;

/// Reports one reporter may send per second, on average.
pub const REPORTS_PER_SECOND: f64 = 5.0;
/// Reports one reporter may send at once after being quiet.
pub const REPORT_BURST: f64 = 20.0;

/// Why a report was refused (its label is the `strait-reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{0} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa> outside {SYSTEM_NAMESPACE}); only workloads report endpoint health"
    )]
    NotAWorkload(SpiffeId),
    #[error(
        "{reporter} may not call {service} (its authorization policy does not admit it), so it cannot have observed its endpoints"
    )]
    MayNotCall { reporter: SpiffeId, service: String },
    #[error(
        "{0} sent more than {REPORTS_PER_SECOND} reports per second (burst {REPORT_BURST}); slow down"
    )]
    RateLimited(SpiffeId),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotAWorkload(_) => "not_a_workload",
            Self::MayNotCall { .. } => "may_not_call",
            Self::RateLimited(_) => "rate_limited",
        }
    }
}

/// Rule 2: only workloads report, never components.
pub fn is_workload(reporter: &SpiffeId) -> Result<(), Refusal> {
    let workload = reporter.service_account().is_some()
        && reporter
            .namespace()
            .is_some_and(|ns| ns != SYSTEM_NAMESPACE);
    if workload {
        Ok(())
    } else {
        Err(Refusal::NotAWorkload(reporter.clone()))
    }
}

/// Rule 5: whether `reporter` could plausibly have observed endpoints of
/// `service` (ports `service_ports`, authorization `policies`): some port
/// admits it by source.
pub fn may_call(
    reporter: &SpiffeId,
    service: &str,
    service_ports: &[u16],
    policies: &[AuthorizationPolicy],
) -> Result<(), Refusal> {
    let named = |from: &[strait_api::snapshot::PrincipalPattern]| {
        from.is_empty() || from.iter().any(|p| p.matches(reporter))
    };
    // Per port of the service: it may call the service when some port
    // admits it (no ports known: every policy counts, as one port).
    let ports: Vec<u16> = if service_ports.is_empty() {
        vec![0]
    } else {
        service_ports.to_vec()
    };
    let admitted_on = |port: u16| {
        let applies =
            |p: &&AuthorizationPolicy| p.ports.is_empty() || port == 0 || p.ports.contains(&port);
        let on: Vec<&AuthorizationPolicy> = policies.iter().filter(applies).collect();
        let denied = on.iter().any(|p| {
            p.deny
                .iter()
                .any(|r| !r.has_http_conditions() && named(&r.from))
        });
        let has_allow = on.iter().any(|p| !p.allow.is_empty());
        let allowed = on.iter().any(|p| p.allow.iter().any(|r| named(&r.from)));
        !denied && (!has_allow || allowed)
    };
    if !ports.into_iter().any(admitted_on) {
        return Err(Refusal::MayNotCall {
            reporter: reporter.clone(),
            service: service.to_owned(),
        });
    }
    Ok(())
}

/// A token bucket per reporter (rule 5). Buckets of reporters quiet for a
/// minute are forgotten, so the map stays as small as the set of active
/// reporters.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_reporter: HashMap<SpiffeId, (f64, Instant)>,
    /// Size at which quiet buckets are swept next (doubles with the live
    /// set, so a sweep costs O(1) per report on average).
    sweep_at: usize,
}

impl RateLimiter {
    /// Takes one report from `reporter`'s bucket at `now`.
    pub fn admit(&self, reporter: &SpiffeId, now: Instant) -> Result<(), Refusal> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.by_reporter.len() >= b.sweep_at.max(10_000) {
            b.by_reporter
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(60));
            b.sweep_at = 2 * b.by_reporter.len();
        }
        let (tokens, at) = b
            .by_reporter
            .entry(reporter.clone())
            .or_insert((REPORT_BURST, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * REPORTS_PER_SECOND;
        *tokens = (*tokens + refill).min(REPORT_BURST);
        *at = now;
        if *tokens < 1.0 {
            return Err(Refusal::RateLimited(reporter.clone()));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use strait_api::snapshot::{AuthzRule, PrincipalPattern};

    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://strait.local/{s}")).unwrap()
    }

    fn rule(from: &[&str], paths: &[&str]) -> AuthzRule {
        AuthzRule {
            from: from
                .iter()
                .map(|f| f.parse::<PrincipalPattern>().unwrap())
                .collect(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            ..AuthzRule::default()
        }
    }

    fn policy(allow: Vec<AuthzRule>, deny: Vec<AuthzRule>) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: "p".into(),
            ports: Vec::new(),
            deny,
            allow,
            path: Default::default(),
        }
    }

    #[test]
    fn the_plausibility_rule_as_a_table() {
        let web = "spiffe://strait.local/ns/shop/sa/web";
        let shop = "spiffe://strait.local/ns/shop/*";
        let cases: Vec<(&str, Vec<AuthorizationPolicy>, Option<&str>)> = vec![
            // No policy: every workload of the cluster may call, so may report.
            ("ns/shop/sa/web", vec![], None),
            ("ns/other/sa/batch", vec![], None),
            // Components never report.
            (
                "ns/strait-system/sa/gateway-west",
                vec![],
                Some("not_a_workload"),
            ),
            (
                "ns/strait-system/sa/controller-west",
                vec![],
                Some("not_a_workload"),
            ),
            ("cluster/west", vec![], Some("not_a_workload")),
            // Allow rules decide by source.
            (
                "ns/shop/sa/web",
                vec![policy(vec![rule(&[web], &[])], vec![])],
                None,
            ),
            (
                "ns/shop/sa/cart",
                vec![policy(vec![rule(&[web], &[])], vec![])],
                Some("may_not_call"),
            ),
            (
                "ns/shop/sa/cart",
                vec![policy(vec![rule(&[shop], &[])], vec![])],
                None,
            ),
            // An allow rule with path conditions still admits its source
            // (it may call some paths).
            (
                "ns/shop/sa/web",
                vec![policy(vec![rule(&[web], &["/api"])], vec![])],
                None,
            ),
            // An allow rule with no source admits everyone.
            (
                "ns/x/sa/y",
                vec![policy(vec![rule(&[], &["/public"])], vec![])],
                None,
            ),
            // A whole-caller deny refuses; a deny on some paths does not.
            (
                "ns/shop/sa/web",
                vec![policy(vec![], vec![rule(&[web], &[])])],
                Some("may_not_call"),
            ),
            (
                "ns/shop/sa/web",
                vec![policy(vec![], vec![rule(&[web], &["/admin"])])],
                None,
            ),
            (
                "ns/shop/sa/web",
                vec![policy(vec![rule(&["*"], &[])], vec![rule(&[shop], &[])])],
                Some("may_not_call"),
            ),
            // A deny on one port leaves the others: it may call there.
            (
                "ns/shop/sa/web",
                vec![AuthorizationPolicy {
                    ports: vec![9090],
                    ..policy(vec![], vec![rule(&[web], &[])])
                }],
                None,
            ),
            // Denied on the only port that has allow rules for it, and the
            // policy covering every port allows only others.
            (
                "ns/shop/sa/cart",
                vec![
                    AuthorizationPolicy {
                        ports: vec![8080],
                        ..policy(vec![], vec![rule(&[shop], &[])])
                    },
                    policy(vec![rule(&[web], &[])], vec![]),
                ],
                Some("may_not_call"),
            ),
            // Every policy names ports: the service's own ports decide
            // (a port no policy names would admit anyone).
            (
                "ns/shop/sa/cart",
                vec![AuthorizationPolicy {
                    ports: vec![8080, 9090],
                    ..policy(vec![rule(&[web], &[])], vec![])
                }],
                Some("may_not_call"),
            ),
        ];
        for (who, policies, want) in cases {
            let who_id = id(who);
            let got = is_workload(&who_id)
                .and_then(|()| may_call(&who_id, "shop/reviews", &[8080, 9090], &policies))
                .err();
            assert_eq!(got.as_ref().map(Refusal::label), want, "{who} {policies:?}");
            if let Some(e) = got {
                assert!(e.to_string().contains(who), "{e}");
            }
        }
    }

    #[test]
    fn each_reporter_has_its_own_bucket_that_refills() {
        let rl = RateLimiter::default();
        let (a, b) = (id("ns/shop/sa/a"), id("ns/shop/sa/b"));
        let t0 = Instant::now();
        for _ in 0..20 {
            rl.admit(&a, t0).unwrap();
        }
        assert_eq!(rl.admit(&a, t0).unwrap_err().label(), "rate_limited");
        // Another reporter is unaffected.
        rl.admit(&b, t0).unwrap();
        // One report per 200 ms comes back.
        assert!(rl.admit(&a, t0 + Duration::from_millis(100)).is_err());
        rl.admit(&a, t0 + Duration::from_millis(300)).unwrap();
        assert!(rl.admit(&a, t0 + Duration::from_millis(300)).is_err());
    }
}
