//! Where a gateway's versions should be next: the rollout state machine.
//!
//! [`plan`] is a pure function of what the cluster shows (the two slots'
//! StatefulSets and pods, the gateway's status and annotations) and returns
//! what each slot should run, the canary's phase and weight, and whether a
//! step waits for the disruption budget. The reconciler applies the plan;
//! nothing here talks to the API server or to a pod.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ringway_crds::{CanaryPhase, CanaryStatus, DisruptionBudget, Slot, WebSocketGatewayStatus};

use crate::{
    PodInputs,
    annotations::{Intent, Mode},
    budget,
    names::other_slot,
};

/// One data-plane pod as the API server shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    /// The pod's name: also its shard id.
    pub name: String,
    /// The StatefulSet ordinal.
    pub ordinal: i32,
    /// `status.podIP`, once it has one.
    pub ip: Option<String>,
    /// Running and not being deleted: it can take a snapshot.
    pub running: bool,
    /// The `Ready` condition: it has a snapshot and is not draining.
    pub ready: bool,
    /// It runs the StatefulSet's latest template.
    pub updated: bool,
    /// The live connections it owns (relays to a backend), from its last
    /// status report.
    pub connections: Option<i64>,
    /// The clients that entered through it and that it relays to their
    /// owner on another pod, from the same report.
    pub relayed: Option<i64>,
}

/// What one pod reported holding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Connections it owns.
    pub owned: i64,
    /// Connections it relays to their owner.
    pub relayed: i64,
}

impl PodView {
    /// Every client connection its stop would close: those it owns and
    /// those it relays.
    pub fn held(&self) -> i64 {
        self.connections.unwrap_or(0) + self.relayed.unwrap_or(0)
    }

    /// Takes a snapshot push: running, with an address.
    pub fn steerable(&self) -> bool {
        self.running && self.ip.is_some()
    }

    /// Holds a place in the ring: ready, with an address.
    pub fn in_ring(&self) -> bool {
        self.steerable() && self.ready
    }
}

