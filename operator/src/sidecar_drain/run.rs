//! The leader's pacing loop: watches the injected pods of every namespace
//! (by [`INJECTED_LABEL`]; the injector serves them all), runs a [`round`] whenever they change and, while
//! any drains, every [`TICK`], and reports as gauges, counters, logs and
//! events on each pod's workload (`kubectl describe deployment chat`). It
//! uses the grants of [`crate::rbac::SIDECAR_DRAIN`].

use std::{
    collections::{BTreeMap, BTreeSet},
    pin::pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::{ObjectReference, Pod},
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, events::EventType, reflector, watcher},
};
use ringway_dataplane_api::sidecar::{INJECTED_LABEL, INJECTED_LABEL_VALUE};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    DrainEvent, Fleet, Report,
    pace::{Dialer, Progress, round},
    pods,
};
use crate::{
    events::Events,
    metrics::Metrics,
    sidecar_audit::WorkloadKey,
    webhook::{CaWatch, control_tls::ClientCert},
};

/// The objects of the workloads with tracked pods, read once each.
type Workloads = BTreeMap<WorkloadKey, ObjectReference>;

/// Time between rounds while a pod drains: how soon a finished pod's share
/// goes to the others, and how often the draining pods are asked how far
/// they got.
pub const TICK: Duration = Duration::from_millis(500);

/// What the loop needs.
pub struct Pacer {
    /// The API client.
    pub client: Client,
    /// The port the sidecars' control service listens on in their pods:
    /// [`CONTROL_PORT`](ringway_dataplane_api::sidecar::CONTROL_PORT) (a test
    /// on one machine runs them elsewhere).
    pub control_port: u16,
    /// Where the gauges and counters go.
    pub metrics: Arc<Metrics>,
    /// Publishes the events.
    pub events: Events,
    /// The webhook's certificates, whose CA the sidecars' certificates
    /// chain to and issues the operator's client certificate; `None` until
    /// they are read.
    pub webhook_ca: CaWatch,
}

