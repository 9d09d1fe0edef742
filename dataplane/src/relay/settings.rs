//! The limits and timers of relayed connections, as the snapshot sets them.

use std::time::Duration;

/// Limits and timers of relayed connections.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Largest frame payload.
    pub max_frame: u64,
    /// Largest message.
    pub max_message: u64,
    /// Time between the gateway's pings to the client.
    pub heartbeat_interval: Duration,
    /// Time the client has to answer a ping.
    pub heartbeat_timeout: Duration,
    /// Close after this long without data; `None` never.
    pub idle_timeout: Option<Duration>,
    /// Close a client that takes no data for this long.
    pub slow_consumer: Duration,
    /// Time to wait for the answers to a close frame.
    pub close_timeout: Duration,
    /// Upper bound of the reconnect hint in drain close reasons.
    pub reconnect_jitter_ms: u32,
}

/// The smallest frame limit: every control frame (up to 125 bytes) fits.
pub const MIN_FRAME_BYTES: u64 = 125;

/// Whether `max_frame` and `max_message` make sense together: at least
/// [`MIN_FRAME_BYTES`], and no frame larger than a message.
pub(crate) fn frame_limits_ok(max_frame: u64, max_message: u64) -> bool {
    (MIN_FRAME_BYTES..=max_message).contains(&max_frame)
}
