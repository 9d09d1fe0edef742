//! The reconcile of one gateway: read what the cluster shows, plan with
//! the pure functions, apply the children server-side, push the snapshot
//! when it changed, and write the status.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Secret, Service},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{controller::Action, events::EventType},
};
use ringway_control::{all_acked, pki::Ca};
use ringway_crds::{
    Slot, SlotStatus, WebSocketGateway, WebSocketGatewayStatus, condition_reasons as reasons,
    condition_types as types,
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use crate::{
    Error, PodInputs, annotations, budget,
    children::{self, OperatorPods},
    conditions::{self, Decided},
    events::Events,
    metrics::Metrics,
    names::{CONTROL_PORT, FIELD_MANAGER, GatewayRef},
    observe::{self, get},
    pki,
    rollout::{self, Observed, PodCounts, SlotView},
    snapshot,
    steer::Steer,
};

/// Look again this often when nothing moves, to refresh the connection
/// counts in the status and to renew certificates in time.
pub const STEADY_REQUEUE: Duration = Duration::from_secs(60);
/// Ask the pods for their counts at most this often when nothing moves,
/// so that a storm of watch events never becomes a storm of RPCs.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// Retry a snapshot that some pods did not acknowledge after this long.
pub const UNACKED_REQUEUE: Duration = Duration::from_secs(5);
/// The first retry after an error; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between retries after errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context<S> {
    /// The API client.
    pub client: Client,
    /// The control channel.
    pub steer: S,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes events.
    pub events: Events,
    /// The data-plane image when a spec names none.
    pub default_image: String,
    /// The operator's own pods, which gateways' NetworkPolicies admit to
    /// the control port.
    pub operator_pods: OperatorPods,
    memory: Mutex<HashMap<String, Memory>>,
}

/// What the operator remembers of a gateway between reconciles. Losing it
/// (a restart) costs one snapshot push with a new epoch and one status poll.
#[derive(Clone, Debug, Default)]
struct Memory {
    /// Content hash and epoch of the last snapshot issued.
    hash: u64,
    epoch: u64,
    /// Control addresses that acknowledged `epoch`.
    acked: BTreeSet<String>,
    /// When the pods were last asked for their counts.
    polled: Option<Instant>,
    /// Live connections by pod name, from the last poll.
    connections: HashMap<String, PodCounts>,
    /// Consecutive failed reconciles, for the backoff.
    failures: u32,
    /// The last phase change published as an event: a step that is
    /// planned again (its push was not acknowledged) is not news.
    transition: Option<(&'static str, String)>,
}

impl<S: Steer> Context<S> {
    /// A context for the controller.
    pub fn new(
        client: Client,
        steer: S,
        metrics: Arc<Metrics>,
        events: Events,
        default_image: String,
        operator_pods: OperatorPods,
    ) -> Self {
        Self {
            client,
            steer,
            metrics,
            events,
            default_image,
            operator_pods,
            memory: Mutex::default(),
        }
    }

    fn memory(&self, key: &str) -> Memory {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn remember(&self, key: &str, f: impl FnOnce(&mut Memory)) {
        let mut all = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(key.to_owned()).or_default());
    }

    fn forget(&self, key: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.steer.forget(key);
        self.metrics.forget_gateway(key);
    }
}

/// Reconciles one gateway; counted and timed.
pub async fn reconcile<S: Steer>(
    gw: Arc<WebSocketGateway>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    let result = reconcile_gateway(&gw, &ctx, &key).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::label));
    if result.is_ok() {
        ctx.remember(&key, |m| m.failures = 0);
    }
    result
}

/// Logs, counts (in [`reconcile`]) and retries with a per-gateway
/// exponential backoff; a malformed object waits for a change.
pub fn error_policy<S: Steer>(
    gw: Arc<WebSocketGateway>,
    error: &Error,
    ctx: Arc<Context<S>>,
) -> Action {
    let key = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    warn!(gateway = %key, error = %error, reason = error.label(), "reconcile failed");
    if matches!(error, Error::Malformed(_)) {
        return Action::requeue(MAX_BACKOFF);
    }
    let mut failures = 0;
    ctx.remember(&key, |m| {
        m.failures = m.failures.saturating_add(1);
        failures = m.failures;
    });
    Action::requeue(backoff(failures))
}

