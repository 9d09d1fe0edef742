//! The client listener and the limits every client connection lives under.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

/// The client-facing listener of each data-plane pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Container port for client WebSockets. The gateway's client Service
    /// exposes the same port number.
    #[serde(default = "defaults::listener_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// Name of a `kubernetes.io/tls` Secret in the gateway's namespace. When
    /// set, clients connect with TLS (wss://) and the pods present this
    /// certificate; when unset, the listener is plain (ws://), for use behind
    /// a TLS-terminating load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub tls_secret_name: Option<String>,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            port: defaults::listener_port(),
            tls_secret_name: None,
        }
    }
}

/// Heartbeats, timeouts and size limits of client connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.maxFrameBytes <= self.maxMessageBytes",
        "message": "maxFrameBytes must not exceed maxMessageBytes",
        "fieldPath": ".maxFrameBytes",
    },
    {
        "rule": "self.idleTimeoutSeconds == 0 || self.idleTimeoutSeconds > self.heartbeat.intervalSeconds",
        "message": "idleTimeoutSeconds must be 0 (off) or longer than heartbeat.intervalSeconds",
        "fieldPath": ".idleTimeoutSeconds",
    },
]))]
pub struct ConnectionSettings {
    /// Pings the gateway sends to clients to find dead connections.
    #[serde(default)]
    pub heartbeat: Heartbeat,

    /// Close a connection (code 1001) after this many seconds without a data
    /// message in either direction. Pings and pongs do not count as activity.
    /// 0 turns idle closing off.
    #[serde(default = "defaults::idle_timeout_seconds")]
    #[schemars(range(max = 86400))]
    pub idle_timeout_seconds: u32,

    /// Largest WebSocket frame payload accepted from either side, in bytes.
    /// A larger frame closes the connection with 1009 (message too big).
    #[serde(default = "defaults::max_frame_bytes")]
    #[schemars(range(min = 125, max = 67108864))]
    pub max_frame_bytes: u32,

    /// Largest message (all fragments together) accepted from either side,
    /// in bytes. A larger message closes the connection with 1009.
    #[serde(default = "defaults::max_message_bytes")]
    #[schemars(range(min = 125, max = 268435456))]
    pub max_message_bytes: u32,

    /// Most client connections one data-plane pod holds. Upgrades beyond it
    /// are answered with 503 so that the client retries another pod. Each
    /// connection uses two file descriptors (client and backend).
    #[serde(default = "defaults::max_connections_per_pod")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections_per_pod: u32,

    /// Seconds a client has to send a complete HTTP upgrade request after
    /// connecting (and to finish TLS, when the listener has TLS). Slower
    /// clients are disconnected and counted.
    #[serde(default = "defaults::handshake_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub handshake_timeout_seconds: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            idle_timeout_seconds: defaults::idle_timeout_seconds(),
            max_frame_bytes: defaults::max_frame_bytes(),
            max_message_bytes: defaults::max_message_bytes(),
            max_connections_per_pod: defaults::max_connections_per_pod(),
            handshake_timeout_seconds: defaults::handshake_timeout_seconds(),
        }
    }
}

/// Gateway-to-client pings. Pongs to these pings are consumed by the gateway;
/// pings and pongs between client and backend pass through untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Seconds between pings sent to each client.
    #[serde(default = "defaults::heartbeat_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,

    /// Seconds to wait for the pong to a ping. A client that has not answered
    /// by then is closed with 1011 and counted as a heartbeat timeout.
    #[serde(default = "defaults::heartbeat_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval_seconds: defaults::heartbeat_interval_seconds(),
            timeout_seconds: defaults::heartbeat_timeout_seconds(),
        }
    }
}
