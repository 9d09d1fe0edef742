//! How a canary moves without a person: the steps it walks through and
//! the analysis that compares it with stable at each step, advancing it
//! when it is no worse and aborting it when it is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

/// Automatic canary steps and their analysis. With `steps`, every spec
/// change starts a canary (as `ringway.dev/rollout: canary` does) that
/// walks the steps by itself; without them a canary moves only by the
/// `ringway.dev/canary-weight` annotation. The annotations take
/// precedence: a weight set by annotation is held there (the steps go on
/// from it once the annotation is removed), `ringway.dev/canary-pause:
/// "true"` holds the current step, `ringway.dev/canary-abort: "true"`
/// aborts. The analysis runs during every canary, and aborts one that is
/// worse than stable whether it moves by steps or by annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSettings {
    /// The canary's weights, walked in increasing order, e.g. 5, 25, 50.
    /// Each is held for its `holdSeconds` (or the analysis's) and must
    /// pass the analysis before the next; after the last, the canary is
    /// promoted (weight 100). A step at 100 is that promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["weight"]))]
    pub steps: Vec<RolloutStep>,

    /// When a canary is judged against stable.
    #[serde(default)]
    pub analysis: AnalysisSettings,
}

/// One canary step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of the key space on the canary at this step.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u8,

    /// Seconds to hold this step before it may advance; defaults to the
    /// analysis's `holdSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub hold_seconds: Option<u32>,
}

/// When the canary's pods are judged worse than stable's. Each measure
/// (backend connect failures and handshakes refused by the backend, per
/// upgrade; closes with 1009, closes of slow clients, closes with 1011,
/// closes without a close frame and relay errors, per connection-minute)
/// is compared on its own, counted on the pods that own the connections'
/// keys, over the current step's hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSettings {
    /// Seconds each step holds before it may advance.
    #[serde(default = "defaults::analysis_hold_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub hold_seconds: u32,

    /// Connection-minutes the canary's pods must have served in a step
    /// before it may advance (20 clients for 5 minutes make 100).
    #[serde(default = "defaults::analysis_min_connection_minutes")]
    #[schemars(range(min = 0, max = 100000000))]
    pub min_connection_minutes: u32,

    /// Canary events of one measure needed before that measure may abort
    /// the canary, so that a few never decide however high their rate.
    #[serde(default = "defaults::analysis_min_events")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_events: u32,

    /// Restarts of the canary's data-plane containers in a step that abort
    /// it, when stable's restarted fewer times; 0 turns the check off.
    #[serde(default = "defaults::analysis_restarts_to_abort")]
    #[schemars(range(min = 0, max = 1000))]
    pub restarts_to_abort: u32,

    /// How much worse than stable the upgrade measures may be.
    #[serde(default = "defaults::analysis_upgrade_margin")]
    pub upgrade_margin: AnalysisMargin,

    /// How much worse than stable the connection measures may be.
    #[serde(default = "defaults::analysis_connection_margin")]
    pub connection_margin: AnalysisMargin,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            hold_seconds: defaults::analysis_hold_seconds(),
            min_connection_minutes: defaults::analysis_min_connection_minutes(),
            min_events: defaults::analysis_min_events(),
            restarts_to_abort: defaults::analysis_restarts_to_abort(),
            upgrade_margin: defaults::analysis_upgrade_margin(),
            connection_margin: defaults::analysis_connection_margin(),
        }
    }
}

/// The highest canary rate allowed: stable's rate × (1 + `percent`/100) +
/// `perThousand`/1000 events per unit (upgrade or connection-minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisMargin {
    /// In percent of stable's rate (100: up to twice stable's).
    #[schemars(range(min = 0, max = 100000))]
    pub percent: u32,

    /// On top, in events per thousand units (1: one more bad outcome per
    /// 1,000 connection-minutes or upgrades).
    #[schemars(range(min = 0, max = 1000000))]
    pub per_thousand: u32,
}
