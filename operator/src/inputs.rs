//! The part of a gateway's spec that is baked into its pods. A change to it
//! is a new revision: it rolls pod by pod, or runs as a canary in the other
//! slot. Everything else (routes, limits, budget) reaches running pods in
//! snapshots and never restarts one.

use k8s_openapi::api::core::v1::ResourceRequirements;
use ringway_crds::{DrainSettings, Listener, WebSocketGatewaySpec};
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
        }
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
    fn annotation_round_trips() {
        let inputs = PodInputs::from_spec(&spec(), "img:1");
        let back = PodInputs::from_annotation(&inputs.to_annotation()).expect("parse");
        assert_eq!(back, inputs);
    }
}
