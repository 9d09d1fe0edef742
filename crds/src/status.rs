//! What the operator reports on a gateway: conditions, shards, connections,
//! the snapshot epoch and the canary's progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The observed state of a gateway, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketGatewayStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing`, `Degraded` and `Drained`, each with a
    /// reason and a message that says what to do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Data-plane pods ready, of every version (the `Ready` condition's
    /// message counts the same pods, per version during a canary).
    #[serde(default)]
    pub shards_ready: i32,

    /// Live client connections, each counted once (on the pod that owns
    /// it, not again on the pod it entered through), as the pods last
    /// reported them: at every reconcile while something moves, at least
    /// once a minute at rest.
    #[serde(default)]
    pub connections: i64,

    /// Epoch of the latest routing snapshot the operator issued to the pods.
    /// It only grows, across operator restarts too: it is written here
    /// before the snapshot is sent. The `Ready` condition says whether every
    /// pod has acknowledged it.
    #[serde(default)]
    pub epoch: i64,

    /// The slot that serves the stable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<SlotStatus>,

    /// The canary in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The last canary the analysis aborted, while the spec still asks for
    /// its revision: the spec change is held until the spec changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortedCanary>,

    /// Connections disrupted in the disruption budget's current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<DisruptionStatus>,
}

/// What the current window of the disruption budget has used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionStatus {
    /// When the window started.
    pub window_start: Time,
    /// Connections that rollout steps, restarts and rebalances closed (or
    /// were expected to close) since then.
    pub disrupted: i64,
}

/// One of the two StatefulSet slots a gateway's versions run in. A canary
/// runs in the slot that stable does not use; promotion swaps the roles, so
/// that no connection is drained twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Slot {
    /// The StatefulSet `<gateway>-a`.
    A,
    /// The StatefulSet `<gateway>-b`.
    B,
}

/// The slot as the operator names it in the pods' snapshots.
impl From<Slot> for ringway_dataplane_api::v1::Slot {
    fn from(slot: Slot) -> Self {
        match slot {
            Slot::A => Self::A,
            Slot::B => Self::B,
        }
    }
}

/// The pods of one version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    /// Which StatefulSet slot the version runs in.
    pub slot: Slot,
    /// The data-plane image of this version.
    pub image: String,
    /// A hash of everything in the spec that is baked into this version's
    /// pods (image, resources, listener, drain, connection cap).
    #[serde(default)]
    pub revision: String,
    /// Pods of this version that are ready.
    pub shards_ready: i32,
    /// Live client connections this version's pods own, each counted once.
    pub connections: i64,
}

/// The progress of a canary rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Where the rollout is.
    pub phase: CanaryPhase,
    /// The canary's pods.
    #[serde(flatten)]
    pub pods: SlotStatus,
    /// Percent of the key space that every pod has been told belongs to
    /// the canary.
    #[schemars(range(min = 0, max = 100))]
    pub weight: u8,
    /// The weight requested by the `ringway.dev/canary-weight` annotation,
    /// when the rollout has not reached it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub target_weight: Option<u8>,
    /// Connections that the last step closed so that their clients
    /// reconnect to their new owner.
    #[serde(default)]
    pub drained: i64,
    /// The comparison with stable at the current weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
}

/// The canary's analysis at its current weight: what each version's pods
/// measured since the weight was reached, and what the operator makes of
/// it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the figures began: the weight was reached (or the operator
    /// restarted, which starts the hold again).
    pub since: Time,
    /// The verdict so far, in words: holding and why, no worse than
    /// stable, or worse and by which measure, with both rates.
    pub verdict: String,
    /// What the stable version's pods measured.
    pub stable: VersionFigures,
    /// What the canary's pods measured.
    pub canary: VersionFigures,
}

