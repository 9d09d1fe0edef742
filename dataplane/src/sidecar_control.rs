//! A sidecar's control port: opened at startup when the files of its
//! Secret are there and usable; otherwise looked for again every
//! [`RETRY`] (the kubelet fills an optional Secret's volume once the
//! Secret is made), the drain paced locally meanwhile. Served until the
//! process stops. Never a reason to stop serving the application's
//! clients.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ringway_dataplane_api::sidecar;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

use crate::{config::ControlConfig, shared::Shared};

/// How often a sidecar without its control port looks for its files again.
pub const RETRY: Duration = Duration::from_secs(5);

/// The control port, bound, with its TLS setup.
pub(crate) type Opened = (TcpListener, ServerTlsConfig);

/// What a sidecar that does not serve its control port does instead.
const LOCAL: &str = "the drain is paced locally, not within the workload's shared budget";

/// Why the control port does not serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unavailable {
    /// A file is not there.
    #[error(
        "the files of the Secret {} are not there (not mounted, or the Secret is not made yet): {}",
        sidecar::CONTROL_SECRET,
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Missing(Vec<PathBuf>),
    /// A file cannot be read or used.
    #[error("{0}")]
    Files(#[source] crate::Error),
    /// The port is taken.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The control port's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the control port: its files there and usable, its port bound.
pub(crate) async fn open(control: &ControlConfig) -> Result<Opened, Unavailable> {
    let missing: Vec<PathBuf> = [
        &control.client_ca_file,
        &control.cert_file,
        &control.key_file,
    ]
    .into_iter()
    .filter(|f| !f.is_file())
    .cloned()
    .collect();
    if !missing.is_empty() {
        return Err(Unavailable::Missing(missing));
    }
    let tls = crate::control::checked_tls_config(control).map_err(Unavailable::Files)?;
    let listener =
        TcpListener::bind(control.address)
            .await
            .map_err(|source| Unavailable::Bind {
                address: control.address,
                source,
            })?;
    tracing::info!(
        address = %control.address,
        "control port: the operator paces the drain within the workload's budget"
    );
    Ok((listener, tls))
}

/// At startup: the control port if `control` (`--control-tls-dir`) is
/// given and it opens; else a warning that says why not and that the
/// drain is paced locally at `local_rate`.
pub(crate) async fn open_at_start(
    control: Option<&ControlConfig>,
    local_rate: u32,
) -> Option<Opened> {
    let Some(control) = control else {
        tracing::warn!(
            closes_per_second = local_rate,
            "no --control-tls-dir, so no control port: {LOCAL}"
        );
        return None;
    };
    match open(control).await {
        Ok(opened) => Some(opened),
        Err(e) => {
            tracing::warn!(
                reason = %e,
                closes_per_second = local_rate,
                retry_seconds = RETRY.as_secs(),
                "control port not served: {LOCAL}; looking for its files again meanwhile"
            );
            None
        }
    }
}

/// Serves `opened` until `stopped` resolves, saying so
/// ([`Shared::set_control_serving`]) until then (a port opened at startup
/// says so from the start).
pub(crate) async fn serve(opened: Opened, shared: Arc<Shared>, stopped: impl Future<Output = ()>) {
    let (listener, tls) = opened;
    shared.set_control_serving(true);
    crate::control::serve(listener, tls, Arc::clone(&shared), stopped).await;
    shared.set_control_serving(false);
}

/// Looks for the control port's files every [`RETRY`] until it opens,
/// then serves it ([`serve`]); ends when `stopped` resolves.
pub(crate) async fn serve_once_ready(
    control: ControlConfig,
    shared: Arc<Shared>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(RETRY) => {}
        }
        match open(&control).await {
            Ok(opened) => return serve(opened, shared, stopped).await,
            Err(e) => tracing::debug!(reason = %e, "control port still not served"),
        }
    }
}
