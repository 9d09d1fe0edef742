//! The control port: the `ringway.control.v1` gRPC service over mutual
//! TLS. Only a client whose certificate chains to the configured CA (and
//! is meant for client authentication) gets to call anything; every call
//! has a deadline.
//!
//! Applying a snapshot: refuse an older epoch, accept the running one as a
//! no-op, else build the new state, swap it in whole (readers never lock)
//! and drain, paced, exactly the connections whose seat moved.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use ringway_dataplane_api::v1::{
    self,
    control_server::{Control, ControlServer},
};
use tokio::net::TcpListener;
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, ServerTlsConfig},
};

use crate::{
    Error,
    config::ControlConfig,
    registry::{ConnControl, DrainCause, Role},
    routing::must_move as seat_moved,
    server::Shared,
    snapshot::Running,
};

/// Longest any control call may run on the pod, whatever the client's
/// deadline says.
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);

/// Time a client has to finish its TLS handshake.
const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Reads the control port's certificate, key and client CA.
pub(crate) fn tls_config(config: &ControlConfig) -> Result<ServerTlsConfig, Error> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::Tls(format!("shard.control.{what} {}: {e}", path.display())))
    };
    let cert = read(&config.cert_file, "certFile")?;
    let key = read(&config.key_file, "keyFile")?;
    let ca = read(&config.client_ca_file, "clientCaFile")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .timeout(TLS_HANDSHAKE_DEADLINE))
}

/// Serves the control service on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: ServerTlsConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let address = listener.local_addr().ok();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .map(|b| {
            b.timeout(RPC_DEADLINE)
                .concurrency_limit_per_connection(16)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        });
    let mut server = match server {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "control port: TLS setup failed; no snapshot can be applied");
            return;
        }
    };
    tracing::info!(address = ?address, "control port serving (mutual TLS)");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = server
        .add_service(ControlServer::new(Service { shared }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "control port failed");
    }
}

/// Whether `conn`, placed on `old`, must move now that `new` runs.
pub(crate) fn must_move(conn: &ConnControl, old: &Running, new: &Running) -> bool {
    match &conn.role {
        Role::Edge(_) => false,
        Role::Owner(actual) => seat_moved(
            old.routing.seat(&conn.route, conn.key_hash).as_ref(),
            new.routing.seat(&conn.route, conn.key_hash).as_ref(),
            actual,
        ),
    }
}

/// What applying a snapshot did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The pod already ran this epoch.
    Unchanged,
    /// The snapshot runs now; this many connections are draining.
    Changed {
        /// Connections whose seat moved.
        draining: usize,
    },
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Older than the running epoch.
    #[error("snapshot epoch {offered} is older than the running epoch {running}")]
    Stale {
        /// The epoch offered.
        offered: u64,
        /// The epoch the pod runs.
        running: u64,
    },
    /// It does not make sense.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// This pod is standalone.
    #[error("this pod runs standalone from its config file and takes no snapshot")]
    Standalone,
}

impl Shared {
    /// Applies a snapshot (see the module docs).
    pub async fn apply(&self, snapshot: &v1::Snapshot) -> Result<Applied, Refused> {
        if self.shard.is_none() {
            return Err(Refused::Standalone);
        }
        let _one_at_a_time = self.apply_lock.lock().await;
        let old = self.running.load_full();
        let running = old.routing.epoch;
        if snapshot.epoch < running {
            self.metrics.snapshot("stale");
            return Err(Refused::Stale {
                offered: snapshot.epoch,
                running,
            });
        }
        if snapshot.epoch == running {
            self.metrics.snapshot("unchanged");
            return Ok(Applied::Unchanged);
        }
        let new = Running::from_snapshot(snapshot, &self.config).map_err(|e| {
            self.metrics.snapshot("invalid");
            Refused::Invalid(e)
        })?;
        let new = Arc::new(new);
        self.running.store(Arc::clone(&new));
        self.metrics.snapshot("applied");
        self.metrics
            .epoch
            .set(i64::try_from(new.routing.epoch).unwrap_or(i64::MAX));
        let moved: Vec<Arc<ConnControl>> = self
            .registry
            .snapshot()
            .into_iter()
            .filter(|c| must_move(c, &old, &new))
            .collect();
        let draining = moved.len();
        tracing::info!(
            epoch = new.routing.epoch,
            gateway = %new.gateway,
            canary_basis_points = new.routing.canary_basis_points(),
            draining,
            retiring = new.retiring,
            "snapshot applied"
        );
        self.drainer
            .submit(
                moved,
                DrainCause::Rebalance,
                new.drain.window,
                new.drain.max_closes_per_second,
            )
            .await;
        Ok(Applied::Changed { draining })
    }

