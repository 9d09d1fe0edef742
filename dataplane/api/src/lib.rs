//! The control channel's contract, generated from
//! `proto/ringway/control/v1/control.proto`: message types, the tonic client
//! the operator uses and the server trait every data-plane pod implements;
//! the defaults the gateway spec and the standalone config share; and the
//! contract between the sidecar injector and the sidecar.

pub mod defaults;
pub mod sidecar;

/// `ringway.control.v1`: snapshots, status and drain.
#[allow(missing_docs, clippy::all)] // generated code
pub mod v1 {
    tonic::include_proto!("ringway.control.v1");
}
