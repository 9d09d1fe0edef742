//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one acts at a time.
//!
//! Two leaders are impossible because every write of the Lease is a replace
//! with the `resourceVersion` that was read (a create when there is none):
//! of two replicas that race for it, the API server accepts one and answers
//! the other `409 Conflict`. A holder that stops renewing is taken over only
//! after its record has stayed unchanged for the lease duration *as measured
//! by the replica that wants it*, on that replica's monotonic clock (as
//! client-go does), so clock skew between nodes cannot shorten a term; the
//! holder in turn gives up once no renewal has succeeded for the lease
//! duration counted from when its last successful renewal *started*. The
//! holder therefore always stops acting before anyone else may start.
//!
//! The rule is the pure [`decide`]; [`acquire`] and [`Leadership`] are the
//! effects.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};
use tracing::{Instrument, debug, info, info_span, warn};

/// How long a lease lasts without renewal, by default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, by default: three chances per term.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(5);
/// How soon a renewal that failed is tried again (at most `renew_every`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long releasing the lease on shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which Lease to contend for, as whom, and how long a term lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (usually the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity, unique among replicas (the pod name).
    pub identity: String,
    /// How long the lease lasts without renewal. Written to the Lease in
    /// whole seconds, rounded up.
    pub lease_duration: Duration,
    /// How often the holder renews; must be well below `lease_duration`.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// A config with [`DEFAULT_LEASE_DURATION`] and [`DEFAULT_RENEW_EVERY`].
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_every: DEFAULT_RENEW_EVERY,
        }
    }
}

/// What to do about the Lease as it was just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (there is none, it was released, or its holder's term
    /// ran out): take it.
    Acquire,
    /// This replica holds it: renew it.
    Renew,
    /// `holder` holds it; it cannot be taken before `until`.
    Wait {
        /// The current holder's identity.
        holder: String,
        /// When the holder's term ends unless it renews (our monotonic clock).
        until: Instant,
    },
}

/// Decides what to do about `lease` (`None`: there is none). `unchanged_since`
/// is when this replica first read the lease's current record (its
/// `resourceVersion`), on its own monotonic clock; another holder's term ends
/// a lease duration after that — the record's `leaseDurationSeconds`, or
/// `default_duration` when it has none. Wall-clock times in the record are
/// ignored: they come from another node's clock.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_since: Instant,
    now: Instant,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return Decision::Acquire,
        Some(holder) if holder == identity => return Decision::Renew,
        Some(holder) => holder,
    };
    let duration = match spec.lease_duration_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().into()),
        _ => default_duration,
    };
    let until = unchanged_since + duration;
    if now >= until {
        Decision::Acquire
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
            until,
        }
    }
}

/// When this replica first read the lease's current record.
#[derive(Clone, Debug, PartialEq)]
struct Observation {
    resource_version: Option<String>,
    since: Instant,
}

impl Observation {
    /// Records a read of `lease` at `now`: a record other than the last one
    /// read starts a new observation. Returns when the current one started.
    fn record(last: &mut Option<Observation>, lease: Option<&Lease>, now: Instant) -> Instant {
        let resource_version = lease.and_then(|l| l.metadata.resource_version.clone());
        match last {
            Some(seen) if lease.is_some() && seen.resource_version == resource_version => {
                seen.since
            }
            _ => {
                *last = Some(Observation {
                    resource_version,
                    since: now,
                });
                now
            }
        }
    }
}

/// The Lease this replica writes to take or renew `current` (`None`: create
/// one) at wall-clock time `now`. It keeps `current`'s metadata, and so its
/// `resourceVersion`: the replace succeeds only if nobody wrote in between.
fn claim(current: Option<&Lease>, config: &LeaseConfig, now: Timestamp) -> Lease {
    let metadata = current.map_or_else(
        || ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        |l| l.metadata.clone(),
    );
    let previous = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let renewing = previous.holder_identity.as_deref() == Some(config.identity.as_str());
    let taken_from_another = !renewing && previous.holder_identity.is_some_and(|h| !h.is_empty());
    let now = MicroTime(now);
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(config.lease_duration)),
            acquire_time: match previous.acquire_time {
                Some(acquired) if renewing => Some(acquired),
                _ => Some(now.clone()),
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0) + i32::from(taken_from_another),
            ),
            ..previous
        }),
    }
}

