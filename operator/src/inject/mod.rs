//! The sidecar injector's decision: for a pod being created, the JSON patch
//! that puts `ringway-dataplane sidecar` in front of the application port
//! its `ringway.dev/sidecar` annotation names, or the [`Denial`] that says
//! what to fix. [`admission`] wraps it in AdmissionReview v1.
//!
//! The design (the contract is `ringway_dataplane_api::sidecar`):
//!
//! - The sidecar is a native sidecar (an init container with
//!   `restartPolicy: Always`, appended after the pod's own init
//!   containers), listening on port 15080 (`sidecar::LISTEN_PORT`) under the application
//!   port's name. The application's port keeps its number and loses its
//!   name, so a Service whose `targetPort` is the name now reaches the
//!   sidecar without any change to the Service; the application's probes
//!   that named the port use its number, so they still reach it directly.
//!   A Service that targets a number cannot be redirected (that would take
//!   iptables), so an unnamed port is denied.
//! - The application container gets a preStop hook, a GET of the
//!   sidecar's drain path with a per-pod random token, which answers once
//!   the sidecar has drained its clients: the kubelet runs it before the
//!   application's SIGTERM, while the sidecar keeps running.
//! - The pod gets the label `sidecar::INJECTED_LABEL`, so that the
//!   operator can watch exactly the injected pods and pace their drains,
//!   and an optional volume of the namespace's `sidecar::CONTROL_SECRET`,
//!   mounted read-only in the sidecar, which serves its control port with
//!   it when the Secret's files are there.
//! - A pod that already has the sidecar is left alone, so reinvocation
//!   never injects twice.
//!
//! This module only decides; the operator's `webhook` serves it.

pub mod admission;
mod app;
mod denial;
mod settings;
mod sidecar;
mod target;

use std::collections::BTreeMap;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use ringway_crds::annotations::SIDECAR_DRAIN_WINDOW_SECONDS;
use ringway_dataplane_api::{
    defaults::DRAIN_CLOSE_TIMEOUT_SECONDS,
    sidecar::{
        APPLICATION_EXIT_SECONDS, CONTAINER, INJECTED_LABEL, INJECTED_LABEL_VALUE, fitted_window,
    },
};

pub use denial::Denial;
pub use settings::{MAX_CLOSES_PER_SECOND, PortRef, Settings};

/// The kubelet's grace period when the pod does not set one.
const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 30;

/// What the injector does to an admitted pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Injection {
    /// The changes to the pod; empty when it is admitted as it is.
    pub patch: Patch,
    /// Warnings for the user who created the pod (shown by `kubectl`).
    pub warnings: Vec<String>,
}

/// Decides what happens to `pod` at creation: unchanged when it does not
/// ask for a sidecar or already has one; otherwise the patch that injects
/// `image` as its sidecar, with `token` (a fresh random value per pod) as
/// the drain token, or why it cannot be done.
pub fn decide(pod: &Pod, image: &str, token: &str) -> Result<Injection, Denial> {
    if pod.spec.as_ref().is_some_and(has_sidecar) {
        return Ok(Injection::default());
    }
    let no_annotations = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    let Some(settings) = Settings::read(annotations)? else {
        return Ok(Injection::default());
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Denial::NoSuchPort {
            port: settings.port,
        });
    };
    let app = target::find(spec, &settings.port)?;
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS);
    let mut mutated = pod.clone();
    mutated
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_LABEL.to_owned(), INJECTED_LABEL_VALUE.to_owned());
    if let Some(spec) = mutated.spec.as_mut() {
        app::hand_over(&mut spec.containers[app.container], &app, token);
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar::container(image, &settings, &app, token, grace));
        spec.volumes
            .get_or_insert_with(Vec::new)
            .extend(sidecar::volumes());
    }
    Ok(Injection {
        patch: json_patch::diff(&json(pod), &json(&mutated)),
        warnings: grace_warning(grace, &settings).into_iter().collect(),
    })
}

fn has_sidecar(spec: &PodSpec) -> bool {
    let mut all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    all.any(|c| c.name == CONTAINER)
}

/// A warning when the grace period cannot hold the whole drain (the
/// window, the close timeout, and the application's exit after it): the
/// sidecar then shortens its window to fit ([`fitted_window`]) and closes
/// the clients left at its end at once, over the rate.
fn grace_warning(grace: i64, settings: &Settings) -> Option<String> {
    let window = f64::from(settings.drain_window_seconds);
    let close = f64::from(DRAIN_CLOSE_TIMEOUT_SECONDS);
    // Grace periods are whole seconds, far below 2^52: exact as an f64.
    let fitted = fitted_window(window, close, Some(grace as f64));
    let needed = (window + close + APPLICATION_EXIT_SECONDS).ceil();
    (fitted < window).then(|| {
        format!(
            "terminationGracePeriodSeconds {grace} leaves the sidecar's drain {fitted} s of its {window} s window (the {close} s close timeout and {APPLICATION_EXIT_SECONDS} s for the application to exit come after it): the clients left at the window's end are closed at once, faster than {rate} per second; raise it to {needed} or lower {SIDECAR_DRAIN_WINDOW_SECONDS}",
            rate = settings.max_closes_per_second,
        )
    })
}

fn json(pod: &Pod) -> serde_json::Value {
    // A k8s-openapi Pod is plain data; turning it into JSON cannot fail.
    serde_json::to_value(pod).unwrap_or_default()
}

#[cfg(test)]
mod tests;
