//! Retries: whether a failed try may be retried, the budget that bounds
//! retries, and picking another endpoint for the retry.
//!
//! A retry needs all of: a failure the route's `retry_on` lists, a request
//! that is safe to send again (an idempotent method, or a failure that
//! proves the request never reached the application), attempts left, and
//! budget left. The budget allows `percent`% of the requests seen over a
//! sliding window plus a floor of `min_per_second` retries per second, so a
//! struggling service is never hit by a retry storm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use http::Method;
use strait_api::snapshot::{RetryBudgetConfig, RetryOn, RetryPolicy};

use crate::balance::Random;
use crate::locality::Plan;

/// Number of buckets the sliding window is cut into.
const BUCKETS: u32 = 10;

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (or tunnel): the request was never sent.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the peer did not process the request.
    RefusedStream,
    /// The connection broke after the request was sent.
    Reset,
    /// An HTTP answer with this status.
    Status(u16),
}

impl Failure {
    /// True when the request surely did not reach the application.
    pub fn never_processed(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::RefusedStream)
    }

    fn listed_in(self, retry_on: &[RetryOn]) -> bool {
        retry_on.iter().any(|on| match (on, self) {
            (RetryOn::ConnectFailure, Self::ConnectFailure)
            | (RetryOn::RefusedStream, Self::RefusedStream)
            | (RetryOn::Reset, Self::Reset) => true,
            (RetryOn::GatewayError, Self::Status(s)) => matches!(s, 502..=504),
            (RetryOn::ServerError, Self::Status(s)) => (500..600).contains(&s),
            _ => false,
        })
    }
}

/// RFC 9110 section 9.2.2: methods whose repetition has no extra effect.
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Whether to retry, and if not, why (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    Retry,
    NotRetryable,
    NotIdempotent,
    AttemptsExhausted,
    BudgetExhausted,
}

impl RetryDecision {
    pub fn label(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::NotRetryable => "not_retryable",
            Self::NotIdempotent => "not_idempotent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Decides on a retry after `retries_done` retries of this request. Takes
/// from the budget only when the answer is [`RetryDecision::Retry`].
pub fn decide(
    policy: &RetryPolicy,
    method: &Method,
    failure: Failure,
    retries_done: u32,
    budget: &mut RetryBudget,
    now: Instant,
) -> RetryDecision {
    if !failure.listed_in(&policy.retry_on) {
        RetryDecision::NotRetryable
    } else if !failure.never_processed() && !is_idempotent(method) {
        RetryDecision::NotIdempotent
    } else if retries_done >= policy.attempts {
        RetryDecision::AttemptsExhausted
    } else if !budget.try_withdraw(now) {
        RetryDecision::BudgetExhausted
    } else {
        RetryDecision::Retry
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    requests: u64,
    retries: u64,
}

/// A sliding-window retry budget for one service (or route).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    window: Duration,
    width: Duration,
    buckets: VecDeque<Bucket>,
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> Self {
        let window = config.window.max(Duration::from_millis(BUCKETS.into()));
        Self {
            percent: config.percent.clamp(0.0, 100.0),
            min_per_second: config.min_per_second,
            window,
            width: window / BUCKETS,
            buckets: VecDeque::new(),
        }
    }

    /// Counts an original request (not a retry).
    pub fn record_request(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Retries still allowed in the current window.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.expire(now);
        let requests: u64 = self.buckets.iter().map(|b| b.requests).sum();
        let retries: u64 = self.buckets.iter().map(|b| b.retries).sum();
        let floor = f64::from(self.min_per_second) * self.window.as_secs_f64();
        let allowed = (floor + requests as f64 * self.percent / 100.0).floor() as u64;
        allowed.saturating_sub(retries)
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.available(now) == 0 {
            return false;
        }
        self.bucket(now).retries += 1;
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(b) = self.buckets.front() {
            if now.saturating_duration_since(b.start) < self.window {
                break;
            }
            self.buckets.pop_front();
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        self.expire(now);
        let fresh = match self.buckets.back() {
            Some(b) => now.saturating_duration_since(b.start) >= self.width,
            None => true,
        };
        if fresh {
            self.buckets.push_back(Bucket {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }
}

/// The members of `group` not tried yet; all of them if every one was tried.
pub fn untried(group: &[usize], tried: &[usize]) -> Vec<usize> {
    let left: Vec<usize> = group
        .iter()
        .copied()
        .filter(|i| !tried.contains(i))
        .collect();
    if left.is_empty() {
        group.to_vec()
    } else {
        left
    }
}

/// Picks an endpoint for a retry, avoiding those already `tried`: draws a
/// group by share among the groups that still have untried endpoints, then
/// lets `pick` choose among them. Repeats an endpoint only when the whole
/// plan was tried.
pub fn pick_different<R: Random + ?Sized>(
    plan: &Plan,
    tried: &[usize],
    rng: &mut R,
    mut pick: impl FnMut(&[usize], &mut R) -> Option<usize>,
) -> Option<usize> {
    // A first try: every group is open. The same draw as below, without
    // building the open lists.
    if tried.is_empty() && plan.groups.iter().all(|g| !g.endpoints.is_empty()) {
        let g = plan.pick_group(rng)?;
        return pick(&g.endpoints, rng);
    }
    let open: Vec<(f64, Vec<usize>)> = plan
        .groups
        .iter()
        .map(|g| {
            let left: Vec<usize> = g
                .endpoints
                .iter()
                .copied()
                .filter(|i| !tried.contains(i))
                .collect();
            (g.share, left)
        })
        .filter(|(_, left)| !left.is_empty())
        .collect();
    if open.is_empty() {
        let g = plan.pick_group(rng)?;
        return pick(&g.endpoints, rng);
    }
    let total: f64 = open.iter().map(|(s, _)| s).sum();
    let mut x = rng.unit() * total;
    let mut chosen = &open[open.len() - 1].1;
    for (share, left) in &open {
        if x < *share {
            chosen = left;
            break;
        }
        x -= share;
    }
    pick(chosen, rng)
}

#[cfg(test)]
mod tests;
