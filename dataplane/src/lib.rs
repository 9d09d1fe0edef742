//! The Ringway data plane: holds client WebSockets, routes each one by a
//! consistent hash of a key to a backend, relays frames without rebuilding
//! them, and drains connections gracefully.
//!
//! [`Server::bind`] (or [`Server::bind_sidecar`], beside an application in
//! its pod: [`sidecar`]) then [`Server::run`] with a shutdown future; the
//! binary wires that future to SIGTERM (graceful) and SIGINT (fast).

mod admin;
pub mod config;
mod connection;
pub mod control;
pub mod drain;
mod error;
pub mod frame;
pub mod handoff;
pub mod handshake;
mod io;
mod listener;
pub mod memory;
pub mod metrics;
pub mod open_files;
pub mod registry;
pub mod relay;
pub mod routing;
pub mod running;
mod secret;
pub mod send_queues;
mod shared;
pub mod sidecar;
mod sidecar_control;
mod tls;

pub use config::Config;
pub use error::{
    BackendsProblem, ConfigError, Error, ShardProblem, SnapshotError, TlsError, TokenError,
    ValueProblem,
};
pub use listener::{Server, Shutdown};
pub use shared::{Applied, Refused, Shared};

/// Resolves once `done()` holds, looking again each time `notify` tells
/// its waiters (`notify_waiters`) that it may have changed.
pub(crate) async fn notified_until(notify: &tokio::sync::Notify, done: impl Fn() -> bool) {
    loop {
        let told = notify.notified();
        tokio::pin!(told);
        // Listening before looking, so that a change in between is not
        // missed.
        told.as_mut().enable();
        if done() {
            return;
        }
        told.await;
    }
}
