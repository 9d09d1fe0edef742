//! What a pod runs on: the routing state of one snapshot, the limits of
//! new connections and how to drain. Built from a `v1::Snapshot` — the
//! operator's, or the one a standalone config compiles into (epoch 0) —
//! over the pod's configured limits, which the snapshot's override. A
//! snapshot that does not make sense is refused whole, with a
//! [`SnapshotError`] naming the field. Replaced whole, never changed.
//!
//! A connection's relay follows the limits of its key's version (which
//! the version's spec may set over the snapshot's), on the owner and on
//! an edge alike: a canary's limits are canaried with it.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use ringway_dataplane_api::v1;

use crate::{
    config::{Config, secs},
    error::{BackendsProblem, ConfigError, ShardProblem, SnapshotError},
    relay::{RelaySettings, frame_limits_ok},
    routing::{BUCKETS, Backend, Pool, RouteTable, RoutingState, Shard, Version, VersionState},
};

/// How a pod drains connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// Closes are spread over this window.
    pub window: Duration,
    /// At most this many closes per second.
    pub max_closes_per_second: u32,
}

/// The limits of a connection before its relay: the client's handshake
/// and the upgrade to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Time a client has for TLS and its upgrade request.
    pub timeout: Duration,
    /// Largest upgrade request head (request line and headers).
    pub max_request_header_bytes: usize,
    /// Time to open the TCP connection to a backend (then 504).
    pub backend_connect_timeout: Duration,
    /// Time for the backend to answer the upgrade (then 504).
    pub backend_handshake_timeout: Duration,
}

/// The state a pod runs on. Immutable; a new one replaces it whole.
#[derive(Debug)]
pub struct RunningState {
    /// Routes, versions, shards and backends.
    pub routing: RoutingState,
    /// Limits of new connections' relays: the snapshot's, which a version
    /// that sets none of its own keeps. Its close timeout is every
    /// version's.
    pub relay: Arc<RelaySettings>,
    /// Limits of the relays of new connections by their key's version.
    version_relays: VersionRelays,
    /// Limits of new connections' handshakes.
    pub handshake: HandshakeLimits,
    /// How connections are drained.
    pub drain: DrainPolicy,
    /// The gateway (`namespace/name`), for logs.
    pub gateway: String,
    /// The snapshot names this shard as retiring: it answers not ready so
    /// that no new client enters through it, and keeps what it holds.
    pub retiring: bool,
}

/// The relay limits of each version: the snapshot's, or the version's own
/// over them.
#[derive(Debug)]
struct VersionRelays {
    stable: Arc<RelaySettings>,
    canary: Arc<RelaySettings>,
}

impl VersionRelays {
    /// Every version on `relay`.
    fn all(relay: &Arc<RelaySettings>) -> Self {
        Self {
            stable: Arc::clone(relay),
            canary: Arc::clone(relay),
        }
    }

    fn of_mut(&mut self, version: Version) -> &mut Arc<RelaySettings> {
        match version {
            Version::Stable => &mut self.stable,
            Version::Canary => &mut self.canary,
        }
    }
}

impl RunningState {
    /// The relay limits of a new connection whose key `version` owns,
    /// whichever pod its client came in through. A version the state
    /// does not run (a canary just removed) has the snapshot's.
    pub fn relay_for(&self, version: Version) -> &Arc<RelaySettings> {
        match version {
            Version::Stable => &self.version_relays.stable,
            Version::Canary => &self.version_relays.canary,
        }
    }

