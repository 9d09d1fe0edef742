//! What a pod runs on: the routing state plus the limits of new connections
//! and how to drain. Built from the standalone config, or from the
//! operator's snapshot (checked here: a snapshot that does not make sense is
//! refused whole, with a message naming the field), and replaced whole.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use ringway_dataplane_api::v1;

use crate::{
    Error,
    config::{Config, KeySourceKind, MissingKey, secs},
    relay::RelaySettings,
    routing::{
        BUCKETS, Backend, KeySource, Pool, RouteEntry, RouteTable, RoutingState, Shard, Version,
        VersionState,
    },
};

/// How a pod drains connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// Closes are spread over this window.
    pub window: Duration,
    /// At most this many closes per second.
    pub max_closes_per_second: u32,
}

/// The state a pod runs on. Immutable; a new one replaces it whole.
#[derive(Debug)]
pub struct Running {
    /// Routes, versions, shards and backends.
    pub routing: RoutingState,
    /// Limits of new connections.
    pub relay: Arc<RelaySettings>,
    /// Time a client has for TLS and its upgrade request.
    pub handshake_timeout: Duration,
    /// How connections are drained.
    pub drain: DrainPolicy,
    /// The gateway (`namespace/name`), for logs.
    pub gateway: String,
    /// The snapshot names this shard as retiring: it answers not ready so
    /// that no new client enters through it, and keeps what it holds.
    pub retiring: bool,
}

