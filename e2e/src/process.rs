//! What the backend binaries (`ringway-echo`, `ringway-chat`) share as
//! processes: logs, the runtime, the listening socket, the one line that
//! tells a script which port it got, and the shutdown signal.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::EnvFilter;

/// How long a backend waits before accepting again after an accept error
/// (most often EMFILE: every file descriptor is in use).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A multi-threaded runtime with `workers` threads (default: one per CPU
/// this process may run on).
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        runtime.worker_threads(workers.max(1));
    }
    runtime.enable_all().build()
}

/// Binds `address` with `SO_REUSEADDR` (a restarted backend must not wait
/// for its old connections' TIME_WAIT) and listens with `backlog`. Then
/// prints `<program> <id> listening on <address>` on stdout, so that a
/// script or test that asked for port 0 learns the port; logs go to stderr.
pub fn listen(
    program: &str,
    id: &str,
    address: SocketAddr,
    backlog: u32,
) -> anyhow::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(address)
        .with_context(|| format!("binding {address}"))?;
    let listener = socket.listen(backlog)?;
    println!("{program} {id} listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
