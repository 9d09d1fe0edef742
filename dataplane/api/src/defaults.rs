//! Defaults that the `WebSocketGateway` spec (`ringway-crds`, whose schema
//! shows them) and the data plane's standalone config file share, so that
//! a config reads like a gateway manifest and both start from the same
//! values. They live here because both sides already depend on this crate
//! and the data plane never links kube. Defaults only one side has stay
//! with it (`crds/src/defaults.rs`, `dataplane/src/config.rs`).

/// A route without a prefix takes every request.
pub const PATH_PREFIX: &str = "/";
/// Seconds between the gateway's pings to each client.
pub const HEARTBEAT_INTERVAL_SECONDS: u32 = 20;
/// Seconds a client has to answer a ping.
pub const HEARTBEAT_TIMEOUT_SECONDS: u32 = 10;
/// Seconds without a data message before a connection is closed (0: off).
pub const IDLE_TIMEOUT_SECONDS: u32 = 600;
/// Seconds a client has for TLS and its upgrade request.
pub const HANDSHAKE_TIMEOUT_SECONDS: u32 = 5;
/// Largest frame payload accepted from either side.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
/// Largest message accepted from either side.
pub const MAX_MESSAGE_BYTES: u32 = 4 << 20;
/// Most connections one pod holds: a pod may hold 20,000 file
/// descriptors, and each proxied connection takes two.
pub const MAX_CONNECTIONS_PER_POD: u32 = 9_900;
/// Seconds the closes of one drain are spread over.
pub const DRAIN_WINDOW_SECONDS: u32 = 30;
/// Seconds to wait for the answers to a close frame.
pub const DRAIN_CLOSE_TIMEOUT_SECONDS: u32 = 5;
