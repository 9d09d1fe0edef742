//! The state one data-plane process shares between its listener, every
//! connection, the admin port and the control service: configuration, the
//! running routing state (swapped whole by a snapshot), the registry of
//! open connections, the drain pacer, readiness and the metrics; and what
//! can be done to it: apply a snapshot, report status, drain.
//!
//! Applying a snapshot: refuse an older epoch, accept the running one as a
//! no-op, else build the new state, swap it in whole (readers never lock)
//! and drain, paced, exactly the connections whose seat moved.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use ringway_dataplane_api::v1;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::Config,
    drain::Drainer,
    error::SnapshotError,
    handoff::PeerToken,
    memory::HighWater,
    metrics::Metrics,
    registry::{ConnControl, DrainCause, Registry, Role},
    routing,
    running::RunningState,
    send_queues::SendQueues,
};

mod in_place;

pub(crate) use in_place::SidecarState;

/// This pod's identity as a shard of a gateway.
pub(crate) struct ShardIdentity {
    /// The shard id the snapshots name it by.
    pub(crate) id: Arc<str>,
    /// The peer ports' shared secret.
    pub(crate) token: PeerToken,
    /// Time to reach an owner shard before falling back.
    pub(crate) connect_timeout: Duration,
}

/// State shared by the listener, every connection, the admin port and the
/// control service.
pub struct Shared {
    pub(crate) config: Config,
    /// Set when this pod is a shard of a gateway (else standalone).
    pub(crate) shard: Option<ShardIdentity>,
    /// Set when this process is a sidecar beside an application.
    pub(crate) sidecar: Option<SidecarState>,
    /// What the pod runs on; swapped whole by a snapshot.
    pub(crate) running: ArcSwap<RunningState>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The ceiling on what clients that do not keep up hold.
    pub(crate) queues: Arc<SendQueues>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    /// The most connections held at once lately, for memory releases.
    high_water: HighWater,
    ready: AtomicBool,
    /// The cause of the drain in progress (0: none).
    draining: AtomicU8,
    /// Told when `draining` is first set.
    drain_started: Notify,
    pub(crate) drain_requested: Notify,
    /// A drain RPC ran: stop taking hand-offs, stay up until stopped.
    pub(crate) peer_closed: Notify,
    /// Paces every drain of this pod.
    pub(crate) drainer: Drainer,
    /// One snapshot at a time.
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The state of a process that has bound its ports but does not accept
    /// yet (not ready).
    pub(crate) fn new(
        config: Config,
        shard: Option<ShardIdentity>,
        sidecar: Option<SidecarState>,
        running: RunningState,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let queues = Arc::new(SendQueues::new(
            config.connections.max_queued_bytes,
            &metrics,
        ));
        Self {
            limit: Arc::new(Semaphore::new(config.connections.max_connections)),
            high_water: HighWater::default(),
            running: ArcSwap::from_pointee(running),
            metrics,
            queues,
            registry: Arc::default(),
            tls,
            ready: AtomicBool::new(false),
            draining: AtomicU8::new(0),
            drain_started: Notify::new(),
            drain_requested: Notify::new(),
            peer_closed: Notify::new(),
            drainer: Drainer::start(),
            apply_lock: tokio::sync::Mutex::new(()),
            shard,
            sidecar,
            config,
        }
    }

    /// Takes a place of the connection limit for a new connection, held
    /// until the permit is dropped; `None` at the limit.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.limit).try_acquire_owned().ok()?;
        self.high_water.note(self.in_use());
        Some(permit)
    }

    /// The connections held now, when enough ended since the last look to
    /// give free memory back ([`crate::memory`]).
    pub(crate) fn fell_from_high_water(&self) -> Option<usize> {
        let in_use = self.in_use();
        self.high_water.fell_enough(in_use).then_some(in_use)
    }

    /// Starts answering ready (see [`Shared::is_ready`]).
    pub(crate) fn set_accepting(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Ready for new clients: [serving](Shared::is_serving), and a shard
    /// must not be retiring.
    pub fn is_ready(&self) -> bool {
        self.is_serving() && (self.shard.is_none() || !self.running.load().retiring)
    }

    /// Accepting connections and not stopping; a shard also needs its
    /// first snapshot.
    pub fn is_serving(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self.drain_cause().is_none()
            && (self.shard.is_none() || self.running.load().routing.epoch > 0)
    }

    /// Connections held now (each takes a permit of the connection limit
    /// from accept to close).
    fn in_use(&self) -> usize {
        self.config.connections.max_connections - self.limit.available_permits()
    }

    /// The drain in progress, if any.
    pub(crate) fn drain_cause(&self) -> Option<DrainCause> {
        DrainCause::from_u8(self.draining.load(Ordering::SeqCst))
    }

    /// Marks the pod as draining for `cause` (the first cause stays).
    pub(crate) fn start_draining(&self, cause: DrainCause) {
        let _ =
            self.draining
                .compare_exchange(0, cause.to_u8(), Ordering::SeqCst, Ordering::SeqCst);
        self.drain_started.notify_waiters();
    }

    /// Starts a graceful drain, as SIGTERM does.
    pub(crate) fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// Resolves once a drain has started and every connection has ended.
    pub(crate) async fn wait_drained(&self) {
        crate::notified_until(&self.drain_started, || self.drain_cause().is_some()).await;
        self.registry.wait_empty().await;
    }

    /// Counts and logs the connections still open when a drain's time
    /// was up; they are cut.
    pub(crate) fn count_cut(&self) -> usize {
        let cut = self.registry.len();
        if cut > 0 {
            self.metrics.drain_cut.inc_by(cut as u64);
            tracing::warn!(
                connections = cut,
                "connections still open when the drain's time was up; they are cut"
            );
        } else {
            tracing::info!("drained");
        }
        cut
    }

    /// This pod's shard id (shards only).
    pub(crate) fn shard_id(&self) -> Option<&Arc<str>> {
        self.shard.as_ref().map(|s| &s.id)
    }
}

