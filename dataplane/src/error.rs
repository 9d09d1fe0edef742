//! What stops the data plane from starting ([`Error`]) and why a config
//! file, a snapshot, a TLS certificate or a peer token was refused: one
//! enum each, whose variants say what went wrong and where.

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    relay::MIN_FRAME_BYTES,
    routing::{BUCKETS, KeyKind, RouteError, Spelling, Version},
};

/// Everything that stops the data plane from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is missing, malformed or inconsistent.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A port could not be bound.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Bind(..) => "bind",
            Self::Tls(_) => "tls",
        }
    }
}

/// Why a config file (or the sidecar's flags) was refused. Each message
/// starts with the key or flag it is about (`routes[0] (chat).key: …`,
/// `connections.maxConnections: …`, `--max-connections: …`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something in the file at `path` is wrong.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<ConfigError>,
    },
    /// Not YAML, or not the config's shape: serde names the key.
    #[error("{0}")]
    Syntax(#[source] serde_yaml::Error),
    /// A value outside what its key allows.
    #[error("{key}: {problem}")]
    Value {
        /// The key, e.g. `connections.maxConnections`.
        key: &'static str,
        /// What is wrong with its value.
        problem: ValueProblem,
    },
    /// A shard's config has routes.
    #[error(
        "routes: a shard takes its routes from the operator's snapshots; remove `routes` or `shard`"
    )]
    ShardWithRoutes,
    /// A route's key has the wrong fields for its source.
    #[error("routes[{index}] ({route}).key: {}", key_shape(*kind))]
    KeyShape {
        /// The route's index.
        index: usize,
        /// The route's name.
        route: String,
        /// Its key's source.
        kind: KeyKind,
    },
    /// A route has no backend.
    #[error("routes[{index}] ({route}).backends: at least one backend is needed")]
    NoBackends {
        /// The route's index.
        index: usize,
        /// The route's name.
        route: String,
    },
    /// A route's backend is not a `host:port` that resolves.
    #[error("route {route}: backend {backend:?} is not a host:port that resolves")]
    Unresolved {
        /// The route's name.
        route: String,
        /// The backend as written.
        backend: String,
    },
    /// The routes are refused by the check every snapshot's routes pass.
    #[error("{}", .0.describe(Spelling::File))]
    Route(RouteError),
    /// The state the config describes is refused (routes aside, which
    /// [`ConfigError::Route`] names by the file's keys).
    #[error(transparent)]
    Snapshot(SnapshotError),
    /// A shard has no id.
    #[error("shard.id: empty; set it in the config or pass --shard-id")]
    NoShardId,
    /// Sidecar mode: a port flag names another flag's port.
    #[error(
        "{flag}: port {port} is taken by another of --app-port, --listen-port and --admin-port"
    )]
    PortClash {
        /// The flag.
        flag: &'static str,
        /// Its port.
        port: u16,
    },
    /// Sidecar mode: `--termination-grace-seconds` is not a duration.
    #[error("--termination-grace-seconds: {0} is not a number of seconds above 0")]
    BadGrace(f64),
    /// Sidecar mode: the drain token in the environment cannot be one.
    #[error(
        "{}: the drain token must be 16 to 256 visible ASCII characters without spaces",
        ringway_dataplane_api::sidecar::DRAIN_TOKEN_ENV
    )]
    DrainToken,
    /// The peer token file could not be read or holds no valid token.
    #[error("shard.peer.tokenFile {}: {source}", path.display())]
    PeerToken {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TokenError,
    },
}

fn key_shape(source: KeyKind) -> String {
    match source {
        KeyKind::PathSegment => "PathSegment takes `segment` and no `name`".to_owned(),
        other => format!("{other:?} takes `name` and no `segment`"),
    }
}

/// Not a source: the route error's own text names the wire's fields.
impl From<RouteError> for ConfigError {
    fn from(e: RouteError) -> Self {
        Self::Route(e)
    }
}

/// The config file's state compiles into a snapshot, so a refusal of it
/// names the file's keys where it is about a route.
impl From<SnapshotError> for ConfigError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Routes(routes) => routes.into(),
            other => Self::Snapshot(other),
        }
    }
}

/// What is wrong with a config value.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum ValueProblem {
    /// Below the least allowed.
    #[error("must be at least {0}")]
    Below(u64),
    /// Outside a range.
    #[error("{value} is not from {min} to {max}")]
    OutOfRange {
        /// The value.
        value: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
    /// Not a duration of 0 to a day (0 only where `zero_ok`).
    #[error("{value} is not a duration from 0 to 86400 seconds{}", if *zero_ok { "" } else { " (0 excluded)" })]
    Duration {
        /// The value, in seconds.
        value: f64,
        /// Whether 0 (off) is allowed.
        zero_ok: bool,
    },
    /// Not a duration above 0 and at most a minute.
    #[error("{0} is not a duration above 0 and at most 60 seconds")]
    ShortDuration(f64),
    /// `maxFrameBytes` outside 125 to `maxMessageBytes`.
    #[error("maxFrameBytes must be at least {MIN_FRAME_BYTES} and at most maxMessageBytes")]
    FrameLimits,
    /// `maxQueuedBytes` below what one stalled client holds.
    #[error(
        "{queued} is less than one stalled client holds ({one_stall}: twice sendBufferBytes and one read)"
    )]
    BelowOneStall {
        /// The value.
        queued: u64,
        /// What one stalled client holds.
        one_stall: u64,
    },
}