    /// The standalone state: the snapshot the config compiles into (its
    /// routes and backends, one version with no shards: this process
    /// serves every key itself).
    pub fn standalone(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self::build(&config.snapshot()?, config)?)
    }

    /// A shard before its first snapshot: no routes (it is not ready).
    pub fn waiting(config: &Config) -> Self {
        let stable = VersionState::new(Version::Stable, String::new(), Vec::new(), Vec::new());
        let routing = RoutingState::new(0, RouteTable::default(), stable, None, 0);
        Self::configured(config, routing, String::new())
    }

    /// The state a snapshot the operator pushed describes; its epoch is at
    /// least 1 (0 is the standalone config's). Limits and drain settings
    /// the snapshot leaves at 0 keep this pod's configured values (except
    /// the idle timeout, where 0 turns idle closing off).
    pub fn from_snapshot(snapshot: &v1::Snapshot, config: &Config) -> Result<Self, SnapshotError> {
        if snapshot.epoch == 0 {
            return Err(SnapshotError::EpochZero);
        }
        Self::build(snapshot, config)
    }

    /// The one path from a snapshot to the state, whatever its epoch.
    fn build(snapshot: &v1::Snapshot, config: &Config) -> Result<Self, SnapshotError> {
        let table = RouteTable::try_from(snapshot.routes.as_slice())?;
        let (stable, canary) = versions(&snapshot.versions, &table)?;
        let bp = snapshot.canary_basis_points;
        if bp > BUCKETS {
            return Err(SnapshotError::CanaryAbove(bp));
        }
        if bp > 0 && canary.is_none() {
            return Err(SnapshotError::CanaryWithoutVersion(bp));
        }
        let routing = RoutingState::new(snapshot.epoch, table, stable, canary, bp);
        let mut running = Self::configured(config, routing, snapshot.gateway.clone());
        running.retiring = config
            .shard
            .as_ref()
            .is_some_and(|s| snapshot.retiring.contains(&s.id));
        if let Some(limits) = &snapshot.limits {
            running.apply_limits(limits)?;
        }
        if let Some(drain) = &snapshot.drain {
            running.apply_drain(drain);
        }
        running.version_relays = version_relays(&snapshot.versions, &running.relay)?;
        Ok(running)
    }

    /// `routing` under the pod's configured limits and drain policy.
    fn configured(config: &Config, routing: RoutingState, gateway: String) -> Self {
        let c = &config.connections;
        let relay = Arc::new(RelaySettings {
            max_frame: c.max_frame_bytes,
            max_message: c.max_message_bytes,
            heartbeat_interval: secs(c.heartbeat.interval_seconds),
            heartbeat_timeout: secs(c.heartbeat.timeout_seconds),
            idle_timeout: (c.idle_timeout_seconds > 0.0).then(|| secs(c.idle_timeout_seconds)),
            slow_consumer: secs(c.slow_consumer_seconds),
            close_timeout: secs(config.drain.close_timeout_seconds),
            reconnect_jitter_ms: config.drain.reconnect_jitter_ms,
        });
        Self {
            routing,
            version_relays: VersionRelays::all(&relay),
            relay,
            handshake: HandshakeLimits {
                timeout: secs(c.handshake_timeout_seconds),
                max_request_header_bytes: c.max_request_header_bytes,
                backend_connect_timeout: secs(c.backend_connect_timeout_seconds),
                backend_handshake_timeout: secs(c.backend_handshake_timeout_seconds),
            },
            drain: DrainPolicy {
                window: secs(config.drain.window_seconds),
                max_closes_per_second: config.drain.max_closes_per_second,
            },
            gateway,
            retiring: false,
        }
    }

    /// The snapshot's connection limits over the configured ones.
    fn apply_limits(&mut self, l: &v1::ConnectionLimits) -> Result<(), SnapshotError> {
        limit_relay(Arc::make_mut(&mut self.relay), l).map_err(|(max_frame, max_message)| {
            SnapshotError::FrameLimits {
                max_frame,
                max_message,
            }
        })?;
        if l.handshake_timeout_ms > 0 {
            self.handshake.timeout = ms(l.handshake_timeout_ms);
        }
        Ok(())
    }

    /// The snapshot's drain settings over the configured ones.
    fn apply_drain(&mut self, drain: &v1::DrainSettings) {
        if drain.window_ms > 0 {
            self.drain.window = ms(drain.window_ms);
        }
        if drain.max_closes_per_second > 0 {
            self.drain.max_closes_per_second = drain.max_closes_per_second;
        }
        if drain.close_timeout_ms > 0 {
            Arc::make_mut(&mut self.relay).close_timeout = ms(drain.close_timeout_ms);
        }
    }
}

/// The relay limits `l` sets over `relay`'s: those left at 0 stay (but
/// an idle timeout of 0 is off). The frame and message limits it leads to
/// when they do not fit together.
fn limit_relay(relay: &mut RelaySettings, l: &v1::ConnectionLimits) -> Result<(), (u64, u64)> {
    if l.max_frame_bytes > 0 {
        relay.max_frame = u64::from(l.max_frame_bytes);
    }
    if l.max_message_bytes > 0 {
        relay.max_message = u64::from(l.max_message_bytes);
    }
    if !frame_limits_ok(relay.max_frame, relay.max_message) {
        return Err((relay.max_frame, relay.max_message));
    }
    if l.heartbeat_interval_ms > 0 {
        relay.heartbeat_interval = ms(l.heartbeat_interval_ms);
    }
    if l.heartbeat_timeout_ms > 0 {
        relay.heartbeat_timeout = ms(l.heartbeat_timeout_ms);
    }
    relay.idle_timeout = (l.idle_timeout_ms > 0).then(|| ms(l.idle_timeout_ms));
    Ok(())
}