/// One slot's StatefulSet and pods; a slot without a StatefulSet has
/// `replicas == 0`, no inputs and no pods.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// Which slot.
    pub slot: Slot,
    /// What its StatefulSet was rendered from (its annotation).
    pub inputs: Option<PodInputs>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.updateStrategy.rollingUpdate.partition`.
    pub partition: i32,
    /// The pod template's revision and control-certificate annotations.
    pub template: Option<(String, String)>,
    /// Its pods.
    pub pods: Vec<PodView>,
}

impl SlotView {
    /// A slot with no StatefulSet.
    pub fn empty(slot: Slot) -> Self {
        Self {
            slot,
            inputs: None,
            replicas: 0,
            partition: 0,
            template: None,
            pods: Vec::new(),
        }
    }

    /// Pods that hold a place in the ring.
    pub fn ready(&self) -> i32 {
        self.pods.iter().filter(|p| p.in_ring()).count() as i32
    }

    /// Live connections on this slot's pods, as last reported.
    pub fn connections(&self) -> i64 {
        self.pods.iter().filter_map(|p| p.connections).sum()
    }
}

/// Everything the plan is made from.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The pod inputs of the current spec.
    pub spec: &'a PodInputs,
    /// `spec.shards`.
    pub shards: i32,
    /// The gateway's budget.
    pub budget: &'a DisruptionBudget,
    /// What the annotations ask for.
    pub intent: &'a Intent,
    /// The status as last written.
    pub status: &'a WebSocketGatewayStatus,
    /// Slots A and B, in that order.
    pub slots: &'a [SlotView; 2],
    /// The current control certificate's version string.
    pub control_cert: &'a str,
    /// The wall clock.
    pub now: Timestamp,
}

/// What one slot's StatefulSet should be.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotPlan {
    /// Which slot.
    pub slot: Slot,
    /// What to render it from.
    pub inputs: PodInputs,
    /// Pods.
    pub replicas: i32,
    /// The rolling-update partition.
    pub partition: i32,
}

/// The role of each slot in the next snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The slot whose ready pods form the stable version.
    pub stable: Slot,
    /// The slot whose ready pods form the canary version, if any.
    pub canary: Option<Slot>,
    /// Percent of the key space on the canary.
    pub weight: u8,
    /// The slot on its way out, whose pods answer not ready so that no new
    /// client enters through them (see [`retire_paced`]).
    pub retiring: Option<Slot>,
}

/// Why the gateway is not at rest, for the `Progressing` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// A `condition_reasons` constant.
    pub reason: &'static str,
    /// What is happening and what, if anything, the person should do.
    pub message: String,
}

/// The next state of a gateway's versions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// StatefulSets to apply. A slot not listed has no StatefulSet and
    /// needs none.
    pub slots: Vec<SlotPlan>,
    /// The roles in the snapshot.
    pub roles: Roles,
    /// The stable version's slot and inputs once this plan is done.
    pub stable: (Slot, PodInputs),
    /// The canary's status to write (its weight is the one being pushed;
    /// the reconciler keeps the old one when the push is not acknowledged).
    pub canary: Option<CanaryStatus>,
    /// `None` when nothing is changing.
    pub progress: Option<Progress>,
    /// Problems a person must fix (bad annotations).
    pub problems: Vec<String>,
    /// Connections this plan's steps are expected to disrupt.
    pub disrupting: i64,
    /// Look again after this long (a phase waits for pods, drains or the
    /// budget).
    pub requeue: Option<Duration>,
    /// A phase began or ended: `(reason, message)` for an event.
    pub transition: Option<(&'static str, String)>,
}

/// How often to look again while something is moving.
pub const PROGRESS_REQUEUE: Duration = Duration::from_secs(5);

use ringway_crds::condition_reasons as reasons;

/// Plans the next state of a gateway.
pub fn plan(o: &Observed<'_>) -> Plan {
    let stable_slot = o.status.stable.as_ref().map_or(Slot::A, |s| s.slot);
    let stable_view = view(o.slots, stable_slot);
    let stable_inputs = stable_view.inputs.clone().unwrap_or_else(|| o.spec.clone());
    let live: i64 = o.slots.iter().map(SlotView::connections).sum();
    let allowance = budget::allowance(o.budget, live, o.status.disruption.as_ref(), o.now);
    let mut plan = Plan {
        slots: Vec::new(),
        roles: Roles {
            stable: stable_slot,
            canary: None,
            weight: 0,
            retiring: None,
        },
        stable: (stable_slot, stable_inputs.clone()),
        canary: None,
        progress: None,
        problems: o.intent.problems.iter().map(ToString::to_string).collect(),
        disrupting: 0,
        requeue: None,
        transition: None,
    };
    let spec_changed = o.spec.revision() != stable_inputs.revision();
    match &o.status.canary {
        None => {
            if o.intent.abort && !spec_changed {
                plan.problems.push(format!(
                    "{}: \"true\" but no canary runs; remove the annotation",
                    ringway_crds::annotations::CANARY_ABORT
                ));
            }
            let start_canary = spec_changed && o.intent.mode == Mode::Canary && !o.intent.abort;
            if start_canary {
                start(o, &mut plan, stable_slot, &stable_inputs);
            } else {
                // Steady, scaling, or rolling in place.
                let inputs = if spec_changed && o.intent.mode == Mode::Rolling {
                    o.spec.clone()
                } else {
                    stable_inputs.clone()
                };
                if spec_changed && o.intent.mode != Mode::Rolling {
                    plan.progress = Some(Progress {
                        reason: reasons::STABLE,
                        message: held_message(o.intent),
                    });
                }
                plan.stable.1 = inputs.clone();
                stable_slot_plan(o, &mut plan, stable_view, inputs, &allowance, live);
            }
            retire(o, &mut plan, other_slot(stable_slot), false);
        }
        Some(canary) => {
            let aborting = o.intent.abort || !spec_changed || canary.phase == CanaryPhase::Aborting;
            if canary.phase == CanaryPhase::Promoting {
                promote(o, &mut plan, canary, &allowance);
            } else if aborting {
                abort(o, &mut plan, canary, &stable_inputs, &allowance, live);
            } else {
                shift(o, &mut plan, canary, &stable_inputs, &allowance, live);
            }
        }
    }
    plan
}

fn view(slots: &[SlotView; 2], slot: Slot) -> &SlotView {
    match slot {
        Slot::A => &slots[0],
        Slot::B => &slots[1],
    }
}

fn held_message(intent: &Intent) -> String {
    if intent.abort {
        format!(
            "the spec differs from the stable version but {} is \"true\": revert the spec, or remove the annotation to start the canary again",
            ringway_crds::annotations::CANARY_ABORT
        )
    } else {
        format!(
            "the spec change waits until {} is fixed",
            ringway_crds::annotations::ROLLOUT
        )
    }
}

/// The stable slot outside a canary: scale one shard per budget step and
/// roll a changed template one pod per budget step.
fn stable_slot_plan(
    o: &Observed<'_>,
    plan: &mut Plan,
    current: &SlotView,
    inputs: PodInputs,
    allowance: &budget::Allowance,
    live: i64,
) {
    let mut replicas = current.replicas;
    let settled = current.ready() == current.replicas;
    if current.replicas == 0 || live == 0 {
        replicas = o.shards;
    } else if replicas != o.shards {
        // Adding one of n+1 shards moves 1/(n+1) of the keys; removing one
        // of n closes that pod's connections.
        let cost = budget::ceil_div(live, i64::from(replicas.max(o.shards)));
        if !settled {
            wait(
                plan,
                reasons::ROLLING_UPDATE,
                format!(
                    "scaling from {replicas} to {} shards: waiting for the pods to be ready",
                    o.shards
                ),
            );
        } else if allowance.allows(cost) {
            replicas += (o.shards - replicas).signum();
            plan.disrupting += cost;
            plan.progress = Some(Progress {
                reason: reasons::ROLLING_UPDATE,
                message: format!("scaling to {} shards: now {replicas}", o.shards),
            });
            plan.requeue = Some(PROGRESS_REQUEUE);
        } else {
            budget_wait(
                plan,
                allowance,
                o.now,
                format!("scaling to {} shards (at {replicas})", o.shards),
            );
        }
    }
    let partition = partition(o, plan, current, &inputs, replicas, allowance);
    plan.slots.push(SlotPlan {
        slot: current.slot,
        inputs,
        replicas,
        partition,
    });
}

/// The rolling-update partition: pods at or above it run the new
/// template. Lowered by one when the pods above are updated and ready and
/// the budget allows the next pod's connections to be closed.
fn partition(
    o: &Observed<'_>,
    plan: &mut Plan,
    current: &SlotView,
    inputs: &PodInputs,
    replicas: i32,
    allowance: &budget::Allowance,
) -> i32 {
    if current.replicas == 0 || current.pods.is_empty() {
        return 0;
    }
    let desired = (inputs.revision(), o.control_cert.to_owned());
    if current.template.as_ref() != Some(&desired) {
        plan.progress = Some(Progress {
            reason: reasons::ROLLING_UPDATE,
            message: format!("rolling update to revision {} started", desired.0),
        });
        plan.requeue = Some(PROGRESS_REQUEUE);
        return replicas;
    }
    let p = current.partition.min(replicas);
    let pending = current
        .pods
        .iter()
        .filter(|pod| !pod.updated && pod.ordinal < replicas)
        .count();
    if pending == 0 {
        return 0;
    }
    let above_done = current
        .pods
        .iter()
        .filter(|pod| pod.ordinal >= p && pod.ordinal < replicas)
        .all(|pod| pod.updated && pod.in_ring());
    let done = replicas as usize - pending;
    let what = format!(
        "rolling update to revision {}: {done} of {replicas} pods updated",
        desired.0
    );
    if p == 0 || !above_done {
        wait(plan, reasons::ROLLING_UPDATE, what);
        return p;
    }
    let next = current.pods.iter().find(|pod| pod.ordinal == p - 1);
    if charge_stop(o, plan, allowance, next, reasons::ROLLING_UPDATE, what) {
        p - 1
    } else {
        p
    }
}

/// Whether the budget allows stopping `pod` now, which closes every
/// connection it holds (owned and relayed). If so the cost is charged and
/// progress says `what` with `reason`; if not, progress says when the
/// budget refills.
fn charge_stop(
    o: &Observed<'_>,
    plan: &mut Plan,
    allowance: &budget::Allowance,
    pod: Option<&PodView>,
    reason: &'static str,
    what: String,
) -> bool {
    let cost = pod.map_or(0, PodView::held);
    if allowance.allows(cost) {
        plan.disrupting += cost;
        wait(plan, reason, what);
        true
    } else {
        budget_wait(plan, allowance, o.now, what);
        false
    }
}

fn wait(plan: &mut Plan, reason: &'static str, message: String) {
    plan.progress = Some(Progress { reason, message });
    plan.requeue = Some(PROGRESS_REQUEUE);
}

fn budget_wait(plan: &mut Plan, allowance: &budget::Allowance, now: Timestamp, what: String) {
    let secs = allowance.refills_at.duration_since(now).as_secs().max(1);
    plan.progress = Some(Progress {
        reason: reasons::WAITING_FOR_BUDGET,
        message: format!(
            "{what}; the next step waits {secs}s for the disruption budget (window refills at {})",
            allowance.refills_at
        ),
    });
    plan.requeue = Some(Duration::from_secs(secs.unsigned_abs()).min(PROGRESS_REQUEUE * 12));
}

/// Scales `slot` to zero if it has a StatefulSet; with `keep` it stays up.
fn retire(o: &Observed<'_>, plan: &mut Plan, slot: Slot, keep: bool) {
    let v = view(o.slots, slot);
    if let Some(inputs) = &v.inputs {
        plan.slots.push(SlotPlan {
            slot,
            inputs: inputs.clone(),
            replicas: if keep { v.replicas } else { 0 },
            partition: 0,
        });
    }
}

/// Stops `slot`'s pods one at a time, highest ordinal first, each when the
/// budget allows the connections it holds. A pod that owns none still
/// relays the clients that entered through it (the client Service spans
/// both slots), and its stop closes them with 1001. Returns whether the
/// slot has no pods left to stop.
fn retire_paced(
    o: &Observed<'_>,
    plan: &mut Plan,
    slot: Slot,
    allowance: &budget::Allowance,
    what: &str,
) -> bool {
    let v = view(o.slots, slot);
    let Some(inputs) = &v.inputs else {
        return true;
    };
    let mut replicas = v.replicas;
    if replicas > 0 {
        let next = v.pods.iter().find(|pod| pod.ordinal == replicas - 1);
        let cost = next.map_or(0, PodView::held);
        let message = format!(
            "{what}: stopping the old pods one at a time, {replicas} left (the next relays {cost} connections)"
        );
        if charge_stop(
            o,
            plan,
            allowance,
            next,
            reasons::CANARY_IN_PROGRESS,
            message,
        ) {
            replicas -= 1;
        }
    }
    plan.slots.push(SlotPlan {
        slot,
        inputs: inputs.clone(),
        replicas,
        partition: 0,
    });
    replicas == 0
}

fn canary_status(
    slot: Slot,
    inputs: &PodInputs,
    view: &SlotView,
    phase: CanaryPhase,
    weight: u8,
    target: Option<u8>,
    drained: i64,
) -> CanaryStatus {
    CanaryStatus {
        phase,
        pods: ringway_crds::SlotStatus {
            slot,
            image: inputs.image.clone(),
            revision: inputs.revision(),
            shards_ready: view.ready(),
            connections: view.connections(),
        },
        weight,
        target_weight: target,
        drained,
    }
}

/// During a canary the stable slot keeps its version and at least the
/// spec's number of shards.
fn keep_stable(o: &Observed<'_>, plan: &mut Plan, stable: Slot, inputs: &PodInputs) {
    plan.slots.push(SlotPlan {
        slot: stable,
        inputs: inputs.clone(),
        replicas: view(o.slots, stable).replicas.max(o.shards),
        partition: 0,
    });
}

/// The stable slot as it is and the canary slot on the current spec.
fn canary_alongside_stable(
    o: &Observed<'_>,
    plan: &mut Plan,
    stable: Slot,
    stable_inputs: &PodInputs,
    canary: Slot,
) {
    keep_stable(o, plan, stable, stable_inputs);
    plan.slots.push(SlotPlan {
        slot: canary,
        inputs: o.spec.clone(),
        replicas: o.shards,
        partition: 0,
    });
    plan.roles.canary = Some(canary);
}

fn start(o: &Observed<'_>, plan: &mut Plan, stable: Slot, stable_inputs: &PodInputs) {
    let slot = other_slot(stable);
    canary_alongside_stable(o, plan, stable, stable_inputs, slot);
    plan.canary = Some(canary_status(
        slot,
        o.spec,
        view(o.slots, slot),
        CanaryPhase::Starting,
        0,
        o.intent.weight,
        0,
    ));
    plan.transition = Some((
        "CanaryStarted",
        format!(
            "canary of image {} (revision {}) starting in slot {slot:?}",
            o.spec.image,
            o.spec.revision()
        ),
    ));
    wait(
        plan,
        reasons::CANARY_IN_PROGRESS,
        format!(
            "canary starting in slot {slot:?}: waiting for {} pods",
            o.shards
        ),
    );
}

/// Canary running: start, step the weight toward the annotation, hold, or
/// promote at 100.
fn shift(
    o: &Observed<'_>,
    plan: &mut Plan,
    canary: &CanaryStatus,
    stable_inputs: &PodInputs,
    allowance: &budget::Allowance,
    live: i64,
) {
    let slot = canary.pods.slot;
    let cview = view(o.slots, slot);
    let stable = other_slot(slot);
    canary_alongside_stable(o, plan, stable, stable_inputs, slot);
    let target = o.intent.weight.unwrap_or(canary.weight);
    let mut weight = canary.weight;
    let mut drained = canary.drained;
    let phase = if canary.phase == CanaryPhase::Starting && cview.ready() < o.shards {
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!(
                "canary starting in slot {slot:?}: {} of {} pods ready",
                cview.ready(),
                o.shards
            ),
        );
        CanaryPhase::Starting
    } else if weight == 100 && target == 100 {
        return promote_start(o, plan, canary, allowance);
    } else if target != weight {
        match budget::next_weight(weight, target, live, allowance) {
            Some(next) => {
                let cost = budget::weight_change_cost(live, weight, next);
                plan.disrupting += cost;
                drained = cost;
                plan.transition = Some((
                    "CanaryWeightChanged",
                    format!(
                        "canary weight {weight}% → {next}% (target {target}%), about {cost} connections move"
                    ),
                ));
                weight = next;
                wait(
                    plan,
                    reasons::CANARY_IN_PROGRESS,
                    format!("canary shifting to {next}% of the keys (target {target}%)"),
                );
                CanaryPhase::Shifting
            }
            None => {
                budget_wait(
                    plan,
                    allowance,
                    o.now,
                    format!("canary at {weight}%, target {target}%"),
                );
                CanaryPhase::WaitingForBudget
            }
        }
    } else {
        plan.progress = Some(Progress {
            reason: reasons::CANARY_IN_PROGRESS,
            message: format!(
                "canary holds {weight}% of the keys; set {} to move it, \"100\" promotes, {}: \"true\" aborts",
                ringway_crds::annotations::CANARY_WEIGHT,
                ringway_crds::annotations::CANARY_ABORT
            ),
        });
        CanaryPhase::Holding
    };
    if phase != canary.phase && plan.transition.is_none() {
        plan.transition = Some((
            "CanaryPhaseChanged",
            format!("canary {:?} at {weight}%", phase),
        ));
    }
    plan.roles.weight = weight;
    plan.canary = Some(canary_status(
        slot,
        o.spec,
        cview,
        phase,
        weight,
        (target != weight).then_some(target),
        drained,
    ));
}

/// Weight 100 acknowledged: the canary's slot becomes stable; the old
/// slot keeps running until its connections have drained.
fn promote_start(
    o: &Observed<'_>,
    plan: &mut Plan,
    canary: &CanaryStatus,
    allowance: &budget::Allowance,
) {
    let promoted = CanaryStatus {
        phase: CanaryPhase::Promoting,
        ..canary.clone()
    };
    plan.transition = Some((
        "CanaryPromoting",
        format!(
            "canary in slot {:?} becomes stable; the old version's pods drain and stop",
            canary.pods.slot
        ),
    ));
    promote(o, plan, &promoted, allowance);
}

fn promote(
    o: &Observed<'_>,
    plan: &mut Plan,
    canary: &CanaryStatus,
    allowance: &budget::Allowance,
) {
    let new = canary.pods.slot;
    let old = other_slot(new);
    let old_view = view(o.slots, old);
    plan.roles = Roles {
        stable: new,
        canary: None,
        weight: 0,
        retiring: Some(old),
    };
    plan.stable = (new, o.spec.clone());
    plan.slots.push(SlotPlan {
        slot: new,
        inputs: o.spec.clone(),
        replicas: o.shards,
        partition: 0,
    });
    let left = old_view.connections();
    let gone = if left > 0 {
        retire(o, plan, old, true);
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!("promoting slot {new:?}: {left} connections left on the old version's pods"),
        );
        false
    } else {
        retire_paced(o, plan, old, allowance, &format!("promoting slot {new:?}"))
    };
    if !gone {
        plan.canary = Some(canary_status(
            new,
            o.spec,
            view(o.slots, new),
            CanaryPhase::Promoting,
            100,
            None,
            canary.drained,
        ));
    } else {
        plan.canary = None;
        plan.transition = Some((
            "CanaryPromoted",
            format!(
                "image {} (revision {}) is stable in slot {new:?}",
                o.spec.image,
                o.spec.revision()
            ),
        ));
    }
}

/// Aborting: the weight steps back to 0 within the budget; once the pods
/// run weight 0 and the canary's pods hold no connections, they stop.
fn abort(
    o: &Observed<'_>,
    plan: &mut Plan,
    canary: &CanaryStatus,
    stable_inputs: &PodInputs,
    allowance: &budget::Allowance,
    live: i64,
) {
    let slot = canary.pods.slot;
    let stable = other_slot(slot);
    let cview = view(o.slots, slot);
    let canary_inputs = cview.inputs.clone().unwrap_or_else(|| o.spec.clone());
    keep_stable(o, plan, stable, stable_inputs);
    if canary.phase != CanaryPhase::Aborting {
        plan.transition = Some((
            "CanaryAborting",
            format!(
                "canary in slot {slot:?} at {}%: its keys drain back to stable",
                canary.weight
            ),
        ));
    }
    let mut weight = canary.weight;
    let mut drained = canary.drained;
    if weight > 0 {
        match budget::next_weight(weight, 0, live, allowance) {
            Some(next) => {
                let cost = budget::weight_change_cost(live, weight, next);
                plan.disrupting += cost;
                drained = cost;
                weight = next;
                wait(
                    plan,
                    reasons::CANARY_IN_PROGRESS,
                    format!("aborting: canary weight down to {next}%"),
                );
            }
            None => budget_wait(
                plan,
                allowance,
                o.now,
                format!("aborting the canary at {weight}%"),
            ),
        }
    }
    let left = cview.connections();
    if canary.weight == 0 {
        plan.roles.retiring = Some(slot);
    }
    if canary.weight == 0 && left == 0 {
        if !retire_paced(o, plan, slot, allowance, "aborting") {
            plan.canary = Some(canary_status(
                slot,
                &canary_inputs,
                cview,
                CanaryPhase::Aborting,
                0,
                Some(0),
                drained,
            ));
            return;
        }
        plan.canary = None;
        plan.transition = Some((
            "CanaryAborted",
            format!(
                "canary of image {} removed; stable stays on image {}",
                canary_inputs.image, stable_inputs.image
            ),
        ));
        return;
    }
    if canary.weight == 0 {
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!("aborting: {left} connections left on the canary's pods"),
        );
    }
    plan.slots.push(SlotPlan {
        slot,
        inputs: canary_inputs.clone(),
        replicas: cview.replicas,
        partition: 0,
    });
    plan.roles.canary = Some(slot);
    plan.roles.weight = weight;
    plan.canary = Some(canary_status(
        slot,
        &canary_inputs,
        cview,
        CanaryPhase::Aborting,
        weight,
        Some(0),
        drained,
    ));
}

#[cfg(test)]
mod tests;
