//! Reads what the cluster and the pods show of a gateway: its control
//! Secrets and slots' StatefulSets (read fresh from the API server), its
//! pods and its backends' EndpointSlices (from the watches' stores), its
//! backend Services, and the pods' connection counts.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{Pod, Secret, Service},
    },
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt};
use ringway_control::pki::Ca;
use ringway_crds::{Slot, WebSocketGateway, WebSocketGatewayStatus};
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::{
    Error, PodInputs,
    context::{Context, Memory},
    names::{self, CONTROL_PORT, GatewayRef, slot_label},
    rollout::{PodCounts, PodView, SlotView, analysis::Counters},
    snapshot,
    steer::Steer,
    stores::Stores,
};

/// Ask the pods for their counts at most this often when nothing moves,
/// so that a storm of watch events never becomes a storm of RPCs.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// How long a pod's word that it serves its shard counts: polls run at
/// every reconcile (5 s apart) while a version is moving, the only time a
/// pod is out of the client Service on purpose; at rest, when they run
/// every 30 s, the `Ready` condition alone decides.
pub const SERVING_FRESH: Duration = Duration::from_secs(15);

/// How long a pod out of the client Service on purpose keeps its place in
/// the ring while its polls fail: a poll lost now and then moves no keys;
/// past it (as long as Kubernetes takes to mark an unreachable node's
/// pods not ready) its keys go to the others.
pub const SERVING_GRACE: Duration = Duration::from_secs(40);

/// What the cluster shows of one gateway.
pub(crate) struct Cluster {
    /// The Secret with the control channel's CA, if any.
    pub ca_secret: Option<Secret>,
    /// The Secret the pods mount for the control channel, if any.
    pub pod_secret: Option<Secret>,
    /// Slots A and B.
    pub slots: [SlotView; 2],
    /// Ready endpoints by route name.
    pub endpoints: BTreeMap<String, Vec<snapshot::Endpoint>>,
    /// A problem for each route without a usable backend.
    pub backend_problems: Vec<String>,
}

/// Reads one gateway's world. The Secrets and StatefulSets are read from
/// the API server, not from a watch: a copy that lags behind the last
/// apply would mint a second CA, or plan (and count against the budget)
/// a rollout step already taken. The pods and the backends'
/// EndpointSlices come from the watches' stores; the backend Services
/// are not watched and are read.
pub(crate) async fn gateway(
    client: &Client,
    stores: &Stores,
    gw: &WebSocketGateway,
    gwref: &GatewayRef,
    memory: &Memory,
) -> Result<Cluster, Error> {
    let ns = gwref.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret = get(&secrets, &gwref.ca_secret()).await?;
    let pod_secret = get(&secrets, &gwref.control_secret()).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods = stores.pods(ns, &gwref.selector());
    let mut slots = [SlotView::empty(Slot::A), SlotView::empty(Slot::B)];
    for view in &mut slots {
        let sts = get(&statefulsets, &gwref.slot_name(view.slot)).await?;
        *view = slot_view(view.slot, sts.as_ref(), &pods, memory);
        view.inputs = view.inputs.take().map(|i| i.or_limits_of(&gw.spec));
    }
    let services = backend_services(client, ns, gw).await?;
    let (endpoints, backend_problems) = backends(stores, ns, gw, &services);
    Ok(Cluster {
        ca_secret,
        pod_secret,
        slots,
        endpoints,
        backend_problems,
    })
}

/// Reads one slot's StatefulSet and pods, with their counts as last
/// polled.
pub(crate) fn slot_view(
    slot: Slot,
    sts: Option<&StatefulSet>,
    pods: &[Pod],
    memory: &Memory,
) -> SlotView {
    let counts = &memory.connections;
    let Some(sts) = sts else {
        return SlotView::empty(slot);
    };
    let annotations = sts.annotations();
    let inputs = annotations
        .get(names::ANNOTATION_POD_INPUTS)
        .and_then(|json| PodInputs::from_annotation(json).ok());
    let spec = sts.spec.as_ref();
    let template = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| {
            Some((
                a.get(names::ANNOTATION_REVISION)?.clone(),
                a.get(names::ANNOTATION_CONTROL_CERT)?.clone(),
            ))
        });
    let update_revision = sts.status.as_ref().and_then(|s| s.update_revision.clone());
    let views = pods
        .iter()
        .filter(|p| p.labels().get(names::LABEL_SLOT).map(String::as_str) == Some(slot_label(slot)))
        .map(|p| {
            let name = p.name_any();
            let status = p.status.as_ref();
            let running = p.metadata.deletion_timestamp.is_none()
                && status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let updated = match (&update_revision, p.labels().get("controller-revision-hash")) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            PodView {
                ordinal: name
                    .rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1),
                ip: status
                    .and_then(|s| s.pod_ip.clone())
                    .filter(|ip| !ip.is_empty()),
                running,
                ready,
                updated,
                connections: counts.get(&name).map(|c| c.owned),
                relayed: counts.get(&name).map(|c| c.relayed),
                uid: p.uid().unwrap_or_default(),
                restarts: status
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.name == names::CONTAINER)
                    .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                    .sum(),
                owned: memory.counters.get(&name).copied(),
                serving: memory.serving.get(&name).copied().unwrap_or(false)
                    && memory.polled.is_some_and(|t| t.elapsed() < SERVING_FRESH)
                    && !memory.unanswered.contains_key(&name),
                unanswered_since: memory.unanswered.get(&name).copied(),
                name,
            }
        })
        .collect();
    SlotView {
        slot,
        inputs,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0),
        template,
        pods: views,
    }
}

