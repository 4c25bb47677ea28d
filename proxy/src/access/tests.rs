use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[test]
fn timestamps_are_rfc3339_utc_to_the_microsecond() {
    let rows = [
        (0, 0, "1970-01-01T00:00:00.000000Z"),
        // A leap day, and the last second of a leap year.
        (951_782_400, 0, "2000-02-29T00:00:00.000000Z"),
        (1_483_228_799, 999_999, "2016-12-31T23:59:59.999999Z"),
        // The same second again (its text is kept per thread): only the
        // microseconds change.
        (1_483_228_799, 5, "2016-12-31T23:59:59.000005Z"),
        (1_796_601_600 + 3_723, 42, "2026-12-07T01:02:03.000042Z"),
        (4_107_542_400, 0, "2100-03-01T00:00:00.000000Z"),
        // Five-digit years are written whole, and the next line is right.
        (253_402_300_800, 7, "10000-01-01T00:00:00.000007Z"),
        (4_107_542_400, 1, "2100-03-01T00:00:00.000001Z"),
        (0, 0, "1970-01-01T00:00:00.000000Z"),
    ];
    for (secs, micros, want) in rows {
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        let mut got = String::new();
        timestamp(&mut got, t);
        assert_eq!(got, want, "{secs}");
    }
}

#[test]
fn values_are_escaped_so_a_line_stays_one_json_line() {
    let rows = [
        ("/plain/path?q=1", "/plain/path?q=1"),
        ("a\"b", "a\\\"b"),
        ("back\\slash", "back\\\\slash"),
        ("new\nline\r\t", "new\\nline\\r\\t"),
        ("\u{1}\u{7f}", "\\u0001\\u007f"),
        ("ünïcode", "ünïcode"),
    ];
    for (value, want) in rows {
        let mut got = String::new();
        escape(&mut got, value);
        assert_eq!(got, want, "{value:?}");
        let parsed: String = serde_json::from_str(&format!("\"{got}\"")).unwrap();
        assert_eq!(parsed, value);
    }
}

fn sample(json: bool) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(1_796_601_600);
    let mut line = Line::at(t, json);
    line.str("direction", "outbound")
        .token("method", "GET")
        .str("path", "/a\"b\nc")
        .num("status", 200)
        .millis("duration_ms", Duration::from_micros(3_104))
        .token("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
    line.finish()
}

#[test]
fn a_json_line_has_the_shape_of_the_other_json_log_lines() {
    let line = sample(true);
    assert!(
        line.ends_with("}}\n") && line.matches('\n').count() == 1,
        "{line}"
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["timestamp"], "2026-12-07T00:00:00.000000Z");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "strait::access");
    let f = &v["fields"];
    assert_eq!(f["direction"], "outbound");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/a\"b\nc");
    assert_eq!(f["status"], 200);
    assert_eq!(f["duration_ms"], 3.104);
    assert_eq!(f["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn a_text_line_reads_like_the_other_text_log_lines() {
    assert_eq!(
        sample(false),
        "2026-12-07T00:00:00.000000Z  INFO strait::access: direction=\"outbound\" \
         method=GET path=\"/a\\\"b\\nc\" status=200 duration_ms=3.104 \
         trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"
    );
}

#[test]
fn lines_wait_for_a_flush() {
    append(b"one\n");
    append(b"two\n");
    let waiting = String::from_utf8(PENDING.lock().unwrap().clone()).unwrap();
    assert!(waiting.ends_with("one\ntwo\n"), "{waiting}");
    flush();
    assert!(PENDING.lock().unwrap().is_empty());
}

#[test]
fn durations_are_milliseconds_to_the_microsecond() {
    let rows = [
        (0, "0.000"),
        (5, "0.005"),
        (50, "0.050"),
        (1_050, "1.050"),
        (3_104, "3.104"),
        (12_345_678, "12345.678"),
    ];
    for (us, want) in rows {
        let mut line = Line::at(UNIX_EPOCH, false);
        line.millis("d", Duration::from_micros(us));
        let got = line.finish();
        assert!(got.ends_with(&format!(" d={want}\n")), "{us}: {got}");
    }
}
