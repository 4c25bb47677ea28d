//! Where log lines go: stderr, as each line is written, except the access
//! log (target `strait::access`), whose lines are gathered in a buffer and
//! written in batches: when [`FLUSH_AT`] bytes are waiting, every
//! [`FLUSH_EVERY`] from a small thread, and when the process ends.
//!
//! Why: an access line written on its own costs a `write(2)` per request
//! on the data path; Envoy buffers its access logs the same way. So
//! an access line reaches stderr at most [`FLUSH_EVERY`] after its request
//! ended, possibly after warnings logged later; a process killed with
//! SIGKILL loses at most that much of it.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::EitherWriter;

/// The access log's target.
const ACCESS: &str = "strait::access";
/// Bytes waiting that make the writer flush at once.
const FLUSH_AT: usize = 64 * 1024;
/// How long an access line waits at most.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The writers of the log subscriber (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Writers;

/// Starts, once, the thread that flushes waiting access lines: on the
/// first access line, so a process that writes none (every command but a
/// sidecar with `access_log: true`) has no such thread. Its own OS thread,
/// never an async worker: sleeping is all it does.
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

/// Writes every waiting access line to stderr.
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

/// One access line's writer: appends to the buffer (the log subscriber
/// writes each line with one `write_all`, so lines stay whole).
pub struct Access;

impl Write for Access {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        start_flusher();
        let full = {
            let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
            pending.extend_from_slice(buf);
            (pending.len() >= FLUSH_AT).then(|| std::mem::take(&mut *pending))
        };
        if let Some(lines) = full {
            write_out(&lines);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Writers {
    type Writer = EitherWriter<Access, io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(io::stderr())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if meta.target() == ACCESS {
            EitherWriter::A(Access)
        } else {
            EitherWriter::B(io::stderr())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> String {
        String::from_utf8_lossy(&PENDING.lock().unwrap()).into_owned()
    }

    #[test]
    fn access_lines_wait_for_a_flush_and_other_lines_do_not() {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(Writers)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "strait::access", status = 200, "served");
            tracing::warn!(target: "strait::proxy", "not an access line");
        });
        let waiting = pending();
        assert!(waiting.contains("status=200"), "{waiting}");
        assert!(!waiting.contains("not an access line"), "{waiting}");
        assert_eq!(waiting.lines().count(), 1, "{waiting}");
        flush();
        assert!(pending().is_empty());
    }
}
