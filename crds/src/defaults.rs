//! Named defaults for every optional field, shared by serde and the schema
//! (the API server fills them in, so `kubectl get -o yaml` shows them).
//! The ones the standalone config file shares come from
//! [`ringway_dataplane_api::defaults`]; the rest are the spec's own.

pub use ringway_dataplane_api::defaults::*;

use crate::AnalysisMargin;

/// Two pods per version: one can stop without a gap.
pub const SHARDS: u16 = 2;
/// The client listener's container port.
pub const LISTENER_PORT: u16 = 8080;
/// The disruption budget's closes per second, for the whole gateway.
pub const BUDGET_MAX_RECONNECTS_PER_SECOND: u32 = 1_000;
/// The disruption budget's share of connections disrupted per window.
pub const BUDGET_MAX_DISRUPTED_PERCENT: u8 = 10;
/// The disruption budget's window.
pub const BUDGET_WINDOW_SECONDS: u32 = 60;

/// Seconds a canary step holds before it may advance.
pub const ANALYSIS_HOLD_SECONDS: u32 = 300;
/// Canary connection-minutes a step needs before it may advance.
pub const ANALYSIS_MIN_CONNECTION_MINUTES: u32 = 100;
/// Canary events of one measure before it may abort.
pub const ANALYSIS_MIN_EVENTS: u32 = 20;
/// Canary restarts in a step that abort it (a crash drops all of a pod's
/// connections at once, outside the disruption budget).
pub const ANALYSIS_RESTARTS_TO_ABORT: u32 = 1;
/// Upgrade measures: up to twice stable's rate plus 0.5% of the upgrades.
pub const ANALYSIS_UPGRADE_MARGIN: AnalysisMargin = AnalysisMargin {
    percent: 100,
    per_thousand: 5,
};
/// Connection measures: up to twice stable's rate plus one per 1,000
/// connection-minutes (at 50,000 canary connections, 250 more abnormal
/// ends than stable's rate over a 5-minute hold).
pub const ANALYSIS_CONNECTION_MARGIN: AnalysisMargin = AnalysisMargin {
    percent: 100,
    per_thousand: 1,
};

/// Defines one `fn name() -> Type` per default: serde's `default = "..."`
/// and schemars both want a function path.
macro_rules! default_fns {
    ($($name:ident: $ty:ty = $value:expr;)*) => {
        $(pub(crate) fn $name() -> $ty { $value.into() })*
    };
}

default_fns! {
    shards: u16 = SHARDS;
    listener_port: u16 = LISTENER_PORT;
    path_prefix: String = PATH_PREFIX;
    heartbeat_interval_seconds: u32 = HEARTBEAT_INTERVAL_SECONDS;
    heartbeat_timeout_seconds: u32 = HEARTBEAT_TIMEOUT_SECONDS;
    idle_timeout_seconds: u32 = IDLE_TIMEOUT_SECONDS;
    handshake_timeout_seconds: u32 = HANDSHAKE_TIMEOUT_SECONDS;
    max_frame_bytes: u32 = MAX_FRAME_BYTES;
    max_message_bytes: u32 = MAX_MESSAGE_BYTES;
    max_connections_per_pod: u32 = MAX_CONNECTIONS_PER_POD;
    drain_window_seconds: u32 = DRAIN_WINDOW_SECONDS;
    drain_close_timeout_seconds: u32 = DRAIN_CLOSE_TIMEOUT_SECONDS;
    budget_max_reconnects_per_second: u32 = BUDGET_MAX_RECONNECTS_PER_SECOND;
    budget_max_disrupted_percent: u8 = BUDGET_MAX_DISRUPTED_PERCENT;
    budget_window_seconds: u32 = BUDGET_WINDOW_SECONDS;
    analysis_hold_seconds: u32 = ANALYSIS_HOLD_SECONDS;
    analysis_min_connection_minutes: u32 = ANALYSIS_MIN_CONNECTION_MINUTES;
    analysis_min_events: u32 = ANALYSIS_MIN_EVENTS;
    analysis_restarts_to_abort: u32 = ANALYSIS_RESTARTS_TO_ABORT;
    analysis_upgrade_margin: AnalysisMargin = ANALYSIS_UPGRADE_MARGIN;
    analysis_connection_margin: AnalysisMargin = ANALYSIS_CONNECTION_MARGIN;
}
