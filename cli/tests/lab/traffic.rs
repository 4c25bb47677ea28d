//! Steady traffic around a fault: loops of one request at a time at a
//! fixed interval, each request's start and answer recorded, and the
//! counts printed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Lab, Reply};
use crate::support::pause;
use crate::{INTERVAL, LOCAL, WORKERS};

/// One request of the steady traffic: when it started (from the start of
/// the traffic), its answer.
pub struct Sample {
    pub at: Duration,
    pub reply: Reply,
}

/// What steady traffic saw around one fault.
pub struct Run {
    pub samples: Vec<Sample>,
    pub fault_at: Duration,
}

impl Run {
    /// Requests not answered by the app: no 200, or a 200 without the
    /// app's `served-by` line.
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| !(s.reply.ok_from("west") || s.reply.ok_from("central")))
            .collect()
    }

    /// Prints the counts: requests, failed ones, who served before and
    /// after the fault, how long after it the first answer from `to` came.
    pub fn report(&self, lab: &Lab, what: &str, to: &str) {
        let mut before = BTreeMap::<&str, usize>::new();
        let mut after = BTreeMap::<&str, usize>::new();
        for s in &self.samples {
            let side = if s.at < self.fault_at {
                &mut before
            } else {
                &mut after
            };
            *side.entry(s.reply.served_by.as_str()).or_default() += 1;
        }
        let first = self
            .samples
            .iter()
            .filter(|s| s.at >= self.fault_at && s.reply.ok_from(to))
            .map(|s| (s.at + s.reply.took).saturating_sub(self.fault_at))
            .min();
        let failed: Vec<String> = self
            .failed()
            .iter()
            .map(|s| {
                format!(
                    "{} (curl exit {}) at +{:.2}s took {:.2}s: {:?}",
                    s.reply.status,
                    s.reply.exit,
                    s.at.as_secs_f64() - self.fault_at.as_secs_f64(),
                    s.reply.took.as_secs_f64(),
                    s.reply.body.chars().take(200).collect::<String>()
                )
            })
            .collect();
        say!(
            "{what}: {} requests ({WORKERS} loops, one every {INTERVAL:?}), {} failed {failed:?}; \
             served before {before:?}, after {after:?} (\"\" = no answer); first answer from {to} \
             {:.2} s after the fault; east's sidecar has ejected {} endpoint(s) so far",
            self.samples.len(),
            failed.len(),
            first.map_or(f64::NAN, |d| d.as_secs_f64()),
            lab.ejections(),
        );
    }
}

/// Runs steady traffic to echo.demo by its `cluster.local` name, applies
/// `fault` after a second, and keeps going until `settled()` and 10
/// requests in a row after it were answered by `to` (at most `limit`).
pub fn under_traffic(
    lab: &Lab,
    vip: &str,
    fault: impl FnOnce(),
    settled: impl Fn() -> bool,
    to: &str,
    limit: Duration,
) -> Run {
    let samples = Mutex::new(Vec::<Sample>::new());
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let mut fault_at = Duration::ZERO;
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let at = t0.elapsed();
                    let reply = lab.get(LOCAL, vip);
                    samples.lock().unwrap().push(Sample { at, reply });
                    pause(INTERVAL.as_millis() as u64);
                }
            });
        }
        pause(1000);
        fault_at = t0.elapsed();
        fault();
        let deadline = Instant::now() + limit;
        loop {
            let done = {
                let all = samples.lock().unwrap();
                let after: Vec<&Sample> = all.iter().filter(|s| s.at > fault_at).collect();
                after.len() >= 10 && after.iter().rev().take(10).all(|s| s.reply.ok_from(to))
            };
            if (done && settled()) || Instant::now() > deadline {
                break;
            }
            pause(100);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut samples = samples.into_inner().unwrap();
    samples.sort_by_key(|s| s.at);
    let run = Run { samples, fault_at };
    let after: Vec<&Sample> = run.samples.iter().filter(|s| s.at > fault_at).collect();
    assert!(
        after.len() >= 10 && after.iter().rev().take(10).all(|s| s.reply.ok_from(to)) && settled(),
        "traffic did not settle on {to} within {limit:?} of the fault"
    );
    run
}
