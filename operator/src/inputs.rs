//! The part of a gateway's spec that makes a version: what is baked into
//! its pods, and the limits of its connections. A change to it is a new
//! revision: it rolls pod by pod, or runs as a canary in the other slot.
//! The limits reach the pods in snapshots (each version's its own), so a
//! change of limits alone restarts no pod ([`PodInputs::template_revision`]
//! leaves them out). Everything else (routes, budget) reaches running pods
//! in snapshots too and is the same for every version.

use k8s_openapi::api::core::v1::ResourceRequirements;
use ringway_crds::{ConnectionSettings, DrainSettings, Listener, WebSocketGatewaySpec};
use serde::{Deserialize, Serialize};

/// What a slot's pod template is rendered from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInputs {
    /// The data-plane image.
    pub image: String,
    /// The container's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Client port and TLS Secret.
    pub listener: Listener,
    /// Drain window and close timeout: the pod's own SIGTERM drain and its
    /// termination grace period.
    pub drain: DrainSettings,
    /// The process's connection cap (each connection holds two descriptors).
    pub max_connections_per_pod: u32,
    /// The limits of the version's connections. `None` only in what an
    /// operator before per-version limits stored: those pods ran the
    /// spec's limits, gateway-wide ([`PodInputs::or_limits_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<VersionLimits>,
}

/// The limits of one version's connections: `spec.connections` but for
/// the pod's connection cap (baked into the pod) and the handshake
/// timeout (taken before the key, and so the version, is known).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionLimits {
    /// `spec.connections.heartbeat.intervalSeconds`.
    pub heartbeat_interval_seconds: u32,
    /// `spec.connections.heartbeat.timeoutSeconds`.
    pub heartbeat_timeout_seconds: u32,
    /// `spec.connections.idleTimeoutSeconds`.
    pub idle_timeout_seconds: u32,
    /// `spec.connections.maxFrameBytes`.
    pub max_frame_bytes: u32,
    /// `spec.connections.maxMessageBytes`.
    pub max_message_bytes: u32,
}

impl From<&ConnectionSettings> for VersionLimits {
    fn from(c: &ConnectionSettings) -> Self {
        Self {
            heartbeat_interval_seconds: c.heartbeat.interval_seconds,
            heartbeat_timeout_seconds: c.heartbeat.timeout_seconds,
            idle_timeout_seconds: c.idle_timeout_seconds,
            max_frame_bytes: c.max_frame_bytes,
            max_message_bytes: c.max_message_bytes,
        }
    }
}

impl PodInputs {
    /// The pod inputs of `spec`; `default_image` is the operator's when the
    /// spec names none.
    pub fn from_spec(spec: &WebSocketGatewaySpec, default_image: &str) -> Self {
        Self {
            image: spec
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
            resources: spec.resources.clone(),
            listener: spec.listener.clone(),
            drain: spec.drain.clone(),
            max_connections_per_pod: spec.connections.max_connections_per_pod,
            limits: Some(VersionLimits::from(&spec.connections)),
        }
    }

    /// Inputs stored before per-version limits, completed with the limits
    /// their pods ran: the spec's, which applied to every pod.
    pub fn or_limits_of(mut self, spec: &WebSocketGatewaySpec) -> Self {
        self.limits
            .get_or_insert_with(|| VersionLimits::from(&spec.connections));
        self
    }

    /// The revision of what is baked into the pods: the pod template's. A
    /// change of limits alone keeps it, and restarts no pod.
    pub fn template_revision(&self) -> String {
        Self {
            limits: None,
            ..self.clone()
        }
        .revision()
    }

    /// A short, stable hash of the inputs: equal inputs give equal
    /// revisions on every operator build.
    pub fn revision(&self) -> String {
        // serde_json writes struct fields in declaration order and maps
        // (resource quantities) sorted, so the bytes are canonical.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
    }

    /// The JSON stored in [`crate::names::ANNOTATION_POD_INPUTS`].
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads [`crate::names::ANNOTATION_POD_INPUTS`] back.
    pub fn from_annotation(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WebSocketGatewaySpec {
        serde_yaml::from_str(
            "routes: [{name: r, pathPrefix: /, key: {source: Header, name: x}, backend: {service: s, port: 80}}]",
        )
        .expect("spec")
    }

    #[test]
    fn revision_changes_with_pod_inputs_only() {
        let base = PodInputs::from_spec(&spec(), "img:1");
        assert_eq!(
            base.revision(),
            PodInputs::from_spec(&spec(), "img:1").revision()
        );
        let mut s = spec();
        s.image = Some("img:2".into());
        assert_ne!(
            base.revision(),
            PodInputs::from_spec(&s, "img:1").revision()
        );
        let mut s = spec();
        s.routes[0].path_prefix = "/other".into();
        s.disruption_budget.max_disrupted_percent = 5;
        assert_eq!(
            base.revision(),
            PodInputs::from_spec(&s, "img:1").revision()
        );
    }

    #[test]
    fn limits_make_a_new_revision_but_not_a_new_pod_template() {
        let base = PodInputs::from_spec(&spec(), "img:1");
        let mut s = spec();
        s.connections.max_message_bytes = 1024;
        let lower = PodInputs::from_spec(&s, "img:1");
        assert_ne!(base.revision(), lower.revision());
        assert_eq!(base.template_revision(), lower.template_revision());
        // What an older operator stored (no limits) keeps its template
        // revision, and is completed with the spec's limits.
        let stored = PodInputs {
            limits: None,
            ..base.clone()
        };
        let old_json = stored.to_annotation();
        assert!(!old_json.contains("limits"), "{old_json}");
        assert_eq!(stored.revision(), base.template_revision());
        let read = PodInputs::from_annotation(&old_json).expect("parse");
        assert_eq!(read.or_limits_of(&spec()), base);
    }

    #[test]
    fn annotation_round_trips() {
        let inputs = PodInputs::from_spec(&spec(), "img:1");
        let back = PodInputs::from_annotation(&inputs.to_annotation()).expect("parse");
        assert_eq!(back, inputs);
    }
}
