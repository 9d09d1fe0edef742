//! The operator's HTTP port: `/metrics` for Prometheus, `/healthz` for the
//! liveness probe, and `/readyz` with its checks for the readiness probe.
//! The routes and the readiness decision; [`ringway_http::serve`] serves
//! them.

use std::{fmt::Write as _, future::Future, sync::Arc};

use axum::{
    Router,
    http::{StatusCode, Uri, header},
    routing::get,
};
use tokio::{net::TcpListener, sync::watch};

use crate::metrics::Metrics;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// The content type of the exposition that `prometheus-client` writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` looks at. The owner of each `watch::Sender` sets it; the
/// last value stays readable if the sender is dropped.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// `true` once the controller's watches have synced: the
    /// `informer-sync` check.
    pub synced: watch::Receiver<bool>,
    /// `true` while this replica holds the leader Lease, and from the start
    /// when leader election is off: the `leader-election` check.
    pub leading: watch::Receiver<bool>,
}

impl Readiness {
    fn passes(&self, check: Check) -> bool {
        match check {
            Check::InformerSync => *self.synced.borrow(),
            Check::LeaderElection => *self.leading.borrow(),
        }
    }
}

/// One readiness check. `/readyz` asks them all, `/readyz/<name>` one
/// alone, named as kube-apiserver and the controller managers name theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    InformerSync,
    LeaderElection,
}

impl Check {
    const ALL: [Self; 2] = [Self::InformerSync, Self::LeaderElection];

    fn name(self) -> &'static str {
        match self {
            Self::InformerSync => "informer-sync",
            Self::LeaderElection => "leader-election",
        }
    }

    /// Why the check fails, for `?verbose`.
    fn failure(self) -> &'static str {
        match self {
            Self::InformerSync => "the controller's watches have not synced",
            Self::LeaderElection => "this replica does not hold the leader Lease",
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` resolves, then lets requests in flight finish for up to
/// [`ringway_http::SHUTDOWN_GRACE`].
///
/// `/healthz` answers 200 as long as the process serves. `/readyz` answers
/// 200 when every check passes and 503 otherwise; `/readyz/informer-sync`
/// asks whether the watches have synced, whoever holds the Lease, and
/// `/readyz/leader-election` whether this replica may act. `?verbose` lists
/// each check with its result.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    ringway_http::serve(
        listener,
        routes(metrics, readiness),
        MAX_CONNECTIONS,
        shutdown,
    )
    .await;
}

/// `/healthz`, `/metrics`, `/readyz` and `/readyz/<check>` for each check.
fn routes(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    let readyz = |checks: &'static [Check]| {
        let readiness = readiness.clone();
        get(move |uri: Uri| async move { answer(&readiness, checks, &uri) })
    };
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                    metrics.render(),
                )
            }),
        )
        .route("/readyz", readyz(&Check::ALL));
    for check in &Check::ALL {
        let path = format!("/readyz/{}", check.name());
        router = router.route(&path, readyz(std::slice::from_ref(check)));
    }
    router
}

/// The answer to a readiness request over `checks`.
fn answer(readiness: &Readiness, checks: &[Check], uri: &Uri) -> (StatusCode, String) {
    let results: Vec<_> = checks.iter().map(|&c| (c, readiness.passes(c))).collect();
    report(&results, verbose(uri))
}

/// `verbose` among the query parameters, with or without a value.
fn verbose(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|p| p.split_once('=').map_or(p, |(key, _)| key) == "verbose")
    })
}

/// 200 `ready` when every check passed, 503 `not ready` otherwise.
/// Verbose, a line per check, `[+]informer-sync ok` or
/// `[-]leader-election failed: why`, then `readyz check passed` (or
/// `failed`), as Kubernetes components write it.
fn report(results: &[(Check, bool)], verbose: bool) -> (StatusCode, String) {
    let ready = results.iter().all(|&(_, passed)| passed);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match (verbose, ready) {
        (false, true) => "ready\n".to_owned(),
        (false, false) => "not ready\n".to_owned(),
        (true, _) => {
            let mut body = String::new();
            for &(check, passed) in results {
                let _ = if passed {
                    writeln!(body, "[+]{} ok", check.name())
                } else {
                    writeln!(body, "[-]{} failed: {}", check.name(), check.failure())
                };
            }
            let verdict = if ready { "passed" } else { "failed" };
            let _ = writeln!(body, "readyz check {verdict}");
            body
        }
    };
    (status, body)
}

#[cfg(test)]
mod tests;
