//! The standalone configuration file: routes with static backends and the
//! limits every connection lives under. Field names and defaults follow the
//! `WebSocketGateway` spec, so a config reads like a gateway manifest.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::Error;

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

fn default_peer_connect_timeout() -> f64 {
    0.3
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

/// Where a route's key is read from.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyConfig {
    /// `Header`, `Query`, `Cookie` or `PathSegment`.
    pub source: KeySourceKind,
    /// The header, query parameter or cookie name.
    #[serde(default)]
    pub name: Option<String>,
    /// The zero-based path segment, for `PathSegment`.
    #[serde(default)]
    pub segment: Option<usize>,
}

/// The part of the request that holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum KeySourceKind {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
    /// A cookie.
    Cookie,
    /// A path segment.
    PathSegment,
}

/// What a route does with a request that has no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum MissingKey {
    /// Answer 400.
    #[default]
    Reject,
    /// Use a random key.
    Random,
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

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            heartbeat: HeartbeatConfig::default(),
            idle_timeout_seconds: 600.0,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 4 << 20,
            max_connections: 9_900,
            handshake_timeout_seconds: 5.0,
            max_request_header_bytes: 8 * 1024,
            backend_connect_timeout_seconds: 3.0,
            backend_handshake_timeout_seconds: 5.0,
            slow_consumer_seconds: 30.0,
            send_buffer_bytes: 128 * 1024,
            max_queued_bytes: 256 << 20,
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
            interval_seconds: 20.0,
            timeout_seconds: 10.0,
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

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            window_seconds: 30.0,
            close_timeout_seconds: 5.0,
            max_closes_per_second: 1_000,
            reconnect_jitter_ms: 5_000,
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
    "/".to_owned()
}

impl Config {
    /// Parses and checks a YAML config.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Self = serde_yaml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        Self::from_yaml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        match &self.shard {
            None if self.routes.is_empty() => {
                return bad("routes: at least one route is needed".into());
            }
            Some(_) if !self.routes.is_empty() => {
                return bad(
                    "routes: a shard takes its routes from the operator's snapshots; remove `routes` or `shard`"
                        .into(),
                );
            }
            Some(shard) => {
                let t = shard.peer.connect_timeout_seconds;
                if !t.is_finite() || t <= 0.0 || t > 60.0 {
                    return bad(format!(
                        "shard.peer.connectTimeoutSeconds: {t} is not a duration above 0 and at most 60 seconds"
                    ));
                }
            }
            None => {}
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}] ({})", r.name);
            if !r.path_prefix.starts_with('/') {
                return bad(format!("{at}.pathPrefix: must start with '/'"));
            }
            if self.routes[..i].iter().any(|o| o.name == r.name) {
                return bad(format!("{at}.name: another route has this name"));
            }
            if self.routes[..i]
                .iter()
                .any(|o| o.path_prefix == r.path_prefix)
            {
                return bad(format!("{at}.pathPrefix: another route has this prefix"));
            }
            match (r.key.source, &r.key.name, r.key.segment) {
                (KeySourceKind::PathSegment, None, Some(_)) => {}
                (KeySourceKind::PathSegment, _, _) => {
                    return bad(format!(
                        "{at}.key: PathSegment takes `segment` and no `name`"
                    ));
                }
                (_, Some(n), None) if !n.is_empty() => {}
                (kind, _, _) => {
                    return bad(format!("{at}.key: {kind:?} takes `name` and no `segment`"));
                }
            }
            if r.backends.is_empty() {
                return bad(format!("{at}.backends: at least one backend is needed"));
            }
        }
        let c = &self.connections;
        if c.max_frame_bytes < 125 || c.max_frame_bytes > c.max_message_bytes {
            return bad(
                "connections: maxFrameBytes must be at least 125 and at most maxMessageBytes"
                    .into(),
            );
        }
        if c.max_connections == 0 {
            return bad("connections.maxConnections: must be at least 1".into());
        }
        if !(MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&c.send_buffer_bytes) {
            return bad(format!(
                "connections.sendBufferBytes: {} is not from {MIN_SEND_BUFFER} to {MAX_SEND_BUFFER}",
                c.send_buffer_bytes
            ));
        }
        let one_stall = crate::send_queues::charge(2 * c.send_buffer_bytes);
        if c.max_queued_bytes < one_stall {
            return bad(format!(
                "connections.maxQueuedBytes: {} is less than one stalled client holds ({one_stall}: twice sendBufferBytes and one read)",
                c.max_queued_bytes
            ));
        }
        if c.max_request_header_bytes < 256 {
            return bad("connections.maxRequestHeaderBytes: must be at least 256".into());
        }
        for (name, v, zero_ok) in [
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
            if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) || v > 86_400.0 {
                return bad(format!(
                    "{name}: {v} is not a duration from 0 to 86400 seconds{}",
                    if zero_ok { "" } else { " (0 excluded)" }
                ));
            }
        }
        if self.drain.max_closes_per_second == 0 {
            return bad("drain.maxClosesPerSecond: must be at least 1".into());
        }
        Ok(())
    }
}

/// Bounds of `connections.sendBufferBytes`: Linux's own floor (4,608
/// after doubling) and 16 MiB.
const MIN_SEND_BUFFER: usize = 4 * 1024;
const MAX_SEND_BUFFER: usize = 16 << 20;

/// Seconds (with decimals) as a `Duration`; the config was validated.
pub(crate) fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `examples/<name>`, found from the crate at run time.
    fn example(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
        )
        .join("../examples")
        .join(name)
    }

    #[test]
    fn the_example_config_loads() {
        let config =
            Config::load(&example("standalone.yaml")).expect("examples/standalone.yaml is valid");
        assert_eq!(config.routes[0].backends.len(), 2);
        assert_eq!(config.connections.max_connections, 9_900);
    }

    #[test]
    fn the_example_shard_config_loads() {
        let config = Config::load(&example("shard.yaml")).expect("examples/shard.yaml is valid");
        let shard = config.shard.expect("a shard section");
        assert!(config.routes.is_empty());
        assert_eq!(shard.control.address.port(), 7443);
        assert_eq!(shard.peer.address.port(), 7000);
        let both = "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query, name: k}, backends: [127.0.0.1:1]}]\nshard: {peer: {address: 127.0.0.1:0, tokenFile: t}, control: {address: 127.0.0.1:0, certFile: c, keyFile: k, clientCaFile: ca}}\n";
        let err = Config::from_yaml(both).unwrap_err().to_string();
        assert!(
            err.contains("a shard takes its routes from the operator's snapshots"),
            "{err}"
        );
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let base = "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query, name: k}, backends: [127.0.0.1:1]}]\n";
        let err = |extra: &str| {
            Config::from_yaml(&format!("{base}{extra}"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("conections: {}").contains("unknown field `conections`"));
        assert!(err("connections: {maxFrameBytes: 10}").contains("maxFrameBytes"));
        assert!(err("drain: {windowSeconds: -1}").contains("drain.windowSeconds"));
        let no_name = Config::from_yaml("listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Header}, backends: [x:1]}]")
            .unwrap_err()
            .to_string();
        assert!(
            no_name.contains("routes[0] (a).key: Header takes `name`"),
            "{no_name}"
        );
    }
}
