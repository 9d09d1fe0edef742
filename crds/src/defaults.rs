//! Named defaults for every optional field, shared by serde and the schema
//! (the API server fills them in, so `kubectl get -o yaml` shows them).

/// Defines one `fn name() -> Type` per default: serde's `default = "..."`
/// and schemars both want a function path.
macro_rules! defaults {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$doc])* pub(crate) fn $name() -> $ty { $value.into() })*
    };
}

defaults! {
    /// Two pods per version: one can stop without a gap.
    shards: u16 = 2u16;
    listener_port: u16 = 8080u16;
    path_prefix: String = "/";
    heartbeat_interval_seconds: u32 = 20u32;
    heartbeat_timeout_seconds: u32 = 10u32;
    idle_timeout_seconds: u32 = 600u32;
    handshake_timeout_seconds: u32 = 5u32;
    max_frame_bytes: u32 = 1u32 << 20;
    max_message_bytes: u32 = 4u32 << 20;
    /// A pod may hold 20,000 file descriptors; each proxied connection takes two.
    max_connections_per_pod: u32 = 9_900u32;
    drain_window_seconds: u32 = 30u32;
    drain_close_timeout_seconds: u32 = 5u32;
    budget_max_reconnects_per_second: u32 = 1_000u32;
    budget_max_disrupted_percent: u8 = 10u8;
    budget_window_seconds: u32 = 60u32;
}