/// Each version's relay limits: its own over the snapshot's `relay`, or
/// the snapshot's. `specs` were read by [`versions`] already.
fn version_relays(
    specs: &[v1::VersionSpec],
    relay: &Arc<RelaySettings>,
) -> Result<VersionRelays, SnapshotError> {
    let mut relays = VersionRelays::all(relay);
    for (index, spec) in specs.iter().enumerate() {
        let Some(limits) = &spec.limits else {
            continue;
        };
        let version = spec_version(index, spec)?;
        let mut own = RelaySettings::clone(relay);
        limit_relay(&mut own, limits).map_err(|(max_frame, max_message)| {
            SnapshotError::VersionFrameLimits {
                index,
                version,
                max_frame,
                max_message,
            }
        })?;
        *relays.of_mut(version) = Arc::new(own);
    }
    Ok(relays)
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// The stable version and, during a canary, the canary.
fn versions(
    specs: &[v1::VersionSpec],
    table: &RouteTable,
) -> Result<(VersionState, Option<VersionState>), SnapshotError> {
    let mut stable = None;
    let mut canary = None;
    let mut shard_ids = HashSet::new();
    for (index, spec) in specs.iter().enumerate() {
        let version = spec_version(index, spec)?;
        let state = version_state(index, version, spec, table, &mut shard_ids)?;
        let slot = match version {
            Version::Stable => &mut stable,
            Version::Canary => &mut canary,
        };
        if slot.replace(state).is_some() {
            return Err(SnapshotError::SecondVersion { index, version });
        }
    }
    Ok((stable.ok_or(SnapshotError::NoStable)?, canary))
}

/// Which version `specs[index]` is.
fn spec_version(index: usize, spec: &v1::VersionSpec) -> Result<Version, SnapshotError> {
    v1::Version::try_from(spec.version)
        .ok()
        .and_then(|v| Version::try_from(v).ok())
        .ok_or(SnapshotError::UnknownVersion { index })
}

fn version_state(
    index: usize,
    version: Version,
    spec: &v1::VersionSpec,
    table: &RouteTable,
    shard_ids: &mut HashSet<String>,
) -> Result<VersionState, SnapshotError> {
    let mut shards = Vec::with_capacity(spec.shards.len());
    for (j, s) in spec.shards.iter().enumerate() {
        let refuse = |problem| SnapshotError::Shard {
            version: index,
            index: j,
            problem,
        };
        if s.id.is_empty() {
            return Err(refuse(ShardProblem::IdEmpty));
        }
        if !shard_ids.insert(s.id.clone()) {
            return Err(refuse(ShardProblem::IdTaken(s.id.clone())));
        }
        let peer: SocketAddr = s
            .peer_address
            .parse()
            .map_err(|_| refuse(ShardProblem::PeerAddress(s.peer_address.clone())))?;
        shards.push(Shard {
            id: s.id.as_str().into(),
            peer,
        });
    }
    let mut pools = vec![Pool::default(); table.routes().len()];
    for (j, rb) in spec.backends.iter().enumerate() {
        let refuse = |problem| SnapshotError::Backends {
            version: index,
            index: j,
            route: rb.route.clone(),
            problem,
        };
        let route = table
            .index_of(&rb.route)
            .ok_or_else(|| refuse(BackendsProblem::UnknownRoute))?;
        if spec.backends[..j].iter().any(|o| o.route == rb.route) {
            return Err(refuse(BackendsProblem::RouteTwice));
        }
        pools[route] = Pool::new(backends(&rb.backends).map_err(refuse)?);
    }
    Ok(VersionState::new(
        version,
        spec.image.clone(),
        shards,
        pools,
    ))
}

fn backends(wire: &[v1::Backend]) -> Result<Vec<Backend>, BackendsProblem> {
    let mut backends = Vec::with_capacity(wire.len());
    for (index, b) in wire.iter().enumerate() {
        if b.id.is_empty() {
            return Err(BackendsProblem::IdEmpty(index));
        }
        if wire[..index].iter().any(|o| o.id == b.id) {
            return Err(BackendsProblem::IdTaken {
                index,
                id: b.id.clone(),
            });
        }
        let address: SocketAddr = b.address.parse().map_err(|_| BackendsProblem::Address {
            index,
            address: b.address.clone(),
        })?;
        backends.push(Backend {
            id: b.id.as_str().into(),
            address,
        });
    }
    Ok(backends)
}

#[cfg(test)]
mod tests;
