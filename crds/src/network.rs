//! Who may reach the gateway's data-plane pods: an optional NetworkPolicy
//! the operator keeps in step with the gateway.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// An ingress NetworkPolicy over the gateway's data-plane pods. When
/// enabled, the client port is open to everyone, the peer port only to the
/// gateway's own pods, the control port only to the operator's pods, and
/// the admin port (health, readiness, metrics) only to `metricsFrom`. It
/// takes effect only where the cluster's network plugin enforces
/// NetworkPolicy; see docs/operations.md.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Create the NetworkPolicy `<gateway>` and keep it in step with the
    /// gateway. Off by default; turning it off deletes the policy. Changing
    /// it restarts no pod.
    #[serde(default)]
    pub enabled: bool,

    /// Who may reach the admin port (9090: `/healthz`, `/readyz`,
    /// `/metrics`), for example Prometheus. Empty: no pod may; the kubelet's
    /// probes from the pod's own node still pass on most network plugins.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub metrics_from: Vec<MetricsPeer>,
}

/// Pods that may scrape the admin port, selected by labels like a
/// NetworkPolicy peer. With only `podSelector`, pods in the gateway's
/// namespace; with only `namespaceSelector`, every pod in those namespaces;
/// with both, the selected pods in the selected namespaces. An empty map
/// selects all (`namespaceSelector: {}` is every namespace).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.namespaceSelector) || has(self.podSelector)",
        "message": "set namespaceSelector, podSelector or both",
    },
]))]
pub struct MetricsPeer {
    /// Labels of the namespaces (`matchLabels`), such as
    /// `kubernetes.io/metadata.name: monitoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "match_labels")]
    pub namespace_selector: Option<BTreeMap<String, String>>,

    /// Labels of the pods (`matchLabels`), such as
    /// `app.kubernetes.io/name: prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "match_labels")]
    pub pod_selector: Option<BTreeMap<String, String>>,
}

/// A `matchLabels` map: label keys to label values. The values are checked
/// here, as Kubernetes checks label values; a bad key is refused by the API
/// server when the operator applies the NetworkPolicy (checking keys here
/// would take a CEL rule over every key).
fn match_labels(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "string",
            "description": "A label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit.",
            "maxLength": 63,
            "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        },
    })
}
