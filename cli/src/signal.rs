//! Waiting for Ctrl-C or SIGTERM.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
