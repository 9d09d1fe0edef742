//! Annotation names that steer rollouts of a gateway.
//!
//! They live on the `WebSocketGateway` object itself, so that a person can
//! drive a canary with `kubectl annotate` and nothing else.

/// Set to [`ROLLOUT_CANARY`] so that spec changes start a canary in the free
/// slot instead of a pod-by-pod rolling update.
pub const ROLLOUT: &str = "ringway.dev/rollout";

/// The value of [`ROLLOUT`] that turns on canary rollouts.
pub const ROLLOUT_CANARY: &str = "canary";

/// Percent of the key space served by the canary, `"0"` to `"100"`. Each
/// change drains exactly the connections whose keys moved; `"100"` promotes.
pub const CANARY_WEIGHT: &str = "ringway.dev/canary-weight";

/// `"true"` drains the canary's keys back to stable and removes the canary.
pub const CANARY_ABORT: &str = "ringway.dev/canary-abort";