/// Every Service a route of `gw` names, `None` when it does not exist.
async fn backend_services(
    client: &Client,
    ns: &str,
    gw: &WebSocketGateway,
) -> Result<BTreeMap<String, Option<Service>>, Error> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let mut services = BTreeMap::new();
    for route in &gw.spec.routes {
        let name = &route.backend.service;
        if !services.contains_key(name) {
            services.insert(name.clone(), get(&api, name).await?);
        }
    }
    Ok(services)
}

/// Each route's ready endpoints, and a problem for each route without any.
fn backends(
    stores: &Stores,
    ns: &str,
    gw: &WebSocketGateway,
    services: &BTreeMap<String, Option<Service>>,
) -> (BTreeMap<String, Vec<snapshot::Endpoint>>, Vec<String>) {
    let mut endpoints = BTreeMap::new();
    let mut problems = Vec::new();
    for route in &gw.spec.routes {
        let name = &route.backend.service;
        let service = services.get(name).and_then(Option::as_ref);
        let slices = match service {
            Some(_) => stores.endpoint_slices(ns, name),
            None => Vec::new(),
        };
        match snapshot::route_endpoints(&route.backend.port, service, &slices) {
            Ok(found) => {
                endpoints.insert(route.name.clone(), found);
            }
            Err(why) => problems.push(format!(
                "route {}: backend Service {name}: {why}",
                route.name
            )),
        }
    }
    (endpoints, problems)
}

/// The control address of every pod that can take a snapshot, with its
/// pod name.
pub(crate) fn control_targets(slots: &[SlotView; 2]) -> BTreeMap<String, String> {
    slots
        .iter()
        .flat_map(|s| &s.pods)
        .filter(|p| p.steerable())
        .filter_map(|p| {
            Some((
                snapshot::socket_address(p.ip.as_deref()?, CONTROL_PORT),
                p.name.clone(),
            ))
        })
        .collect()
}

/// Whether to ask the pods for their counts: when a step may depend on
/// them, or when the last answer is old.
pub(crate) fn counts_due(
    status: &WebSocketGatewayStatus,
    slots: &[SlotView; 2],
    polled: Option<Instant>,
) -> bool {
    status.canary.is_some()
        || slots.iter().any(|s| s.pods.iter().any(|p| !p.updated))
        || polled.is_none_or(|t| t.elapsed() >= STATUS_REFRESH)
}

/// Asks every steerable pod for its counts; an unreachable pod's count
/// becomes unknown, and is remembered as unanswered since the first of an
/// unbroken run of failed polls (`now` for this one).
pub(crate) async fn poll<S: Steer>(
    ctx: &Context<S>,
    key: &str,
    ca: &Ca,
    slots: &mut [SlotView; 2],
    memory: &mut Memory,
    now: Timestamp,
) -> Result<(), Error> {
    let targets = control_targets(slots);
    let wanted: Vec<String> = targets.keys().cloned().collect();
    let answers = ctx.steer.status(key, ca, &wanted).await?;
    memory.connections.clear();
    memory.counters.clear();
    for (address, answer) in answers {
        let Some(pod) = targets.get(&address) else {
            continue;
        };
        match answer {
            Ok(status) => {
                let owned: u64 = status.connections.iter().map(|c| c.count).sum();
                let counts = PodCounts {
                    owned: i64::try_from(owned).unwrap_or(i64::MAX),
                    relayed: i64::try_from(status.relayed).unwrap_or(i64::MAX),
                };
                memory.connections.insert(pod.clone(), counts);
                memory.serving.insert(pod.clone(), status.serving);
                if let Some(owned) = &status.owned {
                    memory.counters.insert(
                        pod.clone(),
                        Counters::from_report(owned, &status.edge_closes),
                    );
                }
            }
            Err(e) => debug!(gateway = %key, pod = %pod, error = %e, "status poll failed"),
        }
    }
    memory.polled = Some(Instant::now());
    memory
        .serving
        .retain(|pod, _| targets.values().any(|t| t == pod));
    memory.unanswered = targets
        .into_values()
        .filter(|pod| !memory.connections.contains_key(pod))
        .map(|pod| {
            let since = memory.unanswered.get(&pod).copied().unwrap_or(now);
            (pod, since)
        })
        .collect();
    for pod in slots.iter_mut().flat_map(|s| s.pods.iter_mut()) {
        let counts = memory.connections.get(&pod.name);
        pod.connections = counts.map(|c| c.owned);
        pod.relayed = counts.map(|c| c.relayed);
        pod.owned = memory.counters.get(&pod.name).copied();
        let silent_for = pod
            .unanswered_since
            .map_or(0, |since| now.duration_since(since).as_secs());
        pod.serving = memory.serving.get(&pod.name).copied().unwrap_or(false)
            && silent_for < SERVING_GRACE.as_secs().try_into().unwrap_or(i64::MAX);
        pod.unanswered_since = memory.unanswered.get(&pod.name).copied();
    }
    ctx.remember(key, |m| {
        m.connections = memory.connections.clone();
        m.counters = memory.counters.clone();
        m.serving = memory.serving.clone();
        m.unanswered = memory.unanswered.clone();
        m.polled = memory.polled;
    });
    Ok(())
}

/// Reads one object by name: `None` when there is none.
pub(crate) async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("{} {name}", K::kind(&())),
        source,
    })
}