impl Pacer {
    /// Paces the drains of injected pods until `halt` turns true.
    pub async fn run(self, halt: watch::Receiver<bool>) {
        let selector = format!("{INJECTED_LABEL}={INJECTED_LABEL_VALUE}");
        let (store, writer) = reflector::store::<Pod>();
        let config = watcher::Config::default().labels(&selector);
        let changes = watcher(Api::<Pod>::all(self.client.clone()), config)
            .default_backoff()
            .reflect(writer);
        let mut changes = pin!(changes);
        let mut fleet = Fleet::default();
        let mut dialer: Option<Dialer> = None;
        let mut gauges = BTreeSet::new();
        let mut workloads = Workloads::new();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A round runs on every change of an injected pod, and on every
            // tick while a pod drains; only the ticks ask the draining pods
            // how far they got, so a burst of changes costs no polls.
            let progress = tokio::select! {
                next = changes.next() => match next {
                    Some(Ok(_)) => Progress::Skip,
                    Some(Err(e)) => {
                        warn!(error = %e, "watching injected pods failed; retrying");
                        Progress::Skip
                    }
                    None => return,
                },
                _ = ticks.tick(), if fleet.busy() => Progress::Ask,
                () = crate::until(halt.clone()) => return,
            };
            let Some(dial) = self.dialer(&mut dialer) else {
                continue;
            };
            let draining: Vec<_> = store
                .state()
                .iter()
                .filter_map(|p| pods::draining(p, self.control_port))
                .collect();
            let reports = round(&mut fleet, &draining, dial, progress).await;
            self.report(reports, &mut workloads).await;
            self.gauges(&fleet, &mut gauges);
            workloads.retain(|key, _| gauges.contains(key));
        }
    }

    /// The dialer, with a client certificate issued anew when the CA
    /// changed or the last one is close to expiry; `None` while there is
    /// no CA yet or it cannot issue (the sidecars then pace themselves).
    fn dialer<'d>(&self, dialer: &'d mut Option<Dialer>) -> Option<&'d Dialer> {
        let tls = self.webhook_ca.borrow().clone()?;
        let due = dialer
            .as_ref()
            .is_none_or(|d| d.cert().is_due(&tls.ca_cert, SystemTime::now()));
        if due {
            match ClientCert::issue(&tls) {
                Ok(cert) => *dialer = Some(Dialer::new(cert)),
                Err(e) => {
                    warn!(error = %e, "issuing the client certificate for the sidecars' control ports");
                    *dialer = None;
                }
            }
        }
        dialer.as_ref()
    }

    /// Sets the gauges of the workloads with draining pods, and removes
    /// those of workloads that have none any more.
    fn gauges(&self, fleet: &Fleet, shown: &mut BTreeSet<WorkloadKey>) {
        let progress = fleet.progress();
        for key in shown.iter().filter(|k| !progress.contains_key(*k)) {
            self.metrics
                .forget_sidecar_drain(&key.namespace, &key.workload);
        }
        for (key, (pods, connections)) in &progress {
            self.metrics
                .set_sidecar_draining(&key.namespace, &key.workload, *pods, *connections);
        }
        *shown = progress.into_keys().collect();
    }

    /// Logs, counts and publishes each report as an event on its workload,
    /// each workload read once while its pods drain (`workloads`).
    async fn report(&self, reports: Vec<Report>, workloads: &mut Workloads) {
        for report in reports {
            let (type_, reason, note) = describe(&report);
            info!(pod = %report.pod, workload = %report.workload.workload, reason, "{note}");
            self.metrics.sidecar_drain(outcome(&report.event));
            let regarding = match workloads.get(&report.workload) {
                Some(known) => known.clone(),
                None => match self.workload(&report.workload).await {
                    Some(found) => workloads
                        .entry(report.workload.clone())
                        .or_insert(found)
                        .clone(),
                    None => report.reference.clone(),
                },
            };
            if let Err(e) = self.events.publish(&regarding, type_, reason, note).await {
                warn!(error = %e, pod = %report.pod, "publishing a sidecar drain's event");
            }
        }
    }

    /// The workload's object (its uid, so that `kubectl describe` shows
    /// the event); `None` when it is not a kind read here (the event is
    /// then about the pod) or cannot be read.
    async fn workload(&self, key: &WorkloadKey) -> Option<ObjectReference> {
        let (kind, name) = key.workload.split_once('/')?;
        match kind {
            "deployment" => self.reference::<Deployment>(&key.namespace, name).await,
            "statefulset" => self.reference::<StatefulSet>(&key.namespace, name).await,
            "daemonset" => self.reference::<DaemonSet>(&key.namespace, name).await,
            _ => None,
        }
    }

    async fn reference<K>(&self, namespace: &str, name: &str) -> Option<ObjectReference>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(found) => found.map(|o| o.object_ref(&())),
            Err(e) => {
                warn!(error = %e, namespace, name, "reading a workload for its drain event");
                None
            }
        }
    }
}

/// The `outcome` label of `ringway_operator_sidecar_drains_total`.
fn outcome(event: &DrainEvent) -> &'static str {
    match event {
        DrainEvent::Started { .. } => "paced",
        DrainEvent::Drained { .. } => "drained",
        DrainEvent::Gone { .. } => "unfinished",
        DrainEvent::Unreachable { .. } => "unreachable",
    }
}

/// The event for `report`: its type, reason and note.
pub fn describe(report: &Report) -> (EventType, &'static str, String) {
    let pod = &report.pod.name;
    match &report.event {
        DrainEvent::Started {
            connections,
            rate,
            sharing,
            budget,
        } => (
            EventType::Normal,
            "SidecarDrainPaced",
            format!(
                "pod {pod}: draining {connections} client(s) at {rate}/s, its share of the \
                 workload's budget of {budget}/s with {sharing} pod(s) draining"
            ),
        ),
        DrainEvent::Drained { connections, took } => (
            EventType::Normal,
            "SidecarDrained",
            format!(
                "pod {pod}: all {connections} client(s) drained in {:.1} s",
                took.as_secs_f64()
            ),
        ),
        DrainEvent::Gone { left, connections } => (
            EventType::Warning,
            "SidecarDrainUnfinished",
            format!(
                "pod {pod} stopped with {left} of its {connections} client(s) still open when \
                 last asked: they were closed at its drain's deadline, faster than the budget, \
                 or cut. Raise terminationGracePeriodSeconds, or the budget \
                 (ringway.dev/sidecar-max-closes-per-second)"
            ),
        ),
        DrainEvent::Unreachable { error } => (
            EventType::Warning,
            "SidecarDrainUnpaced",
            format!(
                "pod {pod}: its sidecar's control port did not answer ({error}); it drains at \
                 its own rate, and the workload may go over its budget"
            ),
        ),
    }
}