/// The Lease this replica writes to hand `held` (as it last wrote it) over
/// at once: no holder, so that the next replica to read it takes it.
fn released(held: &Lease, now: Timestamp) -> Lease {
    let mut lease = held.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// `duration` in whole seconds, rounded up, at least 1: another replica
/// must never see a shorter term than the holder keeps.
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// How one read-decide-write round ended.
#[derive(Debug)]
enum Attempt {
    /// The Lease now names this replica, as of the write.
    Leading,
    /// Another replica holds it until `until` at the earliest.
    Held { holder: String, until: Instant },
    /// The write lost a race (409): someone else wrote the Lease first.
    Raced,
}

/// The API side of the election: reads and writes one Lease.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observation>,
    /// The Lease as this replica last wrote it while holding it.
    held: Option<Lease>,
}

impl Elector {
    fn new(client: kube::Client, mut config: LeaseConfig) -> Self {
        if config.renew_every >= config.lease_duration {
            let renew_every = config.lease_duration / 3;
            warn!(
                renew_every = ?config.renew_every,
                lease_duration = ?config.lease_duration,
                "renewing no more often than the lease lasts would lose it; renewing every third of it instead"
            );
            config.renew_every = renew_every;
        }
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            held: None,
        }
    }

    /// Reads the Lease and takes or renews it if [`decide`] says so.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let now = Instant::now();
        let since = Observation::record(&mut self.observed, current.as_ref(), now);
        let decision = decide(
            current.as_ref(),
            &self.config.identity,
            since,
            now,
            self.config.lease_duration,
        );
        if let Decision::Wait { holder, until } = decision {
            self.held = None;
            return Ok(Attempt::Held { holder, until });
        }
        let desired = claim(current.as_ref(), &self.config, Timestamp::now());
        let written = match current {
            None => self.api.create(&PostParams::default(), &desired).await,
            Some(_) => {
                self.api
                    .replace(&self.config.name, &PostParams::default(), &desired)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                Observation::record(&mut self.observed, Some(&lease), Instant::now());
                self.held = Some(lease);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status))
                if status.code == 409 || status.is_conflict() || status.is_already_exists() =>
            {
                Ok(Attempt::Raced)
            }
            Err(e) => Err(e),
        }
    }

    /// Hands the Lease over, if it is still as this replica last wrote it.
    async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let lease = released(&held, Timestamp::now());
        let params = PostParams::default();
        let replace = self.api.replace(&self.config.name, &params, &lease);
        match timeout(RELEASE_TIMEOUT, replace).await {
            Ok(Ok(_)) => info!("released the lease"),
            Ok(Err(e)) => warn!(
                error = %e,
                "releasing the lease failed; another replica takes it when it expires"
            ),
            Err(_) => warn!(
                timeout = ?RELEASE_TIMEOUT,
                "releasing the lease timed out; another replica takes it when it expires"
            ),
        }
    }
}

/// Whether a failed call is worth retrying: everything but the answers
/// that will not change by themselves (no permission, an invalid Lease).
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => !matches!(status.code, 401 | 403 | 422),
        _ => true,
    }
}

/// Waits until this replica holds the lease described by `config`, then keeps
/// renewing it in a background task. Returns `Ok(None)` if `shutdown`
/// resolves first. API errors are retried with a warning, except those that
/// will not go away by themselves (401, 403, 422), which are returned.
pub async fn acquire(
    client: kube::Client,
    config: LeaseConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<Leadership>, kube::Error> {
    let span = info_span!(
        "lease",
        namespace = %config.namespace,
        name = %config.name,
        identity = %config.identity,
    );
    tokio::pin!(shutdown);
    async {
        let mut elector = Elector::new(client, config);
        let renew_every = elector.config.renew_every;
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(None),
                attempt = timeout(renew_every, elector.attempt()) => attempt,
            };
            let retry_at = match attempt {
                Ok(Ok(Attempt::Leading)) => {
                    info!("acquired the lease; leading");
                    return Ok(Some(Leadership::start(elector, started)));
                }
                Ok(Ok(Attempt::Held { holder, until })) => {
                    debug!(%holder, "another replica holds the lease");
                    until.min(Instant::now() + renew_every)
                }
                Ok(Ok(Attempt::Raced)) => {
                    debug!("another replica wrote the lease first");
                    Instant::now() + renew_every
                }
                Ok(Err(e)) if !is_transient(&e) => return Err(e),
                Ok(Err(e)) => {
                    warn!(error = %e, "reading or writing the lease failed; retrying");
                    Instant::now() + renew_every
                }
                Err(_) => {
                    warn!(timeout = ?renew_every, "the lease request timed out; retrying");
                    Instant::now()
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(None),
                () = sleep_until(retry_at) => {}
            }
        }
    }
    .instrument(span)
    .await
}

