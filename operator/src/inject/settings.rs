//! Reads a pod's `ringway.dev/sidecar*` annotations into the [`Settings`]
//! the injected sidecar runs with; a value that cannot be understood is a
//! [`Denial`] that names the annotation.

use std::collections::BTreeMap;

use ringway_crds::annotations::{
    SIDECAR, SIDECAR_DRAIN_WINDOW_SECONDS, SIDECAR_MAX_CLOSES_PER_SECOND, SIDECAR_MAX_CONNECTIONS,
};
use ringway_dataplane_api::defaults::{DRAIN_WINDOW_SECONDS, MAX_CONNECTIONS_PER_POD};

use super::denial::Denial;

/// The sidecar's closes per second while draining, when the pod does not
/// say (shared with the sidecar's own flag default).
pub use ringway_dataplane_api::sidecar::MAX_CLOSES_PER_SECOND;

/// The application port the sidecar fronts, as [`SIDECAR`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// A `containerPort`'s name.
    Name(String),
    /// A `containerPort`'s number.
    Number(u16),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Name(name) => write!(f, "{name:?}"),
            PortRef::Number(number) => write!(f, "{number}"),
        }
    }
}

/// What a pod's annotations ask of its sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The application port to front.
    pub port: PortRef,
    /// Seconds the closes of the drain are spread over.
    pub drain_window_seconds: u32,
    /// The most closes per second while draining.
    pub max_closes_per_second: u32,
    /// The most client connections held at once.
    pub max_connections: u32,
}

impl Settings {
    /// The settings of a pod with these annotations; `None` when the pod
    /// does not ask for a sidecar (no [`SIDECAR`] annotation).
    pub fn read(annotations: &BTreeMap<String, String>) -> Result<Option<Self>, Denial> {
        let Some(port) = annotations.get(SIDECAR) else {
            return Ok(None);
        };
        let setting = |annotation: &'static str, default: u32| {
            annotations
                .get(annotation)
                .map_or(Ok(default), |value| positive(annotation, value))
        };
        Ok(Some(Settings {
            port: port_ref(port)?,
            drain_window_seconds: setting(SIDECAR_DRAIN_WINDOW_SECONDS, DRAIN_WINDOW_SECONDS)?,
            max_closes_per_second: setting(SIDECAR_MAX_CLOSES_PER_SECOND, MAX_CLOSES_PER_SECOND)?,
            max_connections: setting(SIDECAR_MAX_CONNECTIONS, MAX_CONNECTIONS_PER_POD)?,
        }))
    }
}

/// A port number (digits only, 1 to 65535) or else a port name.
fn port_ref(value: &str) -> Result<PortRef, Denial> {
    let value = value.trim();
    let bad = || Denial::BadPortAnnotation {
        value: value.to_owned(),
    };
    if value.is_empty() {
        return Err(bad());
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(PortRef::Name(value.to_owned()));
    }
    match value.parse::<u16>() {
        Ok(number) if number > 0 => Ok(PortRef::Number(number)),
        _ => Err(bad()),
    }
}

fn positive(annotation: &'static str, value: &str) -> Result<u32, Denial> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Denial::BadNumber {
            annotation,
            value: value.to_owned(),
        }),
    }
}
