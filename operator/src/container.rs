//! The parts of a data-plane container that a gateway's pods and an
//! injected sidecar share: its TCP ports, its probes on the admin port, and
//! a security context that needs nothing of the pod's.

use k8s_openapi::{
    api::core::v1::{Capabilities, ContainerPort, EnvVar, HTTPGetAction, Probe, SecurityContext},
    apimachinery::pkg::util::intstr::IntOrString,
};

/// The distroless `nonroot` user and group the data-plane image runs as.
pub const NONROOT: i64 = 65532;

/// JSON logs, one object per line, for a cluster's log pipeline.
pub fn json_logs() -> EnvVar {
    EnvVar {
        name: "RINGWAY_LOG_FORMAT".to_owned(),
        value: Some("json".to_owned()),
        ..EnvVar::default()
    }
}

/// A TCP container port.
pub fn tcp_port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// Readiness on the admin port's `/readyz`: 503 until the data plane
/// routes and from the start of a drain, so that a Service sends clients
/// only to pods that take them.
pub fn readiness(admin: &IntOrString) -> Probe {
    Probe {
        http_get: Some(admin_get(admin, "/readyz")),
        period_seconds: Some(2),
        timeout_seconds: Some(2),
        failure_threshold: Some(2),
        ..Probe::default()
    }
}

/// Liveness on the admin port's `/healthz`, for a process that stopped
/// answering at all: a restart drops every connection it holds, so it is
/// given a minute.
pub fn liveness(admin: &IntOrString) -> Probe {
    Probe {
        http_get: Some(admin_get(admin, "/healthz")),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(6),
        ..Probe::default()
    }
}

fn admin_get(admin: &IntOrString, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_owned()),
        port: admin.clone(),
        ..HTTPGetAction::default()
    }
}

/// No privileges, no writes, no capabilities, not root.
pub fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}