/// Whether the key of `conn`, a connection this pod owns, moved from its
/// seat between `old` and `new` (an edge's relays follow their owner).
pub(crate) fn key_moved(conn: &ConnControl, old: &RunningState, new: &RunningState) -> bool {
    match &conn.role {
        Role::Edge(_) => false,
        Role::Owner(actual) => routing::must_move(
            old.routing.seat(&conn.route, conn.key_hash).as_ref(),
            new.routing.seat(&conn.route, conn.key_hash).as_ref(),
            actual,
        ),
    }
}

/// What applying a snapshot did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The pod already ran this epoch.
    Unchanged,
    /// The snapshot runs now; this many connections are draining.
    Changed {
        /// Connections whose seat moved.
        draining: usize,
    },
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Older than the running epoch.
    #[error("snapshot epoch {offered} is older than the running epoch {running}")]
    Stale {
        /// The epoch offered.
        offered: u64,
        /// The epoch the pod runs.
        running: u64,
    },
    /// It does not make sense.
    #[error("invalid snapshot: {0}")]
    Invalid(#[source] SnapshotError),
    /// This pod is standalone.
    #[error("this pod runs standalone from its config file and takes no snapshot")]
    Standalone,
    /// This pod is a sidecar.
    #[error(
        "this is an application pod's sidecar: it relays to its application and takes no \
         snapshot; its control port only paces its drain (Drain) and reports (GetStatus)"
    )]
    Sidecar,
}

impl Shared {
    /// Applies a snapshot (see the module docs).
    pub async fn apply(&self, snapshot: &v1::Snapshot) -> Result<Applied, Refused> {
        if self.sidecar.is_some() {
            return Err(Refused::Sidecar);
        }
        if self.shard.is_none() {
            return Err(Refused::Standalone);
        }
        let _one_at_a_time = self.apply_lock.lock().await;
        let old = self.running.load_full();
        let running = old.routing.epoch;
        if snapshot.epoch < running {
            self.metrics.snapshot("stale");
            return Err(Refused::Stale {
                offered: snapshot.epoch,
                running,
            });
        }
        if snapshot.epoch == running {
            self.metrics.snapshot("unchanged");
            return Ok(Applied::Unchanged);
        }
        let new = RunningState::from_snapshot(snapshot, &self.config).map_err(|e| {
            self.metrics.snapshot("invalid");
            Refused::Invalid(e)
        })?;
        let new = Arc::new(new);
        self.running.store(Arc::clone(&new));
        self.metrics.snapshot("applied");
        self.metrics
            .epoch
            .set(i64::try_from(new.routing.epoch).unwrap_or(i64::MAX));
        let moved: Vec<Arc<ConnControl>> = self
            .registry
            .connections()
            .into_iter()
            .filter(|c| key_moved(c, &old, &new))
            .collect();
        let draining = moved.len();
        tracing::info!(
            epoch = new.routing.epoch,
            gateway = %new.gateway,
            canary_basis_points = new.routing.canary_basis_points(),
            draining,
            retiring = new.retiring,
            "snapshot applied"
        );
        self.drainer
            .submit(
                moved,
                DrainCause::Rebalance,
                new.drain.window,
                new.drain.max_closes_per_second,
            )
            .await;
        Ok(Applied::Changed { draining })
    }

    /// The pod's epoch, readiness, live counts and the owner's tally.
    pub fn status(&self) -> v1::PodStatus {
        let running = self.running.load();
        let mut by_seat: BTreeMap<(i32, Arc<str>), u64> = BTreeMap::new();
        let (mut relayed, mut draining) = (0, 0);
        for conn in self.registry.connections() {
            if conn.drain_requested().is_some() {
                draining += 1;
            }
            match &conn.role {
                Role::Owner(seat) => {
                    let version = v1::Version::from(seat.version);
                    *by_seat
                        .entry((version as i32, Arc::clone(&conn.route)))
                        .or_default() += 1;
                }
                Role::Edge(_) => relayed += 1,
            }
        }
        v1::PodStatus {
            shard_id: self.shard_id().map(|s| s.to_string()).unwrap_or_default(),
            epoch: running.routing.epoch,
            ready: self.is_ready(),
            connections: by_seat
                .into_iter()
                .map(|((version, route), count)| v1::ConnectionCount {
                    version,
                    route: route.to_string(),
                    count,
                })
                .collect(),
            draining: draining + self.drainer.pending() as u64,
            handshake_failures: self
                .metrics
                .refusals()
                .into_iter()
                .map(|(reason, count)| v1::ReasonCount {
                    reason: reason.to_owned(),
                    count,
                })
                .collect(),
            relayed,
            owned: Some(self.metrics.owned.report(self.registry.owned_millis())),
            edge_closes: self.metrics.edge.report(),
            serving: self.is_serving(),
        }
    }

    /// Drains the whole pod (1001), paced, and stops taking hand-offs; the
    /// pod stays up, not ready, until it is stopped.
    pub async fn drain_pod(&self, window: Option<Duration>, rate: Option<u32>) -> usize {
        self.start_draining(DrainCause::Api);
        self.peer_closed.notify_one();
        let policy = self.running.load().drain;
        let victims = self.registry.connections();
        let count = victims.len();
        tracing::info!(connections = count, "draining the pod on request");
        self.drainer
            .submit(
                victims,
                DrainCause::Api,
                window.unwrap_or(policy.window),
                rate.unwrap_or(policy.max_closes_per_second),
            )
            .await;
        count
    }
}
