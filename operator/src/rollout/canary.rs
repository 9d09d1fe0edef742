//! A canary's phases: starting beside the stable slot, shifting the weight
//! within the budget, promoting to stable, and aborting back.

use ringway_crds::{AbortedCanary, CanaryPhase, CanaryStatus, Slot};

use super::{
    Observed, Plan, Progress, Roles, SlotPlan, SlotView, analysis::Harm, budget_wait, reasons,
    retire, retire_paced, steps, view, wait,
};
use crate::{PodInputs, budget, names::other_slot};

/// The event's reason when the analysis aborts a canary.
pub const CANARY_ANALYSIS_FAILED: &str = ringway_crds::condition_reasons::CANARY_ANALYSIS_FAILED;

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
        analysis: None,
    }
}

/// Whether `view`'s pods can leave the client Service and keep their keys:
/// each said lately that it serves its shard. A data plane from before
/// per-version hold-outs never says so (and refuses hand-offs while
/// retiring): its slot stays in the Service, and its clients may be closed
/// twice, as before.
fn can_hold_out(view: &SlotView) -> bool {
    view.pods
        .iter()
        .filter(|p| p.steerable())
        .all(|p| p.serving)
}

/// Pods of `view` that the client Service still sends new clients to (their
/// `Ready` condition): a slot left the Service once this is 0.
fn taking_clients(view: &SlotView) -> usize {
    view.pods
        .iter()
        .filter(|p| p.steerable() && p.ready)
        .count()
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

pub(super) fn start(o: &Observed<'_>, plan: &mut Plan, stable: Slot, stable_inputs: &PodInputs) {
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
pub(super) fn shift(
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
    let judged = steps::judge(o, canary);
    if let Some(harm) = &judged.harm {
        return abort_harmful(
            o,
            plan,
            canary,
            judged.analysis,
            harm,
            stable_inputs,
            allowance,
            live,
        );
    }
    canary_alongside_stable(o, plan, stable, stable_inputs, slot);
    let target = judged.target;
    let mut weight = canary.weight;
    let mut drained = canary.drained;
    let canary_ready = cview.ready() >= o.shards;
    let holding_out = canary_ready && can_hold_out(view(o.slots, stable));
    if holding_out {
        plan.roles.held_out = Some(stable);
    }
    let still_open = if holding_out {
        taking_clients(view(o.slots, stable))
    } else {
        0
    };
    let phase = if canary.phase == CanaryPhase::Starting && !canary_ready {
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
    } else if target > weight && (!canary_ready || still_open > 0) {
        let why = if canary_ready {
            format!("{still_open} stable pods still take new clients")
        } else {
            format!("{} of {} canary pods ready", cview.ready(), o.shards)
        };
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!(
                "canary at {weight}%, next {target}%: before keys move to the canary, the stable pods leave the client Service, so that a moved client reconnects through a pod that stays ({why})"
            ),
        );
        if canary.phase == CanaryPhase::Starting {
            CanaryPhase::Starting
        } else {
            CanaryPhase::Holding
        }
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
        let message = match &judged.holding {
            Some(why) => {
                plan.requeue = Some(super::PROGRESS_REQUEUE);
                format!("canary holds {weight}% of the keys, the step's analysis {why}")
            }
            None => format!(
                "canary holds {weight}% of the keys; set {} to move it, \"100\" promotes, {}: \"true\" aborts",
                ringway_crds::annotations::CANARY_WEIGHT,
                ringway_crds::annotations::CANARY_ABORT
            ),
        };
        plan.progress = Some(Progress {
            reason: reasons::CANARY_IN_PROGRESS,
            message,
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
    plan.canary = Some(CanaryStatus {
        analysis: judged.analysis,
        ..canary_status(
            slot,
            o.spec,
            cview,
            phase,
            weight,
            (target != weight).then_some(target),
            drained,
        )
    });
}

/// The analysis found the canary worse than stable: it aborts, and
/// `status.aborted` holds the spec change until the spec changes again.
#[allow(clippy::too_many_arguments)]
fn abort_harmful(
    o: &Observed<'_>,
    plan: &mut Plan,
    canary: &CanaryStatus,
    analysis: Option<ringway_crds::AnalysisStatus>,
    harm: &Harm,
    stable_inputs: &PodInputs,
    allowance: &budget::Allowance,
    live: i64,
) {
    let reason = harm.to_string();
    plan.aborted = Some(AbortedCanary {
        revision: o.spec.revision(),
        image: o.spec.image.clone(),
        reason: reason.clone(),
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(o.now),
    });
    let judged = CanaryStatus {
        analysis,
        ..canary.clone()
    };
    abort(o, plan, &judged, stable_inputs, allowance, live);
    plan.transition = Some((
        CANARY_ANALYSIS_FAILED,
        format!(
            "canary at {}% is worse than stable: {reason}; its keys drain back to stable and its pods stop",
            canary.weight
        ),
    ));
}

/// Weight 100 acknowledged: the canary's slot becomes stable; the old
/// slot keeps running until its connections have drained and every one of
/// its pods has said so (or stayed silent past the bound).
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

pub(super) fn promote(
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
        held_out: None,
    };
    plan.stable = (new, o.spec.clone());
    plan.slots.push(SlotPlan {
        slot: new,
        inputs: o.spec.clone(),
        replicas: o.shards,
        partition: 0,
    });
    let drain = old_view.drain(o.now);
    plan.unreachable.extend(drain.unreachable.iter().cloned());
    let gone = if !drain.done() {
        retire(o, plan, old, true);
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!(
                "promoting slot {new:?}: {}",
                drain.waiting_for("the old version's pods")
            ),
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
/// run weight 0 and the canary's pods hold no connections (and every one
/// of them answered how many, or stayed silent past the bound), they stop.
pub(super) fn abort(
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
    let holding_out = can_hold_out(cview);
    if holding_out {
        plan.roles.held_out = Some(slot);
    }
    let (canary_open, stable_open) = (taking_clients(cview), taking_clients(view(o.slots, stable)));
    let stable_pods = view(o.slots, stable)
        .pods
        .iter()
        .filter(|p| p.steerable())
        .count();
    // One stable pod back in the Service is a way in; waiting for all of
    // them would hold the abort for good on one that cannot get ready.
    if weight > 0 && holding_out && (canary_open > 0 || stable_open == 0) {
        wait(
            plan,
            reasons::CANARY_IN_PROGRESS,
            format!(
                "aborting the canary at {weight}%: before its keys move back, its pods leave the client Service and stable's return, so that a moved client reconnects through a pod that stays ({canary_open} canary pods still take new clients, {stable_open} of {stable_pods} stable pods do)"
            ),
        );
    } else if weight > 0 {
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
    let drain = cview.drain(o.now);
    if canary.weight == 0 {
        plan.roles.retiring = Some(slot);
        plan.unreachable.extend(drain.unreachable.iter().cloned());
    }
    if canary.weight == 0 && drain.done() {
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
            format!("aborting: {}", drain.waiting_for("the canary's pods")),
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
    plan.canary = Some(CanaryStatus {
        analysis: canary.analysis.clone(),
        ..canary_status(
            slot,
            &canary_inputs,
            cview,
            CanaryPhase::Aborting,
            weight,
            Some(0),
            drained,
        )
    });
}