impl Running {
    /// The standalone state: the config's routes and backends, one version
    /// with no shards (this process serves every key itself).
    pub fn standalone(config: &Config) -> Result<Self, Error> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let key = match r.key.source {
                KeySourceKind::Header => KeySource::Header(r.key.name.clone().unwrap_or_default()),
                KeySourceKind::Query => KeySource::Query(r.key.name.clone().unwrap_or_default()),
                KeySourceKind::Cookie => KeySource::Cookie(r.key.name.clone().unwrap_or_default()),
                KeySourceKind::PathSegment => {
                    KeySource::PathSegment(r.key.segment.unwrap_or_default())
                }
            };
            routes.push(RouteEntry::new(&r.name, &r.path_prefix, key, r.missing_key));
        }
        let table = RouteTable::new(routes);
        let mut pools = Vec::with_capacity(table.routes().len());
        for entry in table.routes() {
            let r = config
                .routes
                .iter()
                .find(|r| r.name == *entry.name)
                .ok_or_else(|| Error::Config(format!("route {} vanished", entry.name)))?;
            let mut backends = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let address = std::net::ToSocketAddrs::to_socket_addrs(b.as_str())
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "route {}: backend {b:?} is not a host:port that resolves",
                            r.name
                        ))
                    })?;
                backends.push(Backend {
                    id: b.as_str().into(),
                    address,
                });
            }
            pools.push(Pool::new(backends));
        }
        let stable = VersionState::new(Version::Stable, String::new(), Vec::new(), pools);
        Ok(Self::from_config(
            config,
            RoutingState::new(0, table, stable, None, 0),
            String::from("standalone"),
        ))
    }

    /// A shard before its first snapshot: no routes (it is not ready).
    pub fn waiting(config: &Config) -> Self {
        let stable = VersionState::new(Version::Stable, String::new(), Vec::new(), Vec::new());
        let routing = RoutingState::new(0, RouteTable::default(), stable, None, 0);
        Self::from_config(config, routing, String::new())
    }

    fn from_config(config: &Config, routing: RoutingState, gateway: String) -> Self {
        let c = &config.connections;
        Self {
            routing,
            relay: Arc::new(RelaySettings {
                max_frame: c.max_frame_bytes,
                max_message: c.max_message_bytes,
                heartbeat_interval: secs(c.heartbeat.interval_seconds),
                heartbeat_timeout: secs(c.heartbeat.timeout_seconds),
                idle_timeout: (c.idle_timeout_seconds > 0.0).then(|| secs(c.idle_timeout_seconds)),
                slow_consumer: secs(c.slow_consumer_seconds),
                close_timeout: secs(config.drain.close_timeout_seconds),
                reconnect_jitter_ms: config.drain.reconnect_jitter_ms,
            }),
            handshake_timeout: secs(c.handshake_timeout_seconds),
            drain: DrainPolicy {
                window: secs(config.drain.window_seconds),
                max_closes_per_second: config.drain.max_closes_per_second,
            },
            gateway,
            retiring: false,
        }
    }

    /// The state a snapshot describes. Limits and drain settings the
    /// snapshot leaves at 0 keep this pod's configured values (except the
    /// idle timeout, where 0 turns idle closing off).
    pub fn from_snapshot(snapshot: &v1::Snapshot, config: &Config) -> Result<Self, String> {
        if snapshot.epoch == 0 {
            return Err("epoch: must be at least 1".into());
        }
        let table = routes(&snapshot.routes)?;
        let mut stable = None;
        let mut canary = None;
        let mut shard_ids = HashSet::new();
        for (i, v) in snapshot.versions.iter().enumerate() {
            let at = format!("versions[{i}]");
            let version = match v1::Version::try_from(v.version) {
                Ok(v1::Version::Stable) => Version::Stable,
                Ok(v1::Version::Canary) => Version::Canary,
                _ => return Err(format!("{at}.version: must be STABLE or CANARY")),
            };
            let state = version_state(&at, version, v, &table, &mut shard_ids)?;
            let slot = match version {
                Version::Stable => &mut stable,
                Version::Canary => &mut canary,
            };
            if slot.replace(state).is_some() {
                return Err(format!("{at}: a second {} version", version.label()));
            }
        }
        let stable = stable.ok_or("versions: the STABLE version is missing")?;
        let bp = snapshot.canary_basis_points;
        if bp > BUCKETS {
            return Err(format!(
                "canary_basis_points: {bp} is above {BUCKETS} (100%)"
            ));
        }
        if bp > 0 && canary.is_none() {
            return Err(format!(
                "canary_basis_points: {bp} with no CANARY version to send keys to"
            ));
        }
        let routing = RoutingState::new(snapshot.epoch, table, stable, canary, bp);
        let mut running = Self::from_config(config, routing, snapshot.gateway.clone());
        running.retiring = config
            .shard
            .as_ref()
            .is_some_and(|s| snapshot.retiring.contains(&s.id));
        if let Some(limits) = &snapshot.limits {
            apply_limits(&mut running, limits)?;
        }
        if let Some(drain) = &snapshot.drain {
            let relay = Arc::make_mut(&mut running.relay);
            if drain.window_ms > 0 {
                running.drain.window = ms(drain.window_ms);
            }
            if drain.max_closes_per_second > 0 {
                running.drain.max_closes_per_second = drain.max_closes_per_second;
            }
            if drain.close_timeout_ms > 0 {
                relay.close_timeout = ms(drain.close_timeout_ms);
            }
        }
        Ok(running)
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

fn routes(routes: &[v1::Route]) -> Result<RouteTable, String> {
    if routes.is_empty() {
        return Err("routes: at least one route is needed".into());
    }
    let mut entries = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let at = format!("routes[{i}] ({})", r.name);
        if r.name.is_empty() {
            return Err(format!("routes[{i}].name: must not be empty"));
        }
        if routes[..i].iter().any(|o| o.name == r.name) {
            return Err(format!("{at}.name: another route has this name"));
        }
        if !r.path_prefix.starts_with('/') {
            return Err(format!("{at}.path_prefix: must start with '/'"));
        }
        if routes[..i].iter().any(|o| o.path_prefix == r.path_prefix) {
            return Err(format!("{at}.path_prefix: another route has this prefix"));
        }
        use v1::key_source::Source;
        let named = |n: &str, kind: &str| {
            if n.is_empty() {
                Err(format!("{at}.key.{kind}: must not be empty"))
            } else {
                Ok(n.to_owned())
            }
        };
        let key = match r.key.as_ref().and_then(|k| k.source.as_ref()) {
            Some(Source::Header(n)) => KeySource::Header(named(n, "header")?),
            Some(Source::Query(n)) => KeySource::Query(named(n, "query")?),
            Some(Source::Cookie(n)) => KeySource::Cookie(named(n, "cookie")?),
            Some(Source::PathSegment(s)) => KeySource::PathSegment(*s as usize),
            None => return Err(format!("{at}.key: no key source")),
        };
        let missing = match v1::MissingKeyPolicy::try_from(r.missing_key) {
            Ok(v1::MissingKeyPolicy::Random) => MissingKey::Random,
            _ => MissingKey::Reject,
        };
        entries.push(RouteEntry::new(&r.name, &r.path_prefix, key, missing));
    }
    Ok(RouteTable::new(entries))
}