/// This replica's term as leader: a task renews the lease until it is lost
/// or released. Act only while [`Leadership::lost`] has not resolved.
/// Dropping it stops the renewals without releasing the lease, which then
/// expires after its duration.
#[derive(Debug)]
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts renewing the lease that `elector` just took in a round that
    /// began at `started`.
    fn start(elector: Elector, started: Instant) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel();
        let span = info_span!(
            "leader",
            namespace = %elector.config.namespace,
            name = %elector.config.name,
            identity = %elector.config.identity,
        );
        let task = tokio::spawn(keep_renewing(elector, started, lost_tx, stop_rx).instrument(span));
        Self { lost, stop, task }
    }

    /// Resolves when leadership is lost: no renewal succeeded for a lease
    /// duration, or another replica holds the lease. Once resolved it
    /// resolves at once on every later call. Cancel-safe.
    pub async fn lost(&mut self) {
        // An error means the renewing task is gone (it panicked): lost too.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing and hands the lease over so that another replica takes
    /// it at once. Call it only after this replica has stopped acting. If
    /// leadership was already lost, the lease is left alone.
    pub async fn release(self) {
        // An error means the task already ended (leadership was lost).
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            warn!(error = %e, "the lease renewal task failed");
        }
    }
}

/// What ended one wait of the renewal loop.
enum Event {
    Stop {
        release: bool,
    },
    Expired,
    Renewal {
        started: Instant,
        attempt: Option<Result<Attempt, kube::Error>>,
    },
}

/// Renews every `renew_every` until the lease is lost or `stop` fires
/// (release) or is dropped (no release). The term ends a lease duration
/// after the start of the last round that succeeded.
async fn keep_renewing(
    mut elector: Elector,
    started: Instant,
    lost: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let LeaseConfig {
        lease_duration,
        renew_every,
        ..
    } = elector.config;
    let mut deadline = started + lease_duration;
    let mut next = started + renew_every;
    loop {
        let event = {
            let renewal = async {
                sleep_until(next).await;
                let started = Instant::now();
                let attempt = timeout(renew_every, elector.attempt()).await.ok();
                Event::Renewal { started, attempt }
            };
            tokio::select! {
                biased;
                stopped = &mut stop => Event::Stop { release: stopped.is_ok() },
                () = sleep_until(deadline) => Event::Expired,
                event = renewal => event,
            }
        };
        match event {
            Event::Stop { release } => {
                if release {
                    elector.release().await;
                }
                return;
            }
            Event::Expired => {
                warn!(
                    lease_duration = ?lease_duration,
                    "no renewal succeeded within the lease duration; leadership lost"
                );
                lost.send_replace(true);
                return;
            }
            Event::Renewal { started, attempt } => match attempt {
                Some(Ok(Attempt::Leading)) => {
                    debug!("renewed the lease");
                    deadline = started + lease_duration;
                    next = started + renew_every;
                }
                Some(Ok(Attempt::Held { holder, .. })) => {
                    warn!(%holder, "another replica holds the lease; leadership lost");
                    lost.send_replace(true);
                    return;
                }
                failed => {
                    match failed {
                        Some(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                        None => warn!(timeout = ?renew_every, "renewing the lease timed out"),
                        _ => warn!("the lease changed while renewing it"),
                    }
                    next = Instant::now() + renew_every.min(RETRY_AFTER_FAILURE);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
