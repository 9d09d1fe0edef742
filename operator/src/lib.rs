//! The Ringway operator: reconciles each `WebSocketGateway` into two
//! StatefulSet slots of data-plane shards, their Services, a
//! PodDisruptionBudget and the control channel's certificates, and steers
//! every ready pod with routing snapshots over mutual-TLS gRPC.
//!
//! Planning is pure and unit-tested ([`rollout`], [`snapshot`], [`budget`],
//! [`children`], [`annotations`], [`conditions`]); effects live in
//! [`reconcile`] and the wiring in [`controller`].

pub mod annotations;
pub mod budget;
pub mod children;
pub mod conditions;
pub mod controller;
mod error;
pub mod events;
pub mod http;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod names;
mod observe;
pub mod pki;
pub mod rbac;
pub mod reconcile;
pub mod rollout;
pub mod snapshot;
pub mod steer;

pub use error::Error;
pub use inputs::PodInputs;
