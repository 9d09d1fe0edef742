//! The admin port: `/healthz`, `/readyz`, `/metrics` for anyone who can
//! reach it, and `POST /drain` for the pod itself only (a loopback peer).
//! A small HTTP/1.1 server, one request per connection.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use crate::{handshake::error_response, shared::Shared};

const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin requests served at once; more wait in the listen backlog. Each
/// holds a 4 KiB buffer for at most [`READ_TIMEOUT`] reading, then writes
/// one answer.
pub(crate) const CONCURRENT_REQUESTS: usize = 32;

/// Serves the admin port until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, peer, &shared).await {
                tracing::debug!(error = %e, "admin request failed");
            }
            drop(slot);
        });
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let (method, path) = loop {
        let n = match timeout(READ_TIMEOUT, stream.read(&mut buf[len..])).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                stream
                    .write_all(&error_response(400, "bad request", &[]))
                    .await?;
                return Ok(());
            }
        }
    };
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    let response = match (method.as_str(), route) {
        ("GET", "/healthz") => ok("text/plain", "ok\n".into()),
        ("GET", "/readyz") if shared.is_ready() => ok("text/plain", "ready\n".into()),
        ("GET", "/readyz") => error_response(503, "not ready", &[]),
        ("GET", "/metrics") => ok(
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        (_, "/drain") if !may_drain(peer.ip()) => {
            tracing::warn!(%peer, "refused a drain from off the pod");
            error_response(403, DRAIN_REFUSED, &[])
        }
        ("POST", "/drain") => drain(shared, wants_wait(query)).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/drain") => {
            error_response(405, "method not allowed", &[])
        }
        _ => error_response(404, "not found", &[]),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The body of the 403 that a drain from anywhere but the pod itself gets.
const DRAIN_REFUSED: &str = "/drain is accepted only from the pod itself (a loopback address); \
     to drain from elsewhere, stop the process (SIGTERM drains it) or use the control port's Drain RPC";

/// Whether a request from `peer` may drain this process: only from the
/// same network namespace, that is from a loopback address. Anyone who can
/// reach the admin port may read health and metrics; stopping every
/// connection of the pod must take more than that. A loopback source
/// cannot arrive from the network: Linux drops packets with a 127.0.0.0/8
/// or ::1 source on every interface but `lo` (martians; `route_localnet`,
/// which would allow them, is off in a pod's own network namespace), so
/// another pod cannot spoof it. What shares the namespace is trusted: the
/// pod's other containers, and a mesh sidecar that forwards inbound
/// traffic from loopback, whose port 9090 must therefore not be
/// intercepted (docs/dataplane.md). An IPv4 peer on a dual-stack socket
/// shows as `::ffff:127.x.y.z`, which is loopback too.
fn may_drain(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Stops accepting and drains every connection, then the process exits
/// (see `Server::run`); with `wait`, answers once every connection has
/// closed.
async fn drain(shared: &Shared, wait: bool) -> Vec<u8> {
    shared.request_drain();
    if wait {
        shared.wait_drained().await;
        ok("text/plain", "drained\n".into())
    } else {
        ok(
            "text/plain",
            format!("draining {} connections\n", shared.registry.len()),
        )
    }
}

/// `wait=true` (or `wait=1`) among the query parameters: answer once the
/// drain has finished.
fn wants_wait(query: &str) -> bool {
    query.split('&').any(|p| p == "wait=true" || p == "wait=1")
}

fn ok(content_type: &str, body: String) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::may_drain;

    #[test]
    fn only_a_loopback_peer_may_drain() {
        for peer in ["127.0.0.1", "127.45.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(may_drain(peer.parse().expect("an address")), "{peer}");
        }
        for peer in [
            "10.244.1.7",
            "192.0.2.2",
            "0.0.0.0",
            "::",
            "fd00::2",
            "fe80::1",
            "::ffff:10.244.1.7",
            // IPv4-compatible (deprecated), not mapped: not loopback.
            "::127.0.0.1",
        ] {
            assert!(!may_drain(peer.parse().expect("an address")), "{peer}");
        }
    }
}
