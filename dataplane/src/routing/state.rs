//! The routing state a pod runs: the routes, the stable and (during a
//! canary) the canary version with their shards and backends, and the
//! canary's share of the key space. Placing a key is three consistent
//! steps, each a pure function of the key and this state, so every pod
//! holding the same state (the same snapshot epoch) gives the same answer:
//!
//! 1. version: `hash(key) mod 10000 < canary basis points` → canary;
//! 2. shard: rendezvous hashing over that version's shards;
//! 3. backend: rendezvous hashing over that version's backends of the route.

use std::{net::SocketAddr, sync::Arc};

use super::{Backend, KeyHash, Rendezvous, RouteTable};

/// The key space is cut into this many buckets; the canary owns the first
/// `canary_basis_points` of them.
pub const BUCKETS: u32 = 10_000;

/// The bucket of a key: `hash(key) mod 10000`. Part of the routing contract
/// between pods (and of the tests that predict which keys a weight change
/// moves): never change it.
pub fn bucket(key: KeyHash) -> u32 {
    (key.0 % u64::from(BUCKETS)) as u32
}

/// The two versions a gateway runs during a canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// The version that owns the key space outside the canary's share.
    Stable,
    /// The version being rolled out.
    Canary,
}

impl Version {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
        }
    }
}

/// One shard (data-plane pod) of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Stable identity (the pod name); the ring is built on it.
    pub id: Arc<str>,
    /// Where other shards hand off connections it owns.
    pub peer: SocketAddr,
}

/// The backends of one route in one version, and their ring.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    backends: Vec<Backend>,
    ring: Rendezvous,
}

impl Pool {
    /// A pool of these backends.
    pub fn new(backends: Vec<Backend>) -> Self {
        let ring = Rendezvous::new(backends.iter().map(|b| b.id.as_bytes()));
        Self { backends, ring }
    }

    /// The backend that owns `key`, or `None` when there is none.
    pub fn pick(&self, key: KeyHash) -> Option<&Backend> {
        self.ring.pick(key).map(|i| &self.backends[i])
    }

    /// The backends.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

/// One version: its shards and, by route index, its backends.
#[derive(Clone, Debug)]
pub struct VersionState {
    /// Which version this is.
    pub version: Version,
    /// Its data-plane image, for status and logs.
    pub image: String,
    shards: Vec<Shard>,
    ring: Rendezvous,
    pools: Vec<Pool>,
}

impl VersionState {
    /// A version over `shards`, with `pools[i]` the backends of route `i`
    /// of the table it is used with.
    pub fn new(version: Version, image: String, shards: Vec<Shard>, pools: Vec<Pool>) -> Self {
        let ring = Rendezvous::new(shards.iter().map(|s| s.id.as_bytes()));
        Self {
            version,
            image,
            shards,
            ring,
            pools,
        }
    }

    /// The shard that owns `key`; `None` when the version has no shards
    /// (standalone, or before the first shard is ready): then whichever
    /// pod took the connection serves it.
    pub fn owner(&self, key: KeyHash) -> Option<&Shard> {
        self.ring.pick(key).map(|i| &self.shards[i])
    }

    /// The shards in the order they would own `key` if the ones before
    /// them were gone: the owner, then its fallback, and so on.
    pub fn ranked(&self, key: KeyHash) -> impl Iterator<Item = &Shard> {
        self.ring.ranked(key).into_iter().map(|i| &self.shards[i])
    }

    /// The backend of route `route` that owns `key`.
    pub fn backend(&self, route: usize, key: KeyHash) -> Option<&Backend> {
        self.pools.get(route).and_then(|p| p.pick(key))
    }

    /// The shards.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The backend pools, by route index.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
}

/// Where routing puts a key.
#[derive(Clone, Copy, Debug)]
pub struct Placement<'a> {
    /// The version that owns the key.
    pub version: Version,
    /// The shard that owns it, if the version has shards.
    pub owner: Option<&'a Shard>,
    /// The backend it goes to, if the route has one in that version.
    pub backend: Option<&'a Backend>,
}