fn version_state(
    at: &str,
    version: Version,
    v: &v1::VersionSpec,
    table: &RouteTable,
    shard_ids: &mut HashSet<String>,
) -> Result<VersionState, String> {
    let mut shards = Vec::with_capacity(v.shards.len());
    for (j, s) in v.shards.iter().enumerate() {
        let at = format!("{at}.shards[{j}]");
        if s.id.is_empty() {
            return Err(format!("{at}.id: must not be empty"));
        }
        if !shard_ids.insert(s.id.clone()) {
            return Err(format!("{at}.id: shard {} is listed twice", s.id));
        }
        let peer: SocketAddr = s
            .peer_address
            .parse()
            .map_err(|_| format!("{at}.peer_address: {:?} is not an ip:port", s.peer_address))?;
        shards.push(Shard {
            id: s.id.as_str().into(),
            peer,
        });
    }
    let mut pools = vec![Pool::default(); table.routes().len()];
    for (j, rb) in v.backends.iter().enumerate() {
        let at = format!("{at}.backends[{j}] ({})", rb.route);
        let index = table
            .index_of(&rb.route)
            .ok_or_else(|| format!("{at}.route: no route has this name"))?;
        if v.backends[..j].iter().any(|o| o.route == rb.route) {
            return Err(format!(
                "{at}.route: this route's backends are listed twice"
            ));
        }
        let mut backends = Vec::with_capacity(rb.backends.len());
        for (k, b) in rb.backends.iter().enumerate() {
            let at = format!("{at}.backends[{k}]");
            if b.id.is_empty() {
                return Err(format!("{at}.id: must not be empty"));
            }
            if rb.backends[..k].iter().any(|o| o.id == b.id) {
                return Err(format!("{at}.id: backend {} is listed twice", b.id));
            }
            let address: SocketAddr = b
                .address
                .parse()
                .map_err(|_| format!("{at}.address: {:?} is not an ip:port", b.address))?;
            backends.push(Backend {
                id: b.id.as_str().into(),
                address,
            });
        }
        pools[index] = Pool::new(backends);
    }
    Ok(VersionState::new(version, v.image.clone(), shards, pools))
}

fn apply_limits(running: &mut Running, l: &v1::ConnectionLimits) -> Result<(), String> {
    let relay = Arc::make_mut(&mut running.relay);
    if l.max_frame_bytes > 0 {
        relay.max_frame = u64::from(l.max_frame_bytes);
    }
    if l.max_message_bytes > 0 {
        relay.max_message = u64::from(l.max_message_bytes);
    }
    if relay.max_frame < 125 || relay.max_frame > relay.max_message {
        return Err(format!(
            "limits: max_frame_bytes ({}) must be at least 125 and at most max_message_bytes ({})",
            relay.max_frame, relay.max_message
        ));
    }
    if l.heartbeat_interval_ms > 0 {
        relay.heartbeat_interval = ms(l.heartbeat_interval_ms);
    }
    if l.heartbeat_timeout_ms > 0 {
        relay.heartbeat_timeout = ms(l.heartbeat_timeout_ms);
    }
    relay.idle_timeout = (l.idle_timeout_ms > 0).then(|| ms(l.idle_timeout_ms));
    if l.handshake_timeout_ms > 0 {
        running.handshake_timeout = ms(l.handshake_timeout_ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
