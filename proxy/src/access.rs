//! The access log: one line per request, encoded straight into a buffer
//! and written to stderr in batches.
//!
//! What it is: [`Line`], an encoder of one access line in the process's
//! log format ([`set_format`]: JSON, the shape of the other log lines'
//! JSON, or text), and the batch: lines wait in a buffer and are written
//! when [`FLUSH_AT`] bytes are waiting, every [`FLUSH_EVERY`] from a small
//! thread, and when the process ends ([`flush`]). The line is switched by
//! the log filter like any other event (target `strait::access`, level
//! `info`; [`enabled`]).
//!
//! Why not a `tracing` event: formatting one through tracing-subscriber's
//! JSON layer (visitors, `serde_json`, a `String` per field) cost about a
//! tenth of a sidecar's CPU under load; this encoder writes the same
//! fields with no allocation but the line's. Why batches: an access line
//! written on its own costs a `write(2)` per request on the data path;
//! Envoy buffers its access logs the same way. So a line reaches stderr at
//! most [`FLUSH_EVERY`] after its request ended, possibly after warnings
//! logged later; a process killed with SIGKILL loses at most that much.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The access log's target (the log filter switches it by this name).
pub const TARGET: &str = "strait::access";
/// Bytes waiting that make the writer flush at once.
const FLUSH_AT: usize = 64 * 1024;
/// How long an access line waits at most.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

thread_local! {
    /// A line's buffer, kept for the thread's next line.
    static SCRATCH: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the lines' format: JSON (`true`) or text, as `--log-format`.
pub fn set_format(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// True when the log filter lets access lines through.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// One access line being encoded; [`Line::write`] queues it.
pub struct Line {
    buf: String,
    json: bool,
    first: bool,
}

impl Line {
    /// A line stamped now.
    pub fn new() -> Self {
        Self::at(SystemTime::now(), JSON.load(Ordering::Relaxed))
    }

    fn at(now: SystemTime, json: bool) -> Self {
        // The last line's buffer, when this thread wrote one: no
        // allocation per line.
        let mut buf = SCRATCH.take();
        buf.clear();
        buf.reserve(512);
        if json {
            buf.push_str("{\"timestamp\":\"");
            timestamp(&mut buf, now);
            buf.push_str("\",\"level\":\"INFO\",\"target\":\"");
            buf.push_str(TARGET);
            buf.push_str("\",\"fields\":{");
        } else {
            timestamp(&mut buf, now);
            buf.push_str("  INFO ");
            buf.push_str(TARGET);
            buf.push(':');
        }
        Self {
            buf,
            json,
            first: true,
        }
    }

    fn key(&mut self, key: &str) {
        if self.json {
            if !self.first {
                self.buf.push(',');
            }
            self.buf.push('"');
            self.buf.push_str(key);
            // Single ASCII pushes: no copy call for two bytes.
            self.buf.push('"');
            self.buf.push(':');
        } else {
            self.buf.push(' ');
            self.buf.push_str(key);
            self.buf.push('=');
        }
        self.first = false;
    }

    /// A string field (quoted and escaped).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.buf.push('"');
        escape(&mut self.buf, value);
        self.buf.push('"');
        self
    }

    /// A field whose value is a token (an HTTP method, a hex id): quoted
    /// in JSON, bare in text; escaped all the same.
    pub fn token(&mut self, key: &str, value: &str) -> &mut Self {
        if self.json {
            return self.str(key, value);
        }
        self.key(key);
        escape(&mut self.buf, value);
        self
    }

    /// A number field.
    pub fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// A duration field in milliseconds, to the microsecond.
    pub fn millis(&mut self, key: &str, value: Duration) -> &mut Self {
        self.key(key);
        let us = value.as_micros();
        let mut n = itoa::Buffer::new();
        self.buf.push_str(n.format(us / 1000));
        self.buf.push('.');
        let frac = us % 1000;
        self.buf
            .push_str(&"00"[..usize::from(frac < 100) + usize::from(frac < 10)]);
        self.buf.push_str(n.format(frac));
        self
    }

    /// The line as it will be written (with its newline).
    fn finish(mut self) -> String {
        if self.json {
            self.buf.push_str("}}");
        }
        self.buf.push('\n');
        self.buf
    }

    /// Queues the line (see the module docs).
    pub fn write(self) {
        let line = self.finish();
        append(line.as_bytes());
        SCRATCH.set(line);
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

/// Escapes `s` as JSON string content (also used for text: a line stays
/// one line whatever a request carried).
fn escape(buf: &mut String, s: &str) {
    let plain = |c: char| c >= ' ' && c != '"' && c != '\\' && c != '\u{7f}';
    // Bytes of multi-byte characters are all >= 0x80: plain. Checked
    // without short-circuits, so the scan is vectorised.
    let special = |b: u8| (b < b' ') | (b == b'"') | (b == b'\\') | (b == 0x7f);
    if !s.bytes().fold(false, |any, b| any | special(b)) {
        buf.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if !plain(c) => {
                let _ = write!(buf, "\\u{:04x}", u32::from(c));
            }
            c => buf.push(c),
        }
    }
}

/// RFC 3339 in UTC to the microsecond, as the other log lines' stamps.
/// Digits are put in place (no `fmt` machinery: this runs per request).
fn timestamp(buf: &mut String, now: SystemTime) {
    thread_local! {
        /// The last second written, and its text: only the microseconds
        /// change between most lines.
        static SECOND: std::cell::Cell<(u64, [u8; 27])> =
            const { std::cell::Cell::new((u64::MAX, *b"0000-00-00T00:00:00.000000Z")) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut out) = SECOND.get();
    if cached != secs {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        if y > 9999 {
            let _ = write!(
                buf,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
                since.subsec_micros()
            );
            return;
        }
        for (range, value) in [
            (0..4, y),
            (5..7, m),
            (8..10, d),
            (11..13, rem / 3600),
            (14..16, rem / 60 % 60),
            (17..19, rem % 60),
        ] {
            put_digits(&mut out[range], value);
        }
        SECOND.set((secs, out));
    }
    put_digits(&mut out[20..26], u64::from(since.subsec_micros()));
    // Only ASCII digits and separators.
    buf.push_str(std::str::from_utf8(&out).unwrap_or_default());
}

/// `value`'s last `out.len()` decimal digits, zero-padded, into `out`.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's
/// `civil_from_days`, for dates on and after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Starts, once, the thread that flushes waiting lines: on the first
/// line, so a process that writes none has no such thread. Its own OS
/// thread, never an async worker: sleeping is all it does.
#[allow(clippy::disallowed_methods)]
fn start_flusher() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("strait-access-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
    });
}

/// Queues whole lines (`bytes` ends with a newline).
fn append(bytes: &[u8]) {
    start_flusher();
    let full = {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        if pending.capacity() == 0 {
            // Room for a whole batch: no growing (and copying) on the way.
            pending.reserve(FLUSH_AT + 4096);
        }
        pending.extend_from_slice(bytes);
        (pending.len() >= FLUSH_AT).then(|| std::mem::take(&mut *pending))
    };
    if let Some(lines) = full {
        write_out(&lines);
    }
}

/// Writes every waiting line to stderr.
pub fn flush() {
    let lines = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    write_out(&lines);
}

/// Writes `lines` with the buffer's lock released, so other access lines
/// are not held up behind the `write(2)`.
fn write_out(lines: &[u8]) {
    if !lines.is_empty() {
        // stderr gone: nothing to do but drop the lines.
        let _ = io::stderr().write_all(lines);
    }
}

#[cfg(test)]
mod tests;