/// The wait before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF)
}

async fn reconcile_gateway<S: Steer>(
    gw: &WebSocketGateway,
    ctx: &Context<S>,
    key: &str,
) -> Result<Action, Error> {
    if gw.metadata.deletion_timestamp.is_some() {
        // The children go with it (owner references); forget the rest.
        ctx.forget(key);
        return Ok(Action::await_change());
    }
    let gwref = GatewayRef::new(gw)?;
    let client = &ctx.client;
    let ns = gwref.namespace.as_str();
    let spec = &gw.spec;
    let old_status = gw.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut events: Vec<(EventType, String, String)> = Vec::new();

    // Certificates first: the pods cannot start without them.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret = get(&secrets, &gwref.ca_secret()).await?;
    let pod_secret = get(&secrets, &gwref.control_secret()).await?;
    let control = pki::plan(
        &gwref,
        ca_secret.as_ref(),
        pod_secret.as_ref(),
        SystemTime::now(),
    )?;
    for s in control.ca_secret.iter().chain(control.pod_secret.iter()) {
        apply(&secrets, s).await?;
    }
    if let Some(what) = &control.changed {
        events.push((
            EventType::Normal,
            "Certificates".to_owned(),
            format!("control channel: {what}"),
        ));
    }

    // What the cluster shows.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let all_pods = pods
        .list(&ListParams::default().labels(&gwref.selector_string()))
        .await
        .map_err(|source| Error::Read {
            what: "pods".into(),
            source,
        })?
        .items;
    let mut memory = ctx.memory(key);
    let mut slots = [SlotView::empty(Slot::A), SlotView::empty(Slot::B)];
    for view in &mut slots {
        let sts = get(&statefulsets, &gwref.slot_name(view.slot)).await?;
        *view = observe::slot_view(view.slot, sts.as_ref(), &all_pods, &memory.connections);
    }
    let (endpoints, backend_problems) = observe::backends(client, ns, gw).await?;

    // Ask the pods for their counts when a step may depend on them, or
    // when the last answer is old.
    let moving = old_status.canary.is_some()
        || slots.iter().any(|s| s.pods.iter().any(|p| !p.updated))
        || memory.polled.is_none_or(|t| t.elapsed() >= STATUS_REFRESH);
    let targets = control_targets(&slots);
    if moving {
        poll(ctx, key, &control.ca, &targets, &mut slots, &mut memory).await?;
    }

    let spec_inputs = PodInputs::from_spec(spec, &ctx.default_image);
    let intent = annotations::read(gw.annotations());
    let plan = rollout::plan(&Observed {
        spec: &spec_inputs,
        shards: i32::from(spec.shards),
        budget: &spec.disruption_budget,
        intent: &intent,
        status: &old_status,
        slots: &slots,
        control_cert: &control.cert_version,
        now,
    });

    // Children, server-side applied.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for s in &plan.slots {
        apply(
            &config_maps,
            &children::config_map(&gwref, s.slot, &s.inputs),
        )
        .await?;
        apply(
            &statefulsets,
            &children::stateful_set(
                &gwref,
                s.slot,
                &s.inputs,
                s.replicas,
                s.partition,
                &control.cert_version,
            ),
        )
        .await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    apply(
        &services,
        &children::client_service(&gwref, spec.listener.port),
    )
    .await?;
    apply(&services, &children::peer_service(&gwref)).await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    apply(&pdbs, &children::disruption_budget(&gwref)).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    if spec.network_policy.enabled {
        let policy = children::network_policy(&gwref, &spec.network_policy, &ctx.operator_pods);
        apply(&policies, &policy).await?;
    } else {
        delete_owned(&policies, &gwref.network_policy(), &gwref).await?;
    }

    // The snapshot: sent when its content changed, or to pods that have
    // not acknowledged it yet. An unchanged gateway touches no socket.
    let image = |slot: Slot| -> String {
        plan.slots
            .iter()
            .find(|s| s.slot == slot)
            .map(|s| s.inputs.image.clone())
            .or_else(|| slots[index(slot)].inputs.as_ref().map(|i| i.image.clone()))
            .unwrap_or_default()
    };
    let images = [image(Slot::A), image(Slot::B)];
    let inputs = snapshot::Inputs {
        gateway: key.to_owned(),
        spec,
        roles: plan.roles,
        slots: &slots,
        images: [&images[0], &images[1]],
        endpoints: &endpoints,
    };
    let mut draft = snapshot::build(0, &inputs);
    let hash = snapshot::content_hash(&draft);
    ctx.metrics.set_pods_steered(key, targets.len() as i64);
    let mut epoch_written = None;
    if hash != memory.hash {
        let epoch = memory
            .epoch
            .max(u64::try_from(old_status.epoch).unwrap_or(0))
            + 1;
        // Written before it is sent: an operator that restarts after the
        // push never issues this epoch again with other content.
        write_epoch(gw, client, epoch).await?;
        epoch_written = Some(epoch);
        memory.hash = hash;
        memory.epoch = epoch;
        memory.acked.clear();
    }
    draft.epoch = memory.epoch;
    let pending: Vec<String> = targets
        .keys()
        .filter(|a| !memory.acked.contains(*a))
        .cloned()
        .collect();
    let mut drained = 0i64;
    let mut failed = Vec::new();
    if !pending.is_empty() {
        let results = ctx.steer.push(key, &control.ca, &pending, &draft).await?;
        ctx.metrics.snapshot_pushed(
            results.len() as u64,
            results.iter().filter(|r| r.outcome.is_err()).count() as u64,
        );
        for r in &results {
            match &r.outcome {
                Ok(ack) if ack.epoch == memory.epoch => {
                    memory.acked.insert(r.address.clone());
                    drained += i64::try_from(ack.draining).unwrap_or(i64::MAX);
                }
                Ok(ack) => failed.push(format!(
                    "{} runs epoch {}",
                    pod_name(&targets, &r.address),
                    ack.epoch
                )),
                Err(e) => failed.push(format!("{}: {}", pod_name(&targets, &r.address), e)),
            }
        }
        if all_acked(&results, memory.epoch) {
            debug!(gateway = %key, epoch = memory.epoch, pods = results.len(), drained, "snapshot acknowledged");
        } else {
            warn!(gateway = %key, epoch = memory.epoch, failed = ?failed, "snapshot not acknowledged by every pod");
        }
    }
    let acked = targets.keys().all(|a| memory.acked.contains(a));
    ctx.remember(key, |m| *m = memory.clone());

    // Status.
    let mut canary = plan.canary.clone();
    if !acked && let (Some(new), Some(old)) = (canary.as_mut(), old_status.canary.as_ref()) {
        // A weight counts only once every pod runs it.
        new.weight = old.weight;
    }
    let disrupted = if epoch_written.is_some() || plan.disrupting > 0 {
        plan.disrupting.max(drained)
    } else {
        0
    };
    let disruption = budget::record(
        &spec.disruption_budget,
        old_status.disruption.as_ref(),
        now,
        disrupted,
    );
    let stable_view = &slots[index(plan.stable.0)];
    let shards_ready: i32 = slots.iter().map(SlotView::ready).sum();
    let connections: i64 = slots.iter().map(SlotView::connections).sum();
    let mut problems = plan.problems.clone();
    problems.extend(backend_problems);
    let decided = decide(
        &plan,
        &gwref,
        spec.shards,
        &slots,
        &Pushed {
            pods: targets.len(),
            acked,
            failed: &failed,
        },
        &problems,
    );
    let status = WebSocketGatewayStatus {
        observed_generation: gw.metadata.generation,
        conditions: conditions::merge(
            &old_status.conditions,
            decided,
            gw.metadata.generation,
            &Time(now),
        ),
        shards_ready,
        connections,
        epoch: i64::try_from(
            memory
                .epoch
                .max(u64::try_from(old_status.epoch).unwrap_or(0)),
        )
        .unwrap_or(i64::MAX),
        stable: Some(SlotStatus {
            slot: plan.stable.0,
            image: plan.stable.1.image.clone(),
            revision: plan.stable.1.revision(),
            shards_ready: stable_view.ready(),
            connections: stable_view.connections(),
        }),
        canary,
        disruption,
    };
    // Events: phase changes and newly seen problems.
    if let Some(transition) = &plan.transition
        && memory.transition.as_ref() != Some(transition)
    {
        let (reason, message) = transition;
        events.push((EventType::Normal, (*reason).to_owned(), message.clone()));
        ctx.remember(key, |m| m.transition = Some(transition.clone()));
    }
    let old_degraded =
        conditions::find(&old_status.conditions, types::DEGRADED).map(|c| c.message.clone());
    let new_degraded = conditions::find(&status.conditions, types::DEGRADED);
    if let Some(c) = new_degraded
        && c.status == "True"
        && old_degraded.as_deref() != Some(c.message.as_str())
    {
        events.push((EventType::Warning, c.reason.clone(), c.message.clone()));
    }
    if status != old_status {
        write_status(gw, client, &status).await?;
    }
    for (type_, reason, note) in events {
        publish(ctx, gw, type_, &reason, note).await;
    }
    info!(gateway = %key, epoch = status.epoch, ready = shards_ready, connections, acked, "reconciled");
    Ok(Action::requeue(if !acked {
        UNACKED_REQUEUE
    } else {
        plan.requeue.unwrap_or(STEADY_REQUEUE)
    }))
}

