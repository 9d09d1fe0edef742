//! The admin port: `/healthz`, `/readyz`, `/metrics` for anyone who can
//! reach it, and `POST /drain` for the pod itself only (a loopback peer).
//! The routes; [`ringway_http::serve`] serves them.

use std::{future::Future, net::IpAddr, sync::Arc};

use axum::{
    Extension, Router,
    extract::State,
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use ringway_http::Peer;
use tokio::net::TcpListener;

use crate::shared::Shared;

/// Admin connections served at once; more wait in the listen backlog.
pub(crate) const CONCURRENT_REQUESTS: usize = 32;

/// The content type of the Prometheus text exposition.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin port until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    ringway_http::serve(listener, routes(shared), CONCURRENT_REQUESTS, shutdown).await;
}

/// The admin port's routes; `/drain` takes every method, to refuse a
/// peer off the pod with 403 whatever it asks.
fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/drain", any(drain))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        shared.metrics.render(),
    )
}

/// `/drain`, whatever the method: refused (403) off the pod, 405 unless
/// `POST`; otherwise stops accepting and drains every connection, then the
/// process exits (see `Server::run`). With `wait=true` (or `wait=1`) among
/// the query parameters, answers once every connection has closed.
async fn drain(
    State(shared): State<Arc<Shared>>,
    Extension(Peer(peer)): Extension<Peer>,
    method: Method,
    uri: Uri,
) -> Response {
    if !may_drain(peer.ip()) {
        tracing::warn!(%peer, "refused a drain from off the pod");
        return (StatusCode::FORBIDDEN, DRAIN_REFUSED).into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "method not allowed\n",
        )
            .into_response();
    }
    shared.request_drain();
    if wants_wait(uri.query().unwrap_or("")) {
        shared.wait_drained().await;
        "drained\n".into_response()
    } else {
        format!("draining {} connections\n", shared.registry.len()).into_response()
    }
}

/// The body of the 403 that a drain from anywhere but the pod itself gets.
const DRAIN_REFUSED: &str = "/drain is accepted only from the pod itself (a loopback address); \
     to drain from elsewhere, stop the process (SIGTERM drains it) or use the control port's Drain RPC\n";

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

/// `wait=true` (or `wait=1`) among the query parameters: answer once the
/// drain has finished.
fn wants_wait(query: &str) -> bool {
    query.split('&').any(|p| p == "wait=true" || p == "wait=1")
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
