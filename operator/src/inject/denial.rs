//! Why a pod that asks for a sidecar cannot have one as it is: each
//! [`Denial`] reads as the admission error the user sees, and says what to
//! change.

use ringway_crds::annotations::SIDECAR;
use ringway_dataplane_api::sidecar::{ADMIN_PORT, CONTROL_PORT, LISTEN_PORT};

use super::settings::PortRef;

/// A pod the injector refuses, with what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The port annotation is empty, or a number outside 1–65535.
    #[error(
        "{SIDECAR}: {value:?} is not a port; set it to the name (or number) of the application container's WebSocket containerPort"
    )]
    BadPortAnnotation {
        /// The annotation's value.
        value: String,
    },
    /// An optional annotation is not a whole number of at least 1.
    #[error(
        "{annotation}: {value:?} is not a whole number of at least 1; fix it or remove the annotation for the default"
    )]
    BadNumber {
        /// The annotation's name.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// No application container declares the port.
    #[error(
        "{SIDECAR}: no container of the pod declares a containerPort {port}; set it to the name of the port in the application container's ports"
    )]
    NoSuchPort {
        /// The port the annotation asks for.
        port: PortRef,
    },
    /// The port is declared, but not for TCP.
    #[error(
        "{SIDECAR}: containerPort {port} of container {container:?} is {protocol}, but the sidecar fronts a TCP (WebSocket) port; point the annotation at a TCP port"
    )]
    NotTcp {
        /// The port the annotation asks for.
        port: PortRef,
        /// The container that declares it.
        container: String,
        /// Its protocol.
        protocol: String,
    },
    /// More than one container (or port) matches, so which to front is
    /// ambiguous.
    #[error(
        "{SIDECAR}: containerPort {port} is declared on several containers ({}); give the application's WebSocket port a name used only once in the pod and set the annotation to it",
        containers.join(", ")
    )]
    Ambiguous {
        /// The port the annotation asks for.
        port: PortRef,
        /// The containers that declare it.
        containers: Vec<String>,
    },
    /// The port has no name, so no Service can target it by name.
    #[error(
        "{SIDECAR}: containerPort {number} of container {container:?} has no name; the sidecar takes over the port's name so that a Service targeting that name reaches it (a Service targeting a number cannot be redirected), so name the port (e.g. name: ws), make the Service's targetPort that name, and set the annotation to it"
    )]
    UnnamedPort {
        /// The container that declares the port.
        container: String,
        /// The port's number.
        number: u16,
    },
    /// The application container already has a preStop hook.
    #[error(
        "container {container:?} already has a preStop hook; the sidecar needs the preStop hook to drain its clients before the application stops, so remove the hook (or move its work into the application's SIGTERM handling)"
    )]
    HasPreStop {
        /// The application container.
        container: String,
    },
    /// A container already uses one of the sidecar's port numbers.
    #[error(
        "container {container:?} uses port {number}, which the sidecar needs ({LISTEN_PORT} for clients, {ADMIN_PORT} for its admin port, {CONTROL_PORT} for its control port); move the container to another port"
    )]
    PortNumberTaken {
        /// The container using it.
        container: String,
        /// The port number.
        number: u16,
    },
    /// A container already uses the name of one of the sidecar's own
    /// ports (its admin or control port).
    #[error(
        "container {container:?} has a port named {name:?}, the name of one of the sidecar's ports; rename that port"
    )]
    PortNameTaken {
        /// The container using it.
        container: String,
        /// The name.
        name: &'static str,
    },
    /// The pod already has a volume of a name the injection adds.
    #[error(
        "the pod has a volume named {name:?}, the name of a volume the injected sidecar mounts; rename that volume"
    )]
    VolumeNameTaken {
        /// The name.
        name: &'static str,
    },
}