/// How the latest snapshot reached the pods.
struct Pushed<'a> {
    /// The pods it was pushed to.
    pods: usize,
    /// Whether every one of them acknowledged the current epoch.
    acked: bool,
    /// Those that did not in this reconcile, with why.
    failed: &'a [String],
}

/// The pods ready, in the unit of the `Ready` column (data-plane pods of
/// every version): "3 of 3 pods ready", and per version when a canary or
/// a retiring version runs beside stable: "4 of 4 pods ready (stable 2 of
/// 2, canary 2 of 2)".
fn pods_ready(roles: &rollout::Roles, shards: u16, slots: &[SlotView; 2]) -> String {
    let want = i32::from(shards);
    let stable = slots[index(roles.stable)].ready();
    let mut parts = vec![format!("stable {stable} of {want}")];
    let (mut ready, mut wanted) = (stable, want);
    if let Some(canary) = roles.canary {
        let r = slots[index(canary)].ready();
        parts.push(format!("canary {r} of {want}"));
        ready += r;
        wanted += want;
    }
    if let Some(old) = roles.retiring.filter(|s| Some(*s) != roles.canary) {
        // Retiring pods answer not ready; any that still do are counted
        // in the column, so they are named here too.
        let r = slots[index(old)].ready();
        if r > 0 {
            parts.push(format!("{r} of the retiring version"));
            ready += r;
        }
    }
    if parts.len() == 1 {
        format!("{ready} of {wanted} pods ready")
    } else {
        format!("{ready} of {wanted} pods ready ({})", parts.join(", "))
    }
}

