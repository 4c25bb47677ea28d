//! Traffic for tests of live meshes: a tiny HTTP/1.1 app behind a sidecar,
//! and a load that sends a request through a client sidecar every 20 ms
//! and records which ones failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pause;

/// A tiny HTTP/1.1 app: answers every request `200 west`, keep-alive.
pub fn app(addr: &str) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    // Read one head (GETs carry no body).
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwest")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

/// One `GET` of `echo.demo` through a client sidecar's explicit proxy port
/// on a kept-alive connection (opened when `conn` is empty): the status
/// line and the body. On an error the caller drops the connection.
pub fn get_echo(
    conn: &mut Option<BufReader<TcpStream>>,
    proxy: SocketAddr,
) -> std::io::Result<(String, Vec<u8>)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&proxy, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().expect("just set");
    r.get_mut().write_all(
        b"GET http://echo.demo.svc.clusterset.local:8080/ HTTP/1.1\r\nhost: echo.demo.svc.clusterset.local:8080\r\n\r\n",
    )?;
    let (mut status, mut len, mut line) = (String::new(), 0usize, String::new());
    r.read_line(&mut status)?;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status.trim_end().to_owned(), body))
}

/// One request through a client sidecar: which cluster answered (the
/// app's body), or `None` for a failure, which is printed.
pub fn answer(conn: &mut Option<BufReader<TcpStream>>, proxy: SocketAddr) -> Option<String> {
    outcome(conn, proxy).ok()
}

/// One request through a client sidecar: the app's body, or the failure
/// (status line and body, or the I/O error), which is printed.
pub fn outcome(
    conn: &mut Option<BufReader<TcpStream>>,
    proxy: SocketAddr,
) -> Result<String, String> {
    let got = match get_echo(conn, proxy) {
        Ok((status, body)) if status.starts_with("HTTP/1.1 200") => {
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Ok((status, body)) => Err(format!(
            "{status} {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &got {
        eprintln!("failed: {e}");
        *conn = None;
    }
    got
}

/// One answer: when, and which cluster served it (`None`: failed).
pub type Sample = (Instant, Option<String>);

/// Sends requests at a steady pace and records who answered.
/// One answer or why it failed, and when.
pub type Outcome = (Instant, Result<String, String>);

pub struct Load {
    samples: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// A request every 20 ms through `proxy`.
    pub fn start(proxy: SocketAddr) -> Self {
        Self::every(proxy, 20)
    }

    /// A request every `ms` milliseconds through `proxy`.
    pub fn every(proxy: SocketAddr, ms: u64) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn = None;
            while !st.load(Ordering::Relaxed) {
                let got = outcome(&mut conn, proxy);
                s.lock().unwrap().push((Instant::now(), got));
                pause(ms);
            }
        });
        Self { samples, stop }
    }

    /// Requests sent in `[from, to]`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.outcomes(from, to)
            .into_iter()
            .map(|(at, r)| (at, r.ok()))
            .collect()
    }

    /// Requests sent in `[from, to]`: the answer, or why it failed.
    pub fn outcomes(&self, from: Instant, to: Instant) -> Vec<Outcome> {
        let v = self.samples.lock().unwrap();
        v.iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .cloned()
            .collect()
    }

    /// Failed requests among those sent in `[from, to]`, and how many were sent.
    pub fn failed(&self, from: Instant, to: Instant) -> (usize, usize) {
        let s = self.between(from, to);
        (s.iter().filter(|(_, c)| c.is_none()).count(), s.len())
    }

    /// Since `t`: (when, answered `200 west`).
    pub fn since(&self, t: Instant) -> Vec<(Instant, bool)> {
        self.between(t, Instant::now())
            .into_iter()
            .map(|(at, c)| (at, c.as_deref() == Some("west")))
            .collect()
    }

    /// How long after `t` traffic settled on `cluster`: the time of the
    /// first answer from it after which every answer until now came from
    /// it too (at least 20 in a row).
    pub fn settled_on(&self, t: Instant, cluster: &str, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit + Duration::from_secs(5);
        loop {
            pause(200);
            let s = self.between(t, Instant::now());
            let last_other = s.iter().rposition(|(_, c)| c.as_deref() != Some(cluster));
            let first_after = match last_other {
                Some(i) => s.get(i + 1),
                None => s.first(),
            };
            if let Some((at, _)) = first_after {
                let tail = s.len() - last_other.map_or(0, |i| i + 1);
                if tail >= 20 {
                    return *at - t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "traffic did not settle on {cluster}; last answers: {:?}",
                s.iter().rev().take(10).map(|(_, c)| c).collect::<Vec<_>>()
            );
        }
    }

    /// Waits until a request sent after `t` succeeds; returns how long
    /// after `t` that was.
    pub fn recovered_after(&self, t: Instant, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit + Duration::from_secs(10);
        loop {
            if let Some((at, _)) = self.since(t).iter().find(|(_, ok)| *ok) {
                return *at - t;
            }
            assert!(Instant::now() < deadline, "traffic never recovered");
            pause(50);
        }
    }

    /// Asserts that no request in `[t, now]` failed (and some were sent).
    pub fn no_failures_since(&self, t: Instant, what: &str) {
        let s = self.since(t);
        let failed = s.iter().filter(|(_, ok)| !ok).count();
        assert!(s.len() > 20, "{what}: only {} requests sent", s.len());
        assert_eq!(failed, 0, "{what}: {failed} of {} requests failed", s.len());
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