/// What one version's pods measured over the analysis, counted on the
/// pods that own the connections' keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionFigures {
    /// Connection-minutes served, rounded down.
    pub connection_minutes: i64,
    /// Upgrades attempted towards backends.
    pub upgrades: i64,
    /// Restarts of its data-plane containers.
    pub restarts: i64,
    /// Bad outcomes by measure (`backendFailures`, `handshakeRefusals`,
    /// `tooBigCloses`, `slowClientCloses`, `internalErrorCloses`,
    /// `uncleanCloses`, `relayErrors`), those with any.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub events: std::collections::BTreeMap<String, i64>,
}

/// A canary the analysis aborted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortedCanary {
    /// The revision of the spec it ran (`status.stable.revision`'s kind).
    pub revision: String,
    /// Its data-plane image.
    pub image: String,
    /// Which measure was worse than stable, with both figures.
    pub reason: String,
    /// When it was found worse.
    pub at: Time,
}

/// Where a canary rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CanaryPhase {
    /// The canary's pods are starting; no key is on the canary yet.
    Starting,
    /// A weight change was pushed to the pods; connections whose keys moved
    /// are draining.
    Shifting,
    /// Every pod runs the weight asked for: the analysis holds it for the
    /// step's hold time, or it waits for the next annotation.
    Holding,
    /// The next step waits until the disruption budget allows it.
    WaitingForBudget,
    /// Weight 100 was reached: the canary becomes stable and the old
    /// version's pods drain and stop.
    Promoting,
    /// `ringway.dev/canary-abort` was set, or the analysis found the
    /// canary worse than stable: the canary's keys drain back to stable and
    /// its pods stop.
    Aborting,
}

/// The `type` of every condition the operator writes.
pub mod condition_types {
    /// Every shard is ready and runs the latest snapshot.
    pub const READY: &str = "Ready";
    /// A rollout, scale change or rebalance is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: a bad annotation, a missing backend,
    /// pods that cannot be reached.
    pub const DEGRADED: &str = "Degraded";
    /// No version on its way out (the old one while a canary is promoted,
    /// the canary while it is aborted) holds connections any more: what a
    /// hook waits on before it scales down what that version used
    /// (`kubectl wait --for=condition=Drained`).
    pub const DRAINED: &str = "Drained";
}

/// The `reason` of every condition the operator writes.
pub mod condition_reasons {
    /// All shards ready and on the latest epoch.
    pub const SHARDS_READY: &str = "ShardsReady";
    /// Some shards are not ready yet.
    pub const SHARDS_NOT_READY: &str = "ShardsNotReady";
    /// A canary rollout is in progress.
    pub const CANARY_IN_PROGRESS: &str = "CanaryInProgress";
    /// Pods restart in place, one at a time (a new control certificate).
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// A step waits for the disruption budget.
    pub const WAITING_FOR_BUDGET: &str = "WaitingForBudget";
    /// Nothing is changing.
    pub const STABLE: &str = "Stable";
    /// A `ringway.dev/*` annotation could not be understood.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// A route names a backend Service that does not exist or has no
    /// ready endpoints.
    pub const BACKEND_UNAVAILABLE: &str = "BackendUnavailable";
    /// Some pods did not acknowledge the latest snapshot.
    pub const SNAPSHOT_NOT_ACKNOWLEDGED: &str = "SnapshotNotAcknowledged";
    /// Nothing is wrong.
    pub const HEALTHY: &str = "Healthy";
    /// No version is on its way out.
    pub const NO_VERSION_LEAVING: &str = "NoVersionLeaving";
    /// The version on its way out holds no connections (its pods may
    /// still be stopping).
    pub const VERSION_DRAINED: &str = "VersionDrained";
    /// The version on its way out still holds connections, or pods whose
    /// count is not known yet.
    pub const VERSION_DRAINING: &str = "VersionDraining";
    /// The analysis found the canary worse than stable and aborted it;
    /// the spec change is held until the spec changes again.
    pub const CANARY_ANALYSIS_FAILED: &str = "CanaryAnalysisFailed";
}