/// A placement by identities only, comparable across snapshots: a
/// connection must move when its seat changes.
///
/// Shard ids are unique across versions, so a seat with an owner is the
/// same seat whatever its version is called: promotion relabels the
/// canary's shards as stable and must not drain a single connection. Only
/// seats without an owner (a version with no shards) compare versions.
#[derive(Clone, Debug, Eq)]
pub struct Seat {
    /// The version.
    pub version: Version,
    /// The owner shard's id.
    pub owner: Option<Arc<str>>,
    /// The backend's id.
    pub backend: Option<Arc<str>>,
}

impl PartialEq for Seat {
    fn eq(&self, other: &Self) -> bool {
        let same_version = self.owner.is_some() || self.version == other.version;
        same_version && self.owner == other.owner && self.backend == other.backend
    }
}

impl Placement<'_> {
    /// The identities of this placement.
    pub fn seat(&self) -> Seat {
        Seat {
            version: self.version,
            owner: self.owner.map(|s| Arc::clone(&s.id)),
            backend: self.backend.map(|b| Arc::clone(&b.id)),
        }
    }
}

/// The whole routing state of one snapshot epoch.
#[derive(Debug)]
pub struct RoutingState {
    /// The snapshot epoch (0: standalone, or no snapshot yet).
    pub epoch: u64,
    /// The routes.
    pub table: RouteTable,
    stable: VersionState,
    canary: Option<VersionState>,
    canary_basis_points: u32,
}

impl RoutingState {
    /// A state; `canary_basis_points` must be 0 without a canary and at
    /// most [`BUCKETS`] (the snapshot's checks see to that).
    pub fn new(
        epoch: u64,
        table: RouteTable,
        stable: VersionState,
        canary: Option<VersionState>,
        canary_basis_points: u32,
    ) -> Self {
        let canary_basis_points = if canary.is_some() {
            canary_basis_points.min(BUCKETS)
        } else {
            0
        };
        Self {
            epoch,
            table,
            stable,
            canary,
            canary_basis_points,
        }
    }

    /// Share of the key space on the canary, in basis points.
    pub fn canary_basis_points(&self) -> u32 {
        self.canary_basis_points
    }

    /// The stable version.
    pub fn stable(&self) -> &VersionState {
        &self.stable
    }

    /// The canary version, during a canary.
    pub fn canary(&self) -> Option<&VersionState> {
        self.canary.as_ref()
    }

    /// Step 1: the version that owns `key`.
    pub fn version_for(&self, key: KeyHash) -> &VersionState {
        match &self.canary {
            Some(canary) if bucket(key) < self.canary_basis_points => canary,
            _ => &self.stable,
        }
    }

    /// Steps 1 to 3 for a key on route `route` (an index into the table).
    pub fn place(&self, route: usize, key: KeyHash) -> Placement<'_> {
        let version = self.version_for(key);
        Placement {
            version: version.version,
            owner: version.owner(key),
            backend: version.backend(route, key),
        }
    }

    /// The seat of a key on the route named `route`; `None` when this
    /// state has no such route.
    pub fn seat(&self, route: &str, key: KeyHash) -> Option<Seat> {
        let index = self.table.index_of(route)?;
        Some(self.place(index, key).seat())
    }

    /// The version a shard belongs to, if it is in this state.
    pub fn version_of_shard(&self, id: &str) -> Option<Version> {
        std::iter::once(&self.stable)
            .chain(&self.canary)
            .find(|v| v.shards.iter().any(|s| &*s.id == id))
            .map(|v| v.version)
    }
}

/// Whether a connection sitting at `actual`, placed when the state said
/// `old`, must move now that it says `new`: its key moved (`new != old`)
/// and not to where the connection already is. For every connection placed
/// by the ring, `actual == old` and this is just "the key moved"; for one
/// that a fallback put on the runner-up shard, it keeps the connection when
/// the new state agrees with the fallback (the owner was removed).
pub fn must_move(old: Option<&Seat>, new: Option<&Seat>, actual: &Seat) -> bool {
    match new {
        None => true,
        Some(new) => old != Some(new) && new != actual,
    }
}

#[cfg(test)]
mod tests;
