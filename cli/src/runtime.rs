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
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?
    };
    Ok(rt)
}
