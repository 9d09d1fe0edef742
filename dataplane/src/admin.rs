//! The admin port: `/healthz`, `/readyz`, `/metrics` for anyone who can
//! reach it, and `/drain` for the pod itself only (a loopback peer, or in
//! a sidecar the application's preStop hook, which carries the drain
//! token). The routes; [`ringway_http::serve`] serves them.

use std::{future::Future, net::IpAddr, sync::Arc};

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use ringway_dataplane_api::sidecar;
use ringway_http::Peer;
use tokio::net::TcpListener;

use crate::{shared::Shared, sidecar::DrainToken};

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

/// `/drain`, whatever the method: refused (403, counted) to a peer that
/// may not drain; then as [`stop_the_process`] does, or in a sidecar as
/// [`drain_beside_the_application`] does.
async fn drain(
    State(shared): State<Arc<Shared>>,
    Extension(Peer(peer)): Extension<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let token = shared.sidecar.as_ref().and_then(|s| s.token.as_ref());
    let offered = headers.get(sidecar::DRAIN_TOKEN_HEADER);
    if !may_drain(peer.ip(), token, offered.map(HeaderValue::as_bytes)) {
        shared.metrics.drain_refusals.inc();
        tracing::warn!(%peer, token_offered = offered.is_some(), "refused a drain from off the pod");
        let refused = match shared.sidecar {
            None => DRAIN_REFUSED.to_owned(),
            Some(_) => sidecar_drain_refused(),
        };
        return (StatusCode::FORBIDDEN, refused).into_response();
    }
    let wait = wants_wait(uri.query().unwrap_or(""));
    match shared.sidecar {
        None => stop_the_process(&shared, &method, wait).await,
        Some(_) => drain_beside_the_application(shared, &method, wait).await,
    }
}

/// Standalone and shards: 405 unless `POST`; otherwise stops accepting and
/// drains every connection, then the process exits (see `Server::run`).
/// With `wait`, answers once every connection has closed.
async fn stop_the_process(shared: &Shared, method: &Method, wait: bool) -> Response {
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    shared.request_drain();
    if wait {
        shared.wait_drained().await;
        "drained\n".into_response()
    } else {
        format!("draining {} connections\n", shared.registry.len()).into_response()
    }
}

/// Sidecar: `GET` (the preStop hook's) or `POST`, else 405; drains every
/// client in place and keeps the process up, paced by the operator when
/// its control port serves, else at its own rate
/// ([`Shared::drain_on_prestop`]).
/// With `wait`, answers once the clients are gone (or the drain's time is
/// up, saying how many were cut), so that the application, whose preStop
/// hook this is, gets its SIGTERM only then.
async fn drain_beside_the_application(
    shared: Arc<Shared>,
    method: &Method,
    wait: bool,
) -> Response {
    if method != Method::GET && method != Method::POST {
        return method_not_allowed("GET, POST");
    }
    let connections = shared.registry.len();
    // A task of its own: the drain runs to its end even if the hook's
    // request goes away.
    let drain = tokio::spawn(async move {
        let Some(sidecar) = &shared.sidecar else {
            return 0;
        };
        shared.drain_on_prestop(sidecar).await
    });
    if !wait {
        return format!("draining {connections} connections\n").into_response();
    }
    match drain.await {
        Ok(0) => "drained\n".into_response(),
        Ok(cut) => format!("drain time is up; connections cut: {cut}\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the drain task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the drain failed\n").into_response()
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, allow)],
        "method not allowed\n",
    )
        .into_response()
}

/// The body of the 403 that a drain from anywhere but the pod itself gets.
const DRAIN_REFUSED: &str = "/drain is accepted only from the pod itself (a loopback address); \
     to drain from elsewhere, stop the process (SIGTERM drains it) or use the control port's Drain RPC\n";

/// [`DRAIN_REFUSED`] for a sidecar.
fn sidecar_drain_refused() -> String {
    format!(
        "/drain is accepted only from the pod itself (a loopback address) or with the pod's \
         drain token in the {} header (the application's preStop hook)\n",
        sidecar::DRAIN_TOKEN_HEADER
    )
}

/// Whether a request from `peer` offering the drain token `offered` may
/// drain this process: from the same network namespace, that is from a
/// loopback address, or with the token, when this process has one (a
/// sidecar's: the kubelet sends the application's preStop hook from the
/// node, not from the pod's loopback). Anyone who can reach the admin
/// port may read health and metrics; stopping every connection of the pod
/// must take more than that. A loopback source cannot arrive from the
/// network: Linux drops packets with a 127.0.0.0/8 or ::1 source on every
/// interface but `lo` (martians; `route_localnet`, which would allow them,
/// is off in a pod's own network namespace), so another pod cannot spoof
/// it. What shares the namespace is trusted: the pod's other containers,
/// and a mesh sidecar that forwards inbound traffic from loopback, whose
/// port 9090 must therefore not be intercepted (docs/dataplane.md). An
/// IPv4 peer on a dual-stack socket shows as `::ffff:127.x.y.z`, which is
/// loopback too.
fn may_drain(peer: IpAddr, token: Option<&DrainToken>, offered: Option<&[u8]>) -> bool {
    peer.to_canonical().is_loopback()
        || token
            .zip(offered)
            .is_some_and(|(token, offered)| token.matches(offered))
}

/// `wait=true` (or `wait=1`) among the query parameters: answer once the
/// drain has finished.
fn wants_wait(query: &str) -> bool {
    query.split('&').any(|p| p == "wait=true" || p == "wait=1")
}

#[cfg(test)]
mod tests;
