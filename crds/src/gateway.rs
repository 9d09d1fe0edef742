//! The `WebSocketGateway` kind and its spec.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    ConnectionSettings, DisruptionBudget, DrainSettings, Listener, NetworkPolicySettings,
    RolloutSettings, Route, WebSocketGatewayStatus, defaults,
};

/// A WebSocket gateway: sharded data-plane pods that hold client WebSockets
/// and route each one, by a consistent hash of a key taken from the upgrade
/// request, to a backend Service. A change to the spec runs the new version
/// beside the old one and moves the key space to it within the disruption
/// budget: straight to all of it, by the `ringway.dev/canary-weight`
/// annotation when `ringway.dev/rollout: canary` is set, or by
/// `spec.rollout.steps`, judged against the old version at each.
// Every printcolumn repeats `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ringway.dev",
    version = "v1alpha1",
    kind = "WebSocketGateway",
    plural = "websocketgateways",
    shortname = "wsgw",
    category = "ringway",
    namespaced,
    status = "WebSocketGatewayStatus",
    derive = "PartialEq",
    doc = "A WebSocket gateway: sharded data-plane pods that route client WebSockets to a backend Service by a consistent hash of a key, with canary rollouts that drain exactly the connections whose keys move.",
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".spec.shards",
        description = "Data-plane pods per version"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.shardsReady",
        description = "Data-plane pods ready, all versions"
    ),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections",
        description = "Live client connections, each counted once"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".status.canary.phase",
        description = "Canary phase, empty when there is no canary"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canary.weight",
        description = "Percent of the key space on the canary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketGatewaySpec {
    /// Number of data-plane pods per version. Each pod owns a consistent-hash
    /// share of the keys; adding or removing one of N pods moves about 1/N of
    /// them. During a canary the canary version gets the same number of pods.
    #[serde(default = "defaults::shards")]
    #[schemars(range(min = 1, max = 256))]
    pub shards: u16,

    /// Data-plane container image. Defaults to the image the operator was
    /// installed with. Changing it is a spec change: the new version starts
    /// beside the old one (see `rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of each data-plane container. Memory per idle
    /// connection is a few KiB; see docs/operations.md for sizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The client-facing listener of every data-plane pod.
    #[serde(default)]
    pub listener: Listener,

    /// Routes, matched by the longest path prefix of the upgrade request.
    /// Each names where its routing key comes from and which backend Service
    /// serves it.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(r, self.exists_one(o, o.pathPrefix == r.pathPrefix))",
            "message": "two routes have the same pathPrefix; each prefix may appear once",
        },
    ]))]
    pub routes: Vec<Route>,

    /// Heartbeats, timeouts and size limits applied to every client
    /// connection.
    #[serde(default)]
    pub connections: ConnectionSettings,

    /// How connections are closed when a pod stops or their keys move.
    #[serde(default)]
    pub drain: DrainSettings,

    /// Limits on how many connections rollouts, rebalancing and pod stops may
    /// force to reconnect, across the whole gateway.
    #[serde(default)]
    pub disruption_budget: DisruptionBudget,

    /// Automatic canary steps, and when a canary is judged worse than
    /// stable and aborted.
    #[serde(default)]
    pub rollout: RolloutSettings,

    /// An optional NetworkPolicy that limits who reaches the data-plane
    /// pods' ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySettings,
}