    /// The pod's epoch, readiness and live counts.
    pub fn status(&self) -> v1::PodStatus {
        let running = self.running.load();
        let mut by_seat: BTreeMap<(i32, Arc<str>), u64> = BTreeMap::new();
        let (mut relayed, mut draining) = (0, 0);
        for conn in self.registry.snapshot() {
            if conn.drain_requested().is_some() {
                draining += 1;
            }
            match &conn.role {
                Role::Owner(seat) => {
                    let version = match seat.version {
                        crate::routing::Version::Stable => v1::Version::Stable,
                        crate::routing::Version::Canary => v1::Version::Canary,
                    };
                    *by_seat
                        .entry((version as i32, Arc::clone(&conn.route)))
                        .or_default() += 1;
                }
                Role::Edge(_) => relayed += 1,
            }
        }
        v1::PodStatus {
            shard_id: self.shard_id().map(|s| s.to_string()).unwrap_or_default(),
            epoch: running.routing.epoch,
            ready: self.is_ready(),
            connections: by_seat
                .into_iter()
                .map(|((version, route), count)| v1::ConnectionCount {
                    version,
                    route: route.to_string(),
                    count,
                })
                .collect(),
            draining: draining + self.drainer.pending() as u64,
            handshake_failures: self
                .metrics
                .refusals()
                .into_iter()
                .map(|(reason, count)| v1::ReasonCount {
                    reason: reason.to_owned(),
                    count,
                })
                .collect(),
            relayed,
        }
    }

    /// Drains the whole pod (1001), paced, and stops taking hand-offs; the
    /// pod stays up, not ready, until it is stopped.
    pub async fn drain_pod(&self, window: Option<Duration>, rate: Option<u32>) -> usize {
        self.start_draining(DrainCause::Api);
        self.peer_closed.notify_one();
        let policy = self.running.load().drain;
        let victims = self.registry.snapshot();
        let count = victims.len();
        tracing::info!(connections = count, "draining the pod on request");
        self.drainer
            .submit(
                victims,
                DrainCause::Api,
                window.unwrap_or(policy.window),
                rate.unwrap_or(policy.max_closes_per_second),
            )
            .await;
        count
    }
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Control for Service {
    async fn apply_snapshot(
        &self,
        request: Request<v1::ApplySnapshotRequest>,
    ) -> Result<Response<v1::ApplySnapshotResponse>, Status> {
        let snapshot = request
            .into_inner()
            .snapshot
            .ok_or_else(|| Status::invalid_argument("snapshot: missing"))?;
        match self.shared.apply(&snapshot).await {
            Ok(applied) => Ok(Response::new(v1::ApplySnapshotResponse {
                epoch: self.shared.running.load().routing.epoch,
                changed: applied != Applied::Unchanged,
                draining: match applied {
                    Applied::Unchanged => 0,
                    Applied::Changed { draining } => draining as u64,
                },
            })),
            Err(e @ (Refused::Stale { .. } | Refused::Standalone)) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ Refused::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
        }
    }

    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::PodStatus>, Status> {
        Ok(Response::new(self.shared.status()))
    }

    async fn drain(
        &self,
        request: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::DrainResponse>, Status> {
        let r = request.into_inner();
        let window = (r.window_ms > 0).then(|| Duration::from_millis(u64::from(r.window_ms)));
        let rate = (r.max_closes_per_second > 0).then_some(r.max_closes_per_second);
        let draining = self.shared.drain_pod(window, rate).await as u64;
        Ok(Response::new(v1::DrainResponse { draining }))
    }
}
