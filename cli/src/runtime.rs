//! The tokio runtime of a data-plane role (sidecar, gateway).

/// A runtime with `threads` workers (default: the CPUs this process may
/// run on). With one, it is a single-threaded runtime: a wake-up is then a
/// local queue push, with no cross-thread handoff, which is what a sidecar
/// pinned to one core wants (linkerd2-proxy does the same).
pub fn data_plane(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let n = threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    let rt = if n == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(idle::on_park)
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .on_thread_park(idle::on_park)
            .build()?
    };
    Ok(rt)
}

/// Gives freed memory back to the OS when a runtime thread goes idle.
///
/// mimalloc returns freed pages lazily, from later allocator calls on the
/// same thread. A sidecar that loads a large snapshot and then idles would
/// keep the memory its parse freed (29.6 MiB with 1,000 services, against
/// 19.5-20 MiB with this trim).
/// So a thread that parks collects its heap, at most once a second.
mod idle {
    #[cfg(feature = "mimalloc")]
    pub fn on_park() {
        use std::cell::Cell;
        use std::time::{Duration, Instant};
        thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
        let now = Instant::now();
        let due = LAST.with(|l| match l.get() {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
            _ => {
                l.set(Some(now));
                true
            }
        });
        if due {
            collect();
        }
    }

    /// Trims the calling thread's heap now (after start-up, whose parsing
    /// ran on the main thread, which is not a runtime worker).
    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    pub fn collect() {
        // SAFETY: mi_collect only walks and trims this thread's heap (and
        // abandoned segments); it takes no pointer from us.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }

    #[cfg(not(feature = "mimalloc"))]
    pub fn on_park() {}

    #[cfg(not(feature = "mimalloc"))]
    pub fn collect() {}
}

pub use idle::collect as release_freed_memory;
