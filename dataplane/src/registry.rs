//! The live connections of this process, so that a drain can find them and
//! tell each one to close. A connection registers after its upgrade and is
//! removed by a guard when its task ends, however it ends (even by panic).
//! It also knows how long the connections this pod owns have lived, for
//! the owner's tally ([`crate::metrics::OwnerTally`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::time::Instant;

use crate::routing::{KeyHash, Seat};

/// Why the gateway asks a connection to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainCause {
    /// The process is stopping (SIGTERM): 1001 going away.
    Shutdown,
    /// `POST /drain` on the admin port: 1001 going away.
    Api,
    /// The connection's key moved to another shard or backend: 1012.
    Rebalance,
}

impl DrainCause {
    /// The close code the client receives.
    pub fn close_code(self) -> u16 {
        match self {
            Self::Shutdown | Self::Api => 1001,
            Self::Rebalance => 1012,
        }
    }

    /// Label for `ringway_drains_total{cause}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Api => "api",
            Self::Rebalance => "rebalance",
        }
    }

    /// Start of the close reason; the reconnect hint follows.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown | Self::Api => "pod stopping",
            Self::Rebalance => "key moved",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Shutdown => 1,
            Self::Api => 2,
            Self::Rebalance => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Shutdown,
            2 => Self::Api,
            3 => Self::Rebalance,
            _ => return None,
        })
    }
}

/// This pod's part in a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It relays the connection to the backend: it is the key's owner (or
    /// its fallback, or the only pod, standalone). A snapshot that moves
    /// the key drains the connection here.
    Owner(Seat),
    /// It took the client's connection and relays it to the owner shard
    /// named here. Only a stop of this pod drains it here; the owner
    /// drains it when its key moves.
    Edge(Arc<str>),
}

/// What the rest of the process knows of one connection, and how it asks
/// the connection to close.
pub struct ConnControl {
    /// The route it took.
    pub route: Arc<str>,
    /// Its key's hash.
    pub key_hash: KeyHash,
    /// Where it sits.
    pub role: Role,
    drain: AtomicU8,
    /// Asked to close at once: the gateway's send queues are full.
    shed: AtomicBool,
    ended: AtomicBool,
    waker: AtomicWaker,
}

impl ConnControl {
    /// Whether this pod owns the connection (relays it to its backend).
    pub fn is_owned(&self) -> bool {
        matches!(self.role, Role::Owner(_))
    }

    /// A control for a new connection.
    pub fn new(route: Arc<str>, key_hash: KeyHash, role: Role) -> Self {
        Self {
            route,
            key_hash,
            role,
            drain: AtomicU8::new(0),
            shed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Asks the connection to drain. The first request wins.
    pub fn request_drain(&self, cause: DrainCause) {
        if self
            .drain
            .compare_exchange(0, cause.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Asks the connection to close at once, whatever it is doing: the
    /// memory held for clients that do not keep up is at its ceiling
    /// ([`crate::send_queues`]).
    pub fn shed(&self) {
        if !self.shed.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Whether the connection was shed.
    pub fn shed_requested(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// Whether a drain would still do something: the connection is open
    /// and has not been asked yet.
    pub fn drainable(&self) -> bool {
        self.drain_requested().is_none() && !self.ended.load(Ordering::Acquire)
    }

    /// The drain asked for, if any.
    pub fn drain_requested(&self) -> Option<DrainCause> {
        DrainCause::from_u8(self.drain.load(Ordering::Acquire))
    }

    /// Wakes `waker` when a drain is asked for. Register, then check
    /// [`ConnControl::drain_requested`], so that no request is missed.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

/// Every live connection.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<Conns>,
    /// Told when the last connection leaves.
    emptied: tokio::sync::Notify,
}

/// What the registry's lock guards: the live connections and the owned
/// ones' lifetimes, changed together so that a reading of both is exact.
#[derive(Default)]
struct Conns {
    live: Slab<Live>,
    /// The lifetimes of the owned connections that ended.
    owned_ended: Duration,
}

/// One live connection and when it was registered.
struct Live {
    control: Arc<ConnControl>,
    since: Instant,
}

impl Conns {
    /// The owned connections integrated over time until `now`: the ended
    /// ones' lifetimes and the live ones' ages.
    fn owned_time(&self, now: Instant) -> Duration {
        self.live
            .iter()
            .filter(|(_, l)| l.control.is_owned())
            .map(|(_, l)| now.saturating_duration_since(l.since))
            .sum::<Duration>()
            + self.owned_ended
    }
}

impl Registry {
    /// Adds a connection; dropping the guard removes it.
    pub fn register(self: &Arc<Self>, control: Arc<ConnControl>) -> RegistryGuard {
        let key = self.lock().live.insert(Live {
            control,
            since: Instant::now(),
        });
        RegistryGuard {
            registry: Arc::clone(self),
            key,
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// No live connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no connection is left (at once if none is).
    pub async fn wait_empty(&self) {
        crate::notified_until(&self.emptied, || self.is_empty()).await;
    }

    /// A copy of the current connections (for a drain to work through).
    pub fn connections(&self) -> Vec<Arc<ConnControl>> {
        self.lock()
            .live
            .iter()
            .map(|(_, l)| Arc::clone(&l.control))
            .collect()
    }

    /// The connections this pod owns, integrated over time since the
    /// process started, in milliseconds: the ended ones' lifetimes and the
    /// live ones' ages. Never less than an earlier reading: the clock is
    /// read under the lock that an ending connection's lifetime is added
    /// under.
    pub fn owned_millis(&self) -> u64 {
        let conns = self.lock();
        let owned = conns.owned_time(Instant::now());
        u64::try_from(owned.as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        // A panic while holding this lock cannot leave the slab half-changed
        // (insert and remove are single calls), so a poisoned lock is usable.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes its connection from the registry when dropped.
pub struct RegistryGuard {
    registry: Arc<Registry>,
    key: usize,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        let (removed, empty) = {
            let mut conns = self.registry.lock();
            let removed = conns.live.try_remove(self.key);
            if let Some(ended) = removed.as_ref().filter(|l| l.control.is_owned()) {
                conns.owned_ended += Instant::now().saturating_duration_since(ended.since);
            }
            (removed, conns.live.is_empty())
        };
        if let Some(ended) = removed {
            ended.control.ended.store(true, Ordering::Release);
        }
        if empty {
            self.registry.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{KeyHash, Seat, Version};

    fn owned() -> Arc<ConnControl> {
        let seat = Seat {
            version: Version::Stable,
            owner: None,
            backend: None,
        };
        Arc::new(ConnControl::new("r".into(), KeyHash(1), Role::Owner(seat)))
    }

    fn relayed() -> Arc<ConnControl> {
        Arc::new(ConnControl::new(
            "r".into(),
            KeyHash(2),
            Role::Edge("owner".into()),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn owned_millis_add_the_ended_lifetimes_and_the_live_ages_of_owned_connections_only() {
        let registry = Arc::new(Registry::default());
        let first = registry.register(owned());
        let _edge = registry.register(relayed());
        tokio::time::advance(Duration::from_millis(300)).await;
        let second = registry.register(owned());
        assert_eq!(registry.owned_millis(), 300);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(registry.owned_millis(), 500 + 200);
        drop(first);
        assert_eq!(registry.owned_millis(), 700, "an ending changes nothing");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(registry.owned_millis(), 500 + 300);
        drop(second);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            registry.owned_millis(),
            800,
            "ended, so no longer growing; the edge's relay never counts"
        );
    }
}