fn decide(
    plan: &rollout::Plan,
    gwref: &GatewayRef,
    shards: u16,
    slots: &[SlotView; 2],
    pushed: &Pushed<'_>,
    problems: &[String],
) -> Vec<Decided> {
    let Pushed {
        pods,
        acked,
        failed,
    } = *pushed;
    let stable_ready = slots[index(plan.roles.stable)].ready() >= i32::from(shards);
    let counted = pods_ready(&plan.roles, shards, slots);
    let ready_condition = if stable_ready && acked {
        Decided {
            type_: types::READY,
            status: true,
            reason: reasons::SHARDS_READY,
            message: format!("{counted} on the latest snapshot"),
        }
    } else {
        Decided {
            type_: types::READY,
            status: false,
            reason: reasons::SHARDS_NOT_READY,
            message: if !stable_ready {
                format!(
                    "{counted}; see `kubectl get pods -l {}`",
                    gwref.selector_string()
                )
            } else {
                format!(
                    "{} of {pods} pods acknowledged the latest snapshot",
                    pods.saturating_sub(failed.len()),
                )
            },
        }
    };
    let progressing = match &plan.progress {
        Some(p) => Decided {
            type_: types::PROGRESSING,
            status: p.reason != reasons::STABLE,
            reason: p.reason,
            message: p.message.clone(),
        },
        None => Decided {
            type_: types::PROGRESSING,
            status: false,
            reason: reasons::STABLE,
            message: "nothing is changing".into(),
        },
    };
    let degraded = if let Some(p) = problems.iter().find(|p| p.starts_with("ringway.dev/")) {
        Decided {
            type_: types::DEGRADED,
            status: true,
            reason: reasons::INVALID_ANNOTATION,
            message: format!("{p}; the gateway keeps running as it was"),
        }
    } else if !problems.is_empty() {
        Decided {
            type_: types::DEGRADED,
            status: true,
            reason: reasons::BACKEND_UNAVAILABLE,
            message: problems.join("; ").chars().take(1000).collect(),
        }
    } else if !failed.is_empty() {
        Decided {
            type_: types::DEGRADED,
            status: true,
            reason: reasons::SNAPSHOT_NOT_ACKNOWLEDGED,
            message: format!(
                "pods did not acknowledge the snapshot: {}",
                failed.join("; ")
            ),
        }
    } else {
        Decided {
            type_: types::DEGRADED,
            status: false,
            reason: reasons::HEALTHY,
            message: "nothing needs attention".into(),
        }
    };
    vec![ready_condition, progressing, degraded]
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

fn pod_name<'a>(targets: &'a BTreeMap<String, String>, address: &'a str) -> &'a str {
    targets.get(address).map_or(address, String::as_str)
}

/// The control address of every pod that can take a snapshot, with its
/// pod name.
fn control_targets(slots: &[SlotView; 2]) -> BTreeMap<String, String> {
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

/// Asks every steerable pod for its counts; an unreachable pod's count
/// becomes unknown.
async fn poll<S: Steer>(
    ctx: &Context<S>,
    key: &str,
    ca: &Ca,
    targets: &BTreeMap<String, String>,
    slots: &mut [SlotView; 2],
    memory: &mut Memory,
) -> Result<(), Error> {
    let wanted: Vec<String> = targets.keys().cloned().collect();
    let answers = ctx.steer.status(key, ca, &wanted).await?;
    memory.connections.clear();
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
            }
            Err(e) => debug!(gateway = %key, pod = %pod, error = %e, "status poll failed"),
        }
    }
    memory.polled = Some(Instant::now());
    for pod in slots.iter_mut().flat_map(|s| s.pods.iter_mut()) {
        let counts = memory.connections.get(&pod.name);
        pod.connections = counts.map(|c| c.owned);
        pod.relayed = counts.map(|c| c.relayed);
    }
    ctx.remember(key, |m| {
        m.connections = memory.connections.clone();
        m.polled = memory.polled;
    });
    Ok(())
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        what: format!("{} {name}", K::kind(&())),
        source,
    })
}

