//! The configuration file: its shape (serde), its defaults, and the checks
//! of what only the file holds (listener, admin, shard, limits, drain,
//! runtime). Field names and defaults follow the `WebSocketGateway` spec,
//! so a config reads like a gateway manifest; the defaults both share are
//! [`ringway_dataplane_api::defaults`]. A standalone config's routes and
//! backends compile into the same snapshot the operator sends
//! (`compile.rs`), and are checked where every snapshot is.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ringway_dataplane_api::defaults;
use serde::Deserialize;

use crate::{
    error::{ConfigError, ValueProblem},
    relay::frame_limits_ok,
    routing::{KeyKind, MissingKey},
};

mod compile;

/// The whole standalone configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    pub listener: ListenerConfig,
    /// The admin port: health, readiness, metrics and drain.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Routes, matched by the longest path prefix. Standalone only: a
    /// shard takes its routes from the operator's snapshots.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Limits of every client connection.
    #[serde(default)]
    pub connections: ConnectionConfig,
    /// How connections are closed when the pod stops.
    #[serde(default)]
    pub drain: DrainConfig,
    /// The async runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Run as one shard of a gateway steered by the operator, instead of
    /// standalone.
    #[serde(default)]
    pub shard: Option<ShardConfig>,
}

/// A shard of a gateway: its identity, the peer port where other shards
/// hand it the connections it owns, and the control port where the
/// operator pushes snapshots.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardConfig {
    /// The shard's id (the pod name), as the snapshots name it. The
    /// `--shard-id` flag (`RINGWAY_SHARD_ID`) overrides it.
    #[serde(default)]
    pub id: String,
    /// The peer port.
    pub peer: PeerConfig,
    /// The control port.
    pub control: ControlConfig,
}

/// The peer port: hand-offs from other shards.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// `host:port` to listen on.
    pub address: SocketAddr,
    /// A file holding the token every shard of the gateway shares; a
    /// hand-off without it is refused.
    pub token_file: PathBuf,
    /// Time to reach the owner shard before falling back to the next one.
    #[serde(default = "default_peer_connect_timeout")]
    pub connect_timeout_seconds: f64,
}

/// The control port: gRPC over mutual TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlConfig {
    /// `host:port` to listen on.
    pub address: SocketAddr,
    /// This pod's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA (PEM) that a client's certificate must chain to.
    pub client_ca_file: PathBuf,
}

/// Seconds to reach an owner shard before falling back to the next one.
pub const PEER_CONNECT_TIMEOUT_SECONDS: f64 = 0.3;

fn default_peer_connect_timeout() -> f64 {
    PEER_CONNECT_TIMEOUT_SECONDS
}

/// The client listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// `host:port` to listen on; port 0 picks a free one.
    pub address: SocketAddr,
    /// Set `SO_REUSEPORT`, so that several processes share the address and
    /// the kernel spreads connections among them.
    #[serde(default)]
    pub reuse_port: bool,
    /// Serve TLS (wss://) with this certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The admin HTTP port.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of `/healthz`, `/readyz` and `/metrics`, and of
    /// `POST /drain`, which only a loopback client may send.
    pub address: SocketAddr,
}

/// One route.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; labels metrics.
    pub name: String,
    /// Requests whose path starts with it take this route.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Where the routing key comes from.
    pub key: KeyConfig,
    /// What to do when the key is missing.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Backend addresses (`host:port`); keys are spread over them by a
    /// consistent hash.
    pub backends: Vec<String>,
}

/// Where a route's key is read from, in the file's shape (as the gateway
/// spec's): the part of the request and its name or segment.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyConfig {
    /// `Header`, `Query`, `Cookie` or `PathSegment`.
    pub source: KeyKind,
    /// The header, query parameter or cookie name.
    #[serde(default)]
    pub name: Option<String>,
    /// The zero-based path segment, for `PathSegment`.
    #[serde(default)]
    pub segment: Option<usize>,
}

