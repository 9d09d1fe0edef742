//! How connections are closed when they must move, and how many may be moved
//! at once: the gateway's answer to "a rollout must not become a reconnect
//! storm".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

/// How connections are drained: closed at a message boundary, after what was
/// already in flight is delivered, with a close code that tells the client
/// why (1012 when its key moved, 1001 when its pod is stopping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.closeTimeoutSeconds <= self.windowSeconds",
        "message": "closeTimeoutSeconds must not exceed windowSeconds",
        "fieldPath": ".closeTimeoutSeconds",
    },
]))]
pub struct DrainSettings {
    /// Seconds over which one drain (a pod stopping, or a snapshot that moves
    /// keys) spreads its closes. A stopping pod's termination grace period is
    /// this window plus twice `closeTimeoutSeconds` plus 5 seconds.
    #[serde(default = "defaults::drain_window_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub window_seconds: u32,

    /// Seconds to wait for the client's and the backend's answer to a close
    /// frame before the sockets are shut regardless.
    #[serde(default = "defaults::drain_close_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub close_timeout_seconds: u32,
}

impl Default for DrainSettings {
    fn default() -> Self {
        Self {
            window_seconds: defaults::drain_window_seconds(),
            close_timeout_seconds: defaults::drain_close_timeout_seconds(),
        }
    }
}

/// A disruption budget for sockets, like a PodDisruptionBudget for the
/// connections themselves. Canary weight steps, promotions, rolling
/// restarts, rebalancing after shards or backends change, and pod stops all
/// count against it. The operator divides the reconnect rate among the pods
/// of each snapshot and holds back a step that would exceed the budget; the
/// gateway's status then says that it is waiting for the budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Most connections the gateway closes per second, across all of its
    /// pods, to move them elsewhere.
    #[serde(default = "defaults::budget_max_reconnects_per_second")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_reconnects_per_second: u32,

    /// Most live connections, in percent, that may be disrupted within one
    /// `windowSeconds`.
    #[serde(default = "defaults::budget_max_disrupted_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_disrupted_percent: u8,

    /// Length in seconds of the sliding window for `maxDisruptedPercent`.
    #[serde(default = "defaults::budget_window_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: u32,
}

impl Default for DisruptionBudget {
    fn default() -> Self {
        Self {
            max_reconnects_per_second: defaults::budget_max_reconnects_per_second(),
            max_disrupted_percent: defaults::budget_max_disrupted_percent(),
            window_seconds: defaults::budget_window_seconds(),
        }
    }
}