/// Deletes the child `name` if it exists and this gateway owns it: an
/// object of the same name that someone else made is left alone. The
/// delete is conditional on the uid read, so it cannot hit a replacement.
async fn delete_owned<K>(api: &Api<K>, name: &str, gw: &GatewayRef) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(object) = get(api, name).await? else {
        return Ok(());
    };
    let owned = object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == gw.owner.uid && o.controller == Some(true));
    if !owned {
        debug!(name, kind = K::kind(&()).as_ref(), "not ours: left alone");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(name, kind = K::kind(&()).as_ref(), "deleted");
            Ok(())
        }
        // Gone already (or replaced by a new object, which is not ours).
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::Delete {
            what: format!("{} {name}", K::kind(&())),
            source,
        }),
    }
}

fn status_api(gw: &WebSocketGateway, client: &Client) -> Api<WebSocketGateway> {
    Api::namespaced(client.clone(), &gw.namespace().unwrap_or_default())
}

async fn write_epoch(gw: &WebSocketGateway, client: &Client, epoch: u64) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": { "epoch": epoch } });
    status_api(gw, client)
        .patch_status(
            &gw.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    Ok(())
}

async fn write_status(
    gw: &WebSocketGateway,
    client: &Client,
    status: &WebSocketGatewayStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": WebSocketGateway::api_version(&()),
        "kind": WebSocketGateway::kind(&()),
        "status": status,
    });
    status_api(gw, client)
        .patch_status(
            &gw.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchStatus)?;
    Ok(())
}

async fn publish<S>(
    ctx: &Context<S>,
    gw: &WebSocketGateway,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if let Err(e) = ctx
        .events
        .publish(&gw.object_ref(&()), type_, reason, note)
        .await
    {
        warn!(gateway = %gw.name_any(), error = %e, "publishing an event failed");
    }
}
