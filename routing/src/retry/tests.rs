use std::time::{Duration, Instant};

use http::Method;
use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_api::snapshot::{RetryBudgetConfig, RetryOn, RetryPolicy};

use super::*;
use crate::locality::{Group, Plan, Reason, Tier};

fn budget(percent: f64, min_per_second: u32, window_secs: u64) -> RetryBudget {
    RetryBudget::new(&RetryBudgetConfig {
        percent,
        min_per_second,
        window: Duration::from_secs(window_secs),
    })
}

#[test]
fn idempotent_methods_follow_rfc_9110() {
    for (m, want) in [
        (Method::GET, true),
        (Method::HEAD, true),
        (Method::OPTIONS, true),
        (Method::TRACE, true),
        (Method::PUT, true),
        (Method::DELETE, true),
        (Method::POST, false),
        (Method::PATCH, false),
        (Method::CONNECT, false),
    ] {
        assert_eq!(is_idempotent(&m), want, "{m}");
    }
}

#[test]
fn decides_by_condition_method_and_attempts() {
    use RetryDecision::*;
    let policy = RetryPolicy {
        attempts: 2,
        retry_on: vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::GatewayError,
        ],
        ..RetryPolicy::default()
    };
    let all = RetryPolicy {
        retry_on: vec![RetryOn::ServerError, RetryOn::Reset],
        ..policy.clone()
    };
    let cases = [
        (&policy, Method::GET, Failure::ConnectFailure, 0, Retry),
        (&policy, Method::POST, Failure::ConnectFailure, 0, Retry),
        (&policy, Method::POST, Failure::RefusedStream, 1, Retry),
        (&policy, Method::GET, Failure::Status(503), 1, Retry),
        (
            &policy,
            Method::POST,
            Failure::Status(503),
            0,
            NotIdempotent,
        ),
        (&policy, Method::GET, Failure::Status(500), 0, NotRetryable),
        (&policy, Method::GET, Failure::Status(404), 0, NotRetryable),
        (&policy, Method::GET, Failure::Reset, 0, NotRetryable),
        (
            &policy,
            Method::GET,
            Failure::ConnectFailure,
            2,
            AttemptsExhausted,
        ),
        (&all, Method::GET, Failure::Status(500), 0, Retry),
        (&all, Method::PUT, Failure::Reset, 0, Retry),
        (&all, Method::PATCH, Failure::Reset, 0, NotIdempotent),
        (&all, Method::GET, Failure::ConnectFailure, 0, NotRetryable),
    ];
    let now = Instant::now();
    for (policy, method, failure, done, want) in cases {
        let mut b = budget(20.0, 10, 10);
        let got = decide(policy, &method, failure, done, &mut b, now);
        assert_eq!(got, want, "{method} {failure:?} after {done}");
    }
}

#[test]
fn retry_budget_exhausts_at_the_percentage_of_requests() {
    let now = Instant::now();
    let mut b = budget(20.0, 0, 10);
    for _ in 0..100 {
        b.record_request(now);
    }
    assert_eq!(b.available(now), 20);
    let granted = (0..50).filter(|_| b.try_withdraw(now)).count();
    assert_eq!(granted, 20);
    let policy = RetryPolicy::default();
    let d = decide(
        &policy,
        &Method::GET,
        Failure::ConnectFailure,
        0,
        &mut b,
        now,
    );
    assert_eq!(d, RetryDecision::BudgetExhausted);
    assert_eq!(d.label(), "budget_exhausted");
}

#[test]
fn retry_budget_has_a_floor_per_second() {
    let now = Instant::now();
    let mut b = budget(20.0, 2, 10);
    // No traffic at all: 2/s over a 10 s window.
    assert_eq!(b.available(now), 20);
    for _ in 0..10 {
        b.record_request(now);
    }
    assert_eq!(b.available(now), 22);
}

#[test]
fn retry_budget_recovers_as_the_window_slides() {
    let t0 = Instant::now();
    let mut b = budget(50.0, 0, 10);
    for _ in 0..10 {
        b.record_request(t0);
    }
    assert_eq!((0..10).filter(|_| b.try_withdraw(t0)).count(), 5);
    assert!(!b.try_withdraw(t0 + Duration::from_secs(9)));
    // The old requests and retries leave the window together.
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(b.available(t1), 0);
    for _ in 0..4 {
        b.record_request(t1);
    }
    assert_eq!(b.available(t1), 2);
}

#[test]
fn decisions_other_than_retry_do_not_spend_budget() {
    let now = Instant::now();
    let mut b = budget(0.0, 1, 1);
    let policy = RetryPolicy::default();
    let d = decide(&policy, &Method::POST, Failure::Status(503), 0, &mut b, now);
    assert_eq!(d, RetryDecision::NotIdempotent);
    assert_eq!(b.available(now), 1);
}

#[test]
fn untried_prefers_fresh_endpoints() {
    assert_eq!(untried(&[1, 2, 3], &[2]), [1, 3]);
    assert_eq!(untried(&[1, 2], &[1, 2]), [1, 2]);
    assert_eq!(untried(&[], &[1]), Vec::<usize>::new());
}

fn plan(groups: &[(f64, &[usize])]) -> Plan {
    Plan {
        groups: groups
            .iter()
            .map(|(share, eps)| Group {
                tier: Tier::LocalZone,
                share: *share,
                endpoints: eps.to_vec(),
            })
            .collect(),
        reason: Reason::LocalHealthy,
    }
}

#[test]
fn retries_go_to_a_different_endpoint() {
    let mut rng = StdRng::seed_from_u64(5);
    let p = plan(&[(0.9, &[0, 1]), (0.1, &[2])]);
    for _ in 0..50 {
        let got = pick_different(&p, &[0], &mut rng, |g, r| g.get(r.below(g.len())).copied());
        assert!(matches!(got, Some(1 | 2)), "{got:?}");
    }
    // The whole first group tried: the next group serves the retry.
    for _ in 0..20 {
        let got = pick_different(&p, &[0, 1], &mut rng, |g, _| g.first().copied());
        assert_eq!(got, Some(2));
    }
    // Everything tried: a repeat is better than nothing.
    let got = pick_different(&p, &[0, 1, 2], &mut rng, |g, _| g.first().copied());
    assert!(got.is_some());
    assert_eq!(
        pick_different(&plan(&[]), &[], &mut rng, |g, _| g.first().copied()),
        None
    );
}
