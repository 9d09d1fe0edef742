//! What the backend binaries (`ringway-echo`, `ringway-chat`) share as
//! processes: the listening socket, the one line that tells a script which
//! port it got, and the shutdown signal.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

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