/// Limits of client connections. Durations are in seconds and may have
/// decimals.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Gateway-to-client pings.
    pub heartbeat: HeartbeatConfig,
    /// Close after this long without a data message either way; 0 is off.
    pub idle_timeout_seconds: f64,
    /// Largest frame payload accepted from either side.
    pub max_frame_bytes: u64,
    /// Largest message accepted from either side.
    pub max_message_bytes: u64,
    /// Most connections held at once; more are answered 503.
    pub max_connections: usize,
    /// Time a client has for TLS and its upgrade request.
    pub handshake_timeout_seconds: f64,
    /// Largest upgrade request head (request line and headers).
    pub max_request_header_bytes: usize,
    /// Time to open the TCP connection to a backend (then 504).
    pub backend_connect_timeout_seconds: f64,
    /// Time for the backend to answer the upgrade (then 504).
    pub backend_handshake_timeout_seconds: f64,
    /// A client that has not taken any data for this long while the backend
    /// sends is a slow consumer: it is closed with 1008.
    pub slow_consumer_seconds: f64,
    /// Each client socket's send buffer (`SO_SNDBUF`; the kernel doubles
    /// it for its own bookkeeping): with one read waiting in the gateway,
    /// the most a client that does not keep up holds.
    pub send_buffer_bytes: usize,
    /// The most memory all clients that do not keep up hold together:
    /// past it, the longest stalled are closed with 1013.
    pub max_queued_bytes: u64,
}

/// The default of `connections.maxRequestHeaderBytes`.
pub const MAX_REQUEST_HEADER_BYTES: usize = 8 * 1024;
/// The default of `connections.backendConnectTimeoutSeconds`.
pub const BACKEND_CONNECT_TIMEOUT_SECONDS: f64 = 3.0;
/// The default of `connections.backendHandshakeTimeoutSeconds`.
pub const BACKEND_HANDSHAKE_TIMEOUT_SECONDS: f64 = 5.0;
/// The default of `connections.slowConsumerSeconds`.
pub const SLOW_CONSUMER_SECONDS: f64 = 30.0;
/// The default of `connections.sendBufferBytes`.
pub const SEND_BUFFER_BYTES: usize = 128 * 1024;
/// The default of `connections.maxQueuedBytes`.
pub const MAX_QUEUED_BYTES: u64 = 256 << 20;

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            idle_timeout_seconds: f64::from(defaults::IDLE_TIMEOUT_SECONDS),
            max_frame_bytes: u64::from(defaults::MAX_FRAME_BYTES),
            max_message_bytes: u64::from(defaults::MAX_MESSAGE_BYTES),
            max_connections: defaults::MAX_CONNECTIONS_PER_POD as usize,
            handshake_timeout_seconds: f64::from(defaults::HANDSHAKE_TIMEOUT_SECONDS),
            max_request_header_bytes: MAX_REQUEST_HEADER_BYTES,
            backend_connect_timeout_seconds: BACKEND_CONNECT_TIMEOUT_SECONDS,
            backend_handshake_timeout_seconds: BACKEND_HANDSHAKE_TIMEOUT_SECONDS,
            slow_consumer_seconds: SLOW_CONSUMER_SECONDS,
            send_buffer_bytes: SEND_BUFFER_BYTES,
            max_queued_bytes: MAX_QUEUED_BYTES,
        }
    }
}

/// Gateway-to-client pings.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Time between pings.
    pub interval_seconds: f64,
    /// Time to wait for the pong; then the connection is closed with 1011.
    pub timeout_seconds: f64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_seconds: f64::from(defaults::HEARTBEAT_INTERVAL_SECONDS),
            timeout_seconds: f64::from(defaults::HEARTBEAT_TIMEOUT_SECONDS),
        }
    }
}

/// How a stopping data plane closes its connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Closes are spread over this window.
    pub window_seconds: f64,
    /// Time to wait for the answers to a close frame.
    pub close_timeout_seconds: f64,
    /// At most this many closes per second.
    pub max_closes_per_second: u32,
    /// The reconnect hint in close reasons (`retry-after-ms=N`) is drawn
    /// from 0 up to this many milliseconds.
    pub reconnect_jitter_ms: u32,
}

/// The default of `drain.maxClosesPerSecond`.
pub const MAX_CLOSES_PER_SECOND: u32 = 1_000;
/// The default of `drain.reconnectJitterMs`.
pub const RECONNECT_JITTER_MS: u32 = 5_000;

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            window_seconds: f64::from(defaults::DRAIN_WINDOW_SECONDS),
            close_timeout_seconds: f64::from(defaults::DRAIN_CLOSE_TIMEOUT_SECONDS),
            max_closes_per_second: MAX_CLOSES_PER_SECOND,
            reconnect_jitter_ms: RECONNECT_JITTER_MS,
        }
    }
}

/// The async runtime.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 uses one per CPU this process may run on.
    pub worker_threads: usize,
}

