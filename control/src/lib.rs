//! The client side of Ringway's control channel, and the PKI that secures it.
//!
//! The operator pushes the routing state of a gateway (a
//! [`Snapshot`](proto::Snapshot)) to every data-plane pod over gRPC
//! (`ringway.control.v1.Control`), reads the pods' status and drains pods
//! before removing them. [`ControlClient`] does that with deadlines, retries
//! and cached connections; the operator, the e2e tests and the `ringway-ctl`
//! command use it.
//!
//! # Trust model
//!
//! Every gateway has its own certificate authority ([`pki::Ca`]), kept by the
//! operator in a Kubernetes Secret. The channel is mutual TLS, trusting only
//! that CA:
//!
//! - every data-plane pod holds a certificate with extended key usage
//!   `serverAuth` only and the DNS name [`pki::SERVER_NAME`]
//!   (`ringway-control`): pods are dialed by IP, unknown when certificates are
//!   issued, so the client verifies that name, and the CA tells one gateway's
//!   pods from another's;
//! - the operator holds a certificate with `clientAuth` only, which every pod
//!   requires before it accepts a call. A pod's certificate cannot act as a
//!   client, so a compromised pod cannot push snapshots to its peers.

pub mod pki;

mod client;

pub use client::*;

/// The generated messages, client and server of `ringway.control.v1`.
pub use ringway_dataplane_api::v1 as proto;
