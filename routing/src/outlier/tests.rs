use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_api::snapshot::OutlierDetection;

use super::*;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 15006))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn detector(n: u8, threshold: u32, max_percent: u8) -> OutlierDetector {
    let mut d = OutlierDetector::new(OutlierDetection {
        consecutive_failures: threshold,
        base_ejection_time: secs(10),
        max_ejection_time: secs(60),
        max_ejection_percent: max_percent,
    });
    d.sync((1..=n).map(addr));
    d
}

fn fail(d: &mut OutlierDetector, a: SocketAddr, times: u32, now: Instant) -> Option<Ejection> {
    (0..times)
        .map(|_| d.record(a, Outcome::ConnectFailure, now))
        .last()
        .flatten()
}

#[test]
fn ejects_after_consecutive_failures() {
    let t = Instant::now();
    let mut d = detector(4, 3, 100);
    assert_eq!(d.record(addr(1), Outcome::ServerError, t), None);
    assert_eq!(d.record(addr(1), Outcome::ConnectFailure, t), None);
    let e = d.record(addr(1), Outcome::ServerError, t);
    assert_eq!(
        e,
        Some(Ejection {
            address: addr(1),
            until: t + secs(10),
            count: 1
        })
    );
    assert!(d.is_ejected(&addr(1), t));
    assert!(!d.is_ejected(&addr(2), t));
}

#[test]
fn success_resets_the_count() {
    let t = Instant::now();
    let mut d = detector(4, 3, 100);
    fail(&mut d, addr(1), 2, t);
    assert_eq!(d.record(addr(1), Outcome::Success, t), None);
    assert_eq!(fail(&mut d, addr(1), 2, t), None);
    assert!(!d.is_ejected(&addr(1), t));
}

#[test]
fn classifies_statuses() {
    for (status, want) in [
        (200, Outcome::Success),
        (404, Outcome::Success),
        (500, Outcome::ServerError),
        (503, Outcome::ServerError),
    ] {
        assert_eq!(Outcome::from_status(status), want, "{status}");
    }
}

#[test]
fn ejection_time_doubles_and_is_capped() {
    let cases = [(1, 10), (2, 20), (3, 40), (4, 60), (40, 60)];
    for (count, want) in cases {
        assert_eq!(
            ejection_time(secs(10), secs(60), count),
            secs(want),
            "{count}"
        );
    }
}

#[test]
fn un_ejects_on_time_and_backs_off_on_repeat_failures() {
    let t0 = Instant::now();
    let mut d = detector(4, 1, 100);
    assert_eq!(fail(&mut d, addr(1), 1, t0).map(|e| e.count), Some(1));
    assert!(d.is_ejected(&addr(1), t0 + secs(9)));
    assert!(!d.is_ejected(&addr(1), t0 + secs(10)));
    assert_eq!(d.refresh(t0 + secs(10)), [addr(1)]);
    // Fails again right away: twice as long.
    let t1 = t0 + secs(10);
    let e = fail(&mut d, addr(1), 1, t1);
    assert_eq!(
        e,
        Some(Ejection {
            address: addr(1),
            until: t1 + secs(20),
            count: 2
        })
    );
    // Outcomes while ejected are ignored.
    assert_eq!(fail(&mut d, addr(1), 5, t1 + secs(1)), None);
}

#[test]
fn healthy_time_forgets_past_ejections() {
    let t0 = Instant::now();
    let mut d = detector(4, 1, 100);
    fail(&mut d, addr(1), 1, t0); // 10s, back at 10
    fail(&mut d, addr(1), 1, t0 + secs(10)); // 20s, back at 30
    // Healthy for 15s (one base period): one ejection forgotten -> 2nd again.
    let e = fail(&mut d, addr(1), 1, t0 + secs(45));
    assert_eq!(e.map(|e| e.count), Some(2));
    // Healthy for a long time: back to the first step.
    let e = fail(&mut d, addr(1), 1, t0 + secs(1000));
    assert_eq!(e.map(|e| e.count), Some(1));
}

#[test]
fn never_ejects_more_than_max_percent() {
    let t = Instant::now();
    // percent, endpoints, all failing -> how many get ejected
    let cases = [
        (50, 4, 2),
        (100, 4, 4),
        (10, 4, 1),
        (34, 3, 1),
        (0, 4, 0),
        (60, 5, 3),
    ];
    for (pct, n, want) in cases {
        let mut d = detector(n, 2, pct);
        for i in 1..=n {
            fail(&mut d, addr(i), 2, t);
        }
        assert_eq!(d.ejected_count(t), want, "{pct}% of {n}");
    }
}

#[test]
fn capped_endpoint_is_ejected_once_room_frees_up() {
    let t0 = Instant::now();
    let mut d = detector(2, 2, 50);
    assert!(fail(&mut d, addr(1), 2, t0).is_some());
    assert_eq!(fail(&mut d, addr(2), 2, t0), None);
    assert!(!d.is_ejected(&addr(2), t0));
    // addr(1) returns; the next failure of addr(2) ejects it.
    let t1 = t0 + secs(10);
    assert!(d.record(addr(2), Outcome::ServerError, t1).is_some());
    assert!(d.is_ejected(&addr(2), t1));
}

#[test]
fn disabled_detection_never_ejects() {
    let t = Instant::now();
    let mut d = detector(2, 0, 100);
    assert_eq!(fail(&mut d, addr(1), 100, t), None);
}

#[test]
fn sync_keeps_state_of_remaining_endpoints_and_ignores_unknown_ones() {
    let t = Instant::now();
    let mut d = detector(3, 1, 100);
    fail(&mut d, addr(1), 1, t);
    fail(&mut d, addr(2), 1, t);
    d.sync([addr(1), addr(9)]);
    assert!(d.is_ejected(&addr(1), t));
    assert!(!d.is_ejected(&addr(2), t));
    assert_eq!(d.record(addr(7), Outcome::ServerError, t), None);
    assert_eq!(d.ejected_count(t), 1);
}

#[test]
fn a_single_endpoint_may_always_be_ejected() {
    let t = Instant::now();
    let mut d = detector(1, 1, 50);
    assert_eq!(d.max_ejected(), 1);
    assert!(fail(&mut d, addr(1), 1, t).is_some());
}

#[test]
fn a_gateway_refusal_neither_ejects_nor_resets_the_count() {
    let t = Instant::now();
    let mut d = detector(2, 3, 100);
    for _ in 0..10 {
        assert_eq!(d.record(addr(1), Outcome::NotReached, t), None);
    }
    assert!(!d.is_ejected(&addr(1), t));
    // Two real failures, refusals between them, then a third: ejected.
    assert_eq!(fail(&mut d, addr(1), 2, t), None);
    assert_eq!(d.record(addr(1), Outcome::NotReached, t), None);
    assert!(d.record(addr(1), Outcome::ConnectFailure, t).is_some());
}
