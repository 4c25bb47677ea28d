//! Exponential back-off with jitter, the one schedule every retry loop uses
//! (config-push subscriptions, catalog sync, certificate renewal, the
//! Kubernetes watchers): start at `min`, double up to `max`, and draw each
//! delay from [3/4, 5/4] of the current step so that many clients that
//! failed together do not retry together.

use std::time::Duration;

/// One retry loop's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The next delay, given `random`, a uniform number in [0, 1) (the
    /// caller's randomness, so the schedule is a table test away from
    /// proof); the step after it doubles.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let d = self.step.mul_f64(0.75 + random.clamp(0.0, 1.0) * 0.5);
        self.step = self.step.saturating_mul(2).min(self.max);
        d
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// Straight to `max` (after a failure that retrying soon cannot fix).
    pub fn to_max(&mut self) {
        self.step = self.max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(ms(100), ms(500));
        let mid: Vec<Duration> = (0..5).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(mid, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(75));
        assert_eq!(b.next_delay(1.0), ms(250));
        b.to_max();
        assert_eq!(b.next_delay(0.5), ms(500));
        // Out-of-range randomness is clamped, and max below min is min.
        let mut b = Backoff::new(ms(100), ms(10));
        assert_eq!(b.next_delay(7.0), ms(125));
        assert_eq!(b.next_delay(-1.0), ms(75));
    }
}
