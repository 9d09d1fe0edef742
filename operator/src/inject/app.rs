//! Changes the application container so that the sidecar stands in front
//! of it: its port gives up its name (keeping its number), its probes and
//! postStart hook that named the port use the number instead, and a
//! preStop hook asks the sidecar to drain before the application stops.

use k8s_openapi::{
    api::core::v1::{
        Container, HTTPGetAction, HTTPHeader, Lifecycle, LifecycleHandler, Probe, TCPSocketAction,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use ringway_dataplane_api::sidecar::{ADMIN_PORT, DRAIN_PATH, DRAIN_TOKEN_HEADER};

use super::target::AppPort;

/// Hands `app`'s port over to the sidecar and adds the drain hook that
/// carries `token`. `container` is the application container `app` was
/// found in, checked to have no preStop hook.
pub fn hand_over(container: &mut Container, app: &AppPort, token: &str) {
    if let Some(port) = container.ports.as_mut().and_then(|p| p.get_mut(app.port)) {
        port.name = None;
    }
    // A named port in a probe or hook resolves against this container's
    // own ports, where the name no longer is: use the number.
    let probes = [
        &mut container.liveness_probe,
        &mut container.readiness_probe,
        &mut container.startup_probe,
    ];
    for probe in probes.into_iter().flatten() {
        let Probe {
            http_get,
            tcp_socket,
            ..
        } = probe;
        number_for_name(http_get.as_mut(), tcp_socket.as_mut(), app);
    }
    let lifecycle = container.lifecycle.get_or_insert_with(Lifecycle::default);
    if let Some(LifecycleHandler {
        http_get,
        tcp_socket,
        ..
    }) = lifecycle.post_start.as_mut()
    {
        number_for_name(http_get.as_mut(), tcp_socket.as_mut(), app);
    }
    lifecycle.pre_stop = Some(drain_hook(token));
}

/// The preStop hook: the kubelet's GET on the sidecar's admin port, which
/// answers once the sidecar's clients are gone (the grace period bounds
/// the wait).
fn drain_hook(token: &str) -> LifecycleHandler {
    LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some(DRAIN_PATH.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            http_headers: Some(vec![HTTPHeader {
                name: DRAIN_TOKEN_HEADER.to_owned(),
                value: token.to_owned(),
            }]),
            ..HTTPGetAction::default()
        }),
        ..LifecycleHandler::default()
    }
}

fn number_for_name(
    http_get: Option<&mut HTTPGetAction>,
    tcp_socket: Option<&mut TCPSocketAction>,
    app: &AppPort,
) {
    let ports = http_get
        .map(|a| &mut a.port)
        .into_iter()
        .chain(tcp_socket.map(|a| &mut a.port));
    for port in ports {
        if *port == IntOrString::String(app.name.clone()) {
            *port = IntOrString::Int(i32::from(app.number));
        }
    }
}