/// Why a snapshot was refused, naming the field (protobuf names).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A pushed snapshot has epoch 0 (only the config file's has).
    #[error("epoch: must be at least 1")]
    EpochZero,
    /// Its routes are refused.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// `versions[index].version` is neither stable nor canary.
    #[error("versions[{index}].version: must be STABLE or CANARY")]
    UnknownVersion {
        /// The version's index.
        index: usize,
    },
    /// Two versions are the same one.
    #[error("versions[{index}]: a second {} version", version.label())]
    SecondVersion {
        /// The second one's index.
        index: usize,
        /// Which version.
        version: Version,
    },
    /// No version is stable.
    #[error("versions: the STABLE version is missing")]
    NoStable,
    /// The canary's share is above 100%.
    #[error("canary_basis_points: {0} is above {BUCKETS} (100%)")]
    CanaryAbove(u32),
    /// A canary share without a canary.
    #[error("canary_basis_points: {0} with no CANARY version to send keys to")]
    CanaryWithoutVersion(u32),
    /// A shard of a version is refused.
    #[error("versions[{version}].shards[{index}].{problem}")]
    Shard {
        /// The version's index.
        version: usize,
        /// The shard's index.
        index: usize,
        /// What is wrong.
        problem: ShardProblem,
    },
    /// The backends of a route in a version are refused.
    #[error("versions[{version}].backends[{index}] ({route}).{problem}")]
    Backends {
        /// The version's index.
        version: usize,
        /// The index of the route's backends.
        index: usize,
        /// The route they name.
        route: String,
        /// What is wrong.
        problem: BackendsProblem,
    },
    /// The frame and message limits do not fit together.
    #[error(
        "limits: max_frame_bytes ({max_frame}) must be at least {MIN_FRAME_BYTES} and at most max_message_bytes ({max_message})"
    )]
    FrameLimits {
        /// The frame limit the snapshot leads to.
        max_frame: u64,
        /// The message limit it leads to.
        max_message: u64,
    },
    /// A version's own frame and message limits do not fit together.
    #[error(
        "versions[{index}] ({}).limits: max_frame_bytes ({max_frame}) must be at least {MIN_FRAME_BYTES} and at most max_message_bytes ({max_message})",
        version.label()
    )]
    VersionFrameLimits {
        /// The version's index.
        index: usize,
        /// Which version.
        version: Version,
        /// The frame limit the version leads to.
        max_frame: u64,
        /// The message limit it leads to.
        max_message: u64,
    },
}

/// What is wrong with a shard of a snapshot (the message goes on from its
/// field's name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardProblem {
    /// No id.
    #[error("id: must not be empty")]
    IdEmpty,
    /// Its id is another shard's.
    #[error("id: shard {0} is listed twice")]
    IdTaken(String),
    /// Its peer address is no `ip:port`.
    #[error("peer_address: {0:?} is not an ip:port")]
    PeerAddress(String),
}

/// What is wrong with a route's backends in a snapshot (the message goes
/// on from its field's name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendsProblem {
    /// No route has this name.
    #[error("route: no route has this name")]
    UnknownRoute,
    /// The route's backends are listed twice.
    #[error("route: this route's backends are listed twice")]
    RouteTwice,
    /// Backend `index` has no id.
    #[error("backends[{0}].id: must not be empty")]
    IdEmpty(usize),
    /// Backend `index` has another backend's id.
    #[error("backends[{index}].id: backend {id} is listed twice")]
    IdTaken {
        /// The backend's index.
        index: usize,
        /// Its id.
        id: String,
    },
    /// Backend `index`'s address is no `ip:port`.
    #[error("backends[{index}].address: {address:?} is not an ip:port")]
    Address {
        /// The backend's index.
        index: usize,
        /// The address.
        address: String,
    },
}

/// Why a TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the protocol versions.
    #[error("{0}")]
    Versions(#[source] rustls::Error),
    /// rustls refused the certificate and key.
    #[error("certificate and key: {0}")]
    CertificateAndKey(#[source] rustls::Error),
    /// The session ticket keys could not be made (no randomness).
    #[error("session ticket keys: {0}")]
    Tickets(#[source] rustls::Error),
    /// A file of the control port could not be read.
    #[error("shard.control.{key} {}: {source}", path.display())]
    ControlFile {
        /// Its config key (`certFile`, `keyFile`, `clientCaFile`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control port's files were read but cannot make its TLS setup
    /// (not PEM, no certificate, a key that is not the certificate's).
    #[error("the control port's certificate, key or CA cannot be used: {0}")]
    ControlSetup(String),
}

/// Why a peer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// Too short or too long.
    #[error("the peer token must be 16 to 256 characters, not {0}")]
    Length(usize),
    /// Spaces or non-ASCII.
    #[error("the peer token must be visible ASCII without spaces")]
    NotVisibleAscii,
}
