//! The Ringway operator: reconciles each `WebSocketGateway` into two
//! StatefulSet slots of data-plane shards, their Services, a
//! PodDisruptionBudget and the control channel's certificates, and steers
//! every ready pod with routing snapshots over mutual-TLS gRPC.
//!
//! One reconcile ([`reconcile`]) is observe → plan → apply → decide →
//! write: `observe` reads the API server and the watches' [`stores`];
//! planning is pure and unit-tested ([`plan`], [`rollout`], [`snapshot`],
//! [`budget`], [`children`], [`annotations`], [`pki`]); `effects` applies
//! the children, pushes the snapshot and writes what the pure [`status`]
//! decided. The wiring is in [`watches`] (every replica) and
//! [`controller`] (the leader), the shared state in [`context`].
//!
//! Apart from gateways, [`inject`] decides what the sidecar injector does
//! to a pod that asks for the data plane beside its application, and every
//! replica serves it as a mutating admission [`webhook`] when asked to;
//! with it, the leader's [`sidecar_audit`] finds and reports the pods that
//! started without their sidecar while the webhook did not answer.

pub mod annotations;
pub mod budget;
pub mod children;
pub mod conditions;
pub mod container;
pub mod context;
pub mod controller;
mod effects;
mod error;
pub mod events;
pub mod http;
pub mod inject;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod names;
mod observe;
pub mod pki;
pub mod plan;
pub mod rbac;
pub mod reconcile;
pub mod rollout;
pub mod sidecar_audit;
pub mod sidecar_drain;
pub mod snapshot;
pub mod status;
pub mod steer;
pub mod stores;
pub mod watches;
pub mod webhook;

pub use error::Error;

/// Resolves once `flag` is true, or can no longer become true (its sender
/// is gone): how the operator's tasks wait for a stop or a halt.
pub async fn until(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}
pub use inputs::PodInputs;
