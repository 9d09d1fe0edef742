//! The control port: the `ringway.control.v1` gRPC service over mutual
//! TLS, a thin adapter onto [`Shared`]'s `apply`, `status` and
//! `drain_pod` (on a sidecar, `drain_paced_by_operator`; it takes no
//! snapshot). Only a client whose certificate chains to the configured
//! CA (and is meant for client authentication) gets to call anything;
//! every call has a deadline.

use std::{future::Future, sync::Arc, time::Duration};

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
    Error, TlsError,
    config::ControlConfig,
    shared::{Applied, Refused, Shared},
};

/// Longest any control call may run on the pod, whatever the client's
/// deadline says.
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);

/// Time a client has to finish its TLS handshake.
const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Reads the control port's certificate, key and client CA.
pub(crate) fn tls_config(config: &ControlConfig) -> Result<ServerTlsConfig, Error> {
    let read = |path: &std::path::Path, key| {
        std::fs::read(path).map_err(|source| TlsError::ControlFile {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let cert = read(&config.cert_file, "certFile")?;
    let key = read(&config.key_file, "keyFile")?;
    let ca = read(&config.client_ca_file, "clientCaFile")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .timeout(TLS_HANDSHAKE_DEADLINE))
}

/// [`tls_config`], checked as the server will use it: an error says what
/// cannot be read or used (a sidecar then paces its drain locally).
pub(crate) fn checked_tls_config(config: &ControlConfig) -> Result<ServerTlsConfig, Error> {
    let tls = tls_config(config)?;
    server(tls.clone()).map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        TlsError::ControlSetup(reason)
    })?;
    Ok(tls)
}

/// The control server over `tls`, with its limits.
fn server(tls: ServerTlsConfig) -> Result<tonic::transport::Server, tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map(|b| {
            b.timeout(RPC_DEADLINE)
                .concurrency_limit_per_connection(16)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        })
}

/// Serves the control service on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: ServerTlsConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let address = listener.local_addr().ok();
    let mut server = match server(tls) {
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

struct Service {
    shared: Arc<Shared>,
}

impl Service {
    /// `Drain` on a sidecar: starts its drain in place if need be and
    /// paces it ([`Shared::drain_paced_by_operator`]); its window is its
    /// own, fitted to the pod's grace period.
    async fn pace_the_sidecar(
        &self,
        r: &v1::DrainRequest,
    ) -> Result<Response<v1::DrainResponse>, Status> {
        if r.window_ms > 0 {
            tracing::warn!(
                window_ms = r.window_ms,
                "refused a Drain with a window: a sidecar's window is its own"
            );
            return Err(Status::invalid_argument(SIDECAR_WINDOW));
        }
        let rate = (r.max_closes_per_second > 0).then_some(r.max_closes_per_second);
        let open = self.shared.drain_paced_by_operator(rate).await;
        Ok(Response::new(v1::DrainResponse {
            draining: open as u64,
        }))
    }
}

/// Why a sidecar refuses a `Drain` with a window.
const SIDECAR_WINDOW: &str = "window_ms: a sidecar's drain window is fitted to its pod's grace \
     period (--drain-window-seconds, --termination-grace-seconds) and cannot be set by Drain; \
     send 0 and pace it with max_closes_per_second";

#[tonic::async_trait]
impl Control for Service {
    async fn apply_snapshot(
        &self,
        request: Request<v1::ApplySnapshotRequest>,
    ) -> Result<Response<v1::ApplySnapshotResponse>, Status> {
        if self.shared.sidecar.is_some() {
            tracing::warn!("refused a snapshot: a sidecar takes none");
            return Err(Status::failed_precondition(Refused::Sidecar.to_string()));
        }
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
            Err(e @ (Refused::Stale { .. } | Refused::Standalone | Refused::Sidecar)) => {
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
        if self.shared.sidecar.is_some() {
            return self.pace_the_sidecar(&r).await;
        }
        let window = (r.window_ms > 0).then(|| Duration::from_millis(u64::from(r.window_ms)));
        let rate = (r.max_closes_per_second > 0).then_some(r.max_closes_per_second);
        let draining = self.shared.drain_pod(window, rate).await as u64;
        Ok(Response::new(v1::DrainResponse { draining }))
    }
}