fn default_path_prefix() -> String {
    defaults::PATH_PREFIX.to_owned()
}

impl Config {
    /// Parses and checks a YAML config.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text).map_err(ConfigError::Syntax)?;
        config.check()?;
        Ok(config)
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| ConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Checks what only the config holds (the routes as every snapshot's
    /// are, the limits, the durations).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        match &self.shard {
            None => self.check_routes()?,
            Some(_) if !self.routes.is_empty() => return Err(ConfigError::ShardWithRoutes),
            Some(shard) => {
                let t = shard.peer.connect_timeout_seconds;
                if !t.is_finite() || t <= 0.0 || t > 60.0 {
                    return Err(ConfigError::Value {
                        key: "shard.peer.connectTimeoutSeconds",
                        problem: ValueProblem::ShortDuration(t),
                    });
                }
            }
        }
        self.check_connections()?;
        self.check_durations()?;
        if self.drain.max_closes_per_second == 0 {
            return Err(ConfigError::Value {
                key: "drain.maxClosesPerSecond",
                problem: ValueProblem::Below(1),
            });
        }
        Ok(())
    }

    fn check_connections(&self) -> Result<(), ConfigError> {
        let c = &self.connections;
        let value = |key, problem| Err(ConfigError::Value { key, problem });
        if !frame_limits_ok(c.max_frame_bytes, c.max_message_bytes) {
            return value("connections", ValueProblem::FrameLimits);
        }
        if c.max_connections == 0 {
            return value("connections.maxConnections", ValueProblem::Below(1));
        }
        if !(MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&c.send_buffer_bytes) {
            return value(
                "connections.sendBufferBytes",
                ValueProblem::OutOfRange {
                    value: c.send_buffer_bytes as u64,
                    min: MIN_SEND_BUFFER as u64,
                    max: MAX_SEND_BUFFER as u64,
                },
            );
        }
        let one_stall = crate::send_queues::charge(2 * c.send_buffer_bytes);
        if c.max_queued_bytes < one_stall {
            return value(
                "connections.maxQueuedBytes",
                ValueProblem::BelowOneStall {
                    queued: c.max_queued_bytes,
                    one_stall,
                },
            );
        }
        if c.max_request_header_bytes < MIN_REQUEST_HEADER_BYTES {
            return value(
                "connections.maxRequestHeaderBytes",
                ValueProblem::Below(MIN_REQUEST_HEADER_BYTES as u64),
            );
        }
        Ok(())
    }

    fn check_durations(&self) -> Result<(), ConfigError> {
        let c = &self.connections;
        for (key, value, zero_ok) in [
            (
                "connections.heartbeat.intervalSeconds",
                c.heartbeat.interval_seconds,
                false,
            ),
            (
                "connections.heartbeat.timeoutSeconds",
                c.heartbeat.timeout_seconds,
                false,
            ),
            (
                "connections.idleTimeoutSeconds",
                c.idle_timeout_seconds,
                true,
            ),
            (
                "connections.handshakeTimeoutSeconds",
                c.handshake_timeout_seconds,
                false,
            ),
            (
                "connections.backendConnectTimeoutSeconds",
                c.backend_connect_timeout_seconds,
                false,
            ),
            (
                "connections.backendHandshakeTimeoutSeconds",
                c.backend_handshake_timeout_seconds,
                false,
            ),
            (
                "connections.slowConsumerSeconds",
                c.slow_consumer_seconds,
                false,
            ),
            ("drain.windowSeconds", self.drain.window_seconds, false),
            (
                "drain.closeTimeoutSeconds",
                self.drain.close_timeout_seconds,
                false,
            ),
        ] {
            if !value.is_finite() || value < 0.0 || (value == 0.0 && !zero_ok) || value > 86_400.0 {
                return Err(ConfigError::Value {
                    key,
                    problem: ValueProblem::Duration { value, zero_ok },
                });
            }
        }
        Ok(())
    }
}

/// Bounds of `connections.sendBufferBytes`: Linux's own floor (4,608
/// after doubling) and 16 MiB.
const MIN_SEND_BUFFER: usize = 4 * 1024;
const MAX_SEND_BUFFER: usize = 16 << 20;
/// The least `connections.maxRequestHeaderBytes`.
const MIN_REQUEST_HEADER_BYTES: usize = 256;

/// Seconds (with decimals) as a `Duration`; the config was validated.
pub(crate) fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0))
}

#[cfg(test)]
mod tests;
