//! Annotation names that users write: the ones that steer rollouts of a
//! gateway, and the ones that ask for the data plane as a sidecar beside an
//! application's own container.
//!
//! The rollout annotations live on the `WebSocketGateway` object itself, so
//! that a person can drive a canary with `kubectl annotate` and nothing
//! else. The sidecar annotations live on a pod (in practice on the pod
//! template of a Deployment or StatefulSet), where the operator's mutating
//! admission webhook reads them when the pod is created.

/// Set to [`ROLLOUT_CANARY`] so that a spec change's new version, started in
/// the free slot, takes the key space by the [`CANARY_WEIGHT`] annotation
/// instead of straight to all of it.
pub const ROLLOUT: &str = "ringway.dev/rollout";

/// The value of [`ROLLOUT`] that turns on canary rollouts.
pub const ROLLOUT_CANARY: &str = "canary";

/// Percent of the key space served by the canary, `"0"` to `"100"`. Each
/// change drains exactly the connections whose keys moved; `"100"` promotes.
pub const CANARY_WEIGHT: &str = "ringway.dev/canary-weight";

/// `"true"` holds an automatic canary (`spec.rollout.steps`) at its
/// current step; removing it (or `"false"`) lets the steps go on. The
/// analysis still aborts a paused canary that is worse than stable.
pub const CANARY_PAUSE: &str = "ringway.dev/canary-pause";

/// `"true"` drains the canary's keys back to stable and removes the canary.
pub const CANARY_ABORT: &str = "ringway.dev/canary-abort";

/// On a pod: the name or number of the application container's TCP
/// `containerPort` that the injected sidecar fronts, e.g. `"ws"` or
/// `"8080"`. The sidecar takes over the port's name (the application's
/// port keeps its number), so a Service whose `targetPort` is that name
/// reaches the sidecar; the port must therefore have a name.
pub const SIDECAR: &str = "ringway.dev/sidecar";

/// On a pod with [`SIDECAR`]: seconds the sidecar spreads its clients'
/// closes over when the pod stops, a whole number of at least 1 (default
/// 30). The pod's `terminationGracePeriodSeconds` should exceed it by the
/// close timeout (5 s).
pub const SIDECAR_DRAIN_WINDOW_SECONDS: &str = "ringway.dev/sidecar-drain-window-seconds";

/// On a pod with [`SIDECAR`]: the workload's reconnect budget, the most
/// clients its draining pods close per second together, a whole number of
/// at least 1 (default 100). The operator's leader splits it among the
/// pods that drain at the same time; a pod draining alone, or one the
/// operator does not reach, uses it whole.
pub const SIDECAR_MAX_CLOSES_PER_SECOND: &str = "ringway.dev/sidecar-max-closes-per-second";

/// On a pod with [`SIDECAR`]: the most client connections the sidecar
/// holds at once, a whole number of at least 1 (default 9900, as a
/// gateway pod).
pub const SIDECAR_MAX_CONNECTIONS: &str = "ringway.dev/sidecar-max-connections";
