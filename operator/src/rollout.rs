//! Where a gateway's versions should be next: the rollout state machine.
//!
//! [`plan`] is a pure function of what the cluster shows (the two slots'
//! StatefulSets and pods, the gateway's status and annotations) and returns
//! what each slot should run, the canary's phase and weight, and whether a
//! step waits for the disruption budget. The reconciler applies the plan;
//! nothing here talks to the API server or to a pod.
//!
//! [`plan`] and the steps every phase shares live here; `view` holds what
//! the plan sees of each slot ([`SlotView`], [`PodView`]) and what a drain
//! of its pods waits for ([`Drain`]: a pod that did not answer its status
//! poll is waited for, up to [`UNKNOWN_COUNT_BOUND`]), `stable` the
//! stable slot's scaling and rolling update, `canary` a canary's phases,
//! and [`analysis`] the comparison of a canary with stable (not wired yet).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ringway_crds::{
    AbortedCanary, CanaryPhase, CanaryStatus, DisruptionBudget, RolloutSettings, Slot,
    WebSocketGatewayStatus,
};

use crate::{
    PodInputs,
    annotations::{Intent, Mode},
    budget,
    names::{other_slot, slot_index},
};

pub mod analysis;
mod canary;
mod stable;
mod steps;
mod view;

pub use view::{
    Count, Drain, PodCounts, PodView, SlotView, UNKNOWN_COUNT_BOUND, unreachable_report,
    waiting_to_hear,
};

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
    /// `spec.rollout`: automatic steps and the analysis's thresholds.
    pub rollout: &'a RolloutSettings,
    /// The canary analysis's window, when a canary holds keys.
    pub analysis: Option<&'a analysis::Window>,
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
    /// The slot whose keys are moving away (stable's while a canary with
    /// all its pods ready takes keys, the canary's while it is aborted):
    /// its pods answer not ready too, so that a client whose key moved
    /// reconnects through a pod that stays, but keep their places in the
    /// ring until their keys have moved (see [`PodView::in_ring`]).
    pub held_out: Option<Slot>,
}

impl Roles {
    /// The slots whose pods take no new clients.
    pub fn out_of_service(&self) -> impl Iterator<Item = Slot> + '_ {
        self.retiring.into_iter().chain(self.held_out)
    }
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
    /// Pods whose status polls have failed for longer than
    /// [`UNKNOWN_COUNT_BOUND`] that this step goes on without (their stop
    /// closes what they hold): for a Warning event, and named in the
    /// progress message.
    pub unreachable: Vec<String>,
    /// The canary the analysis aborted, while the spec still asks for its
    /// revision: `status.aborted`.
    pub aborted: Option<AbortedCanary>,
}

/// The Warning event's reason for [`Plan::unreachable`] pods.
pub const CONNECTIONS_UNKNOWN: &str = "ConnectionsUnknown";

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
            held_out: None,
        },
        stable: (stable_slot, stable_inputs.clone()),
        canary: None,
        progress: None,
        problems: o.intent.problems.iter().map(ToString::to_string).collect(),
        disrupting: 0,
        requeue: None,
        transition: None,
        unreachable: Vec::new(),
        aborted: None,
    };
    let spec_changed = o.spec.revision() != stable_inputs.revision();
    plan.aborted = o
        .status
        .aborted
        .clone()
        .filter(|a| spec_changed && a.revision == o.spec.revision());
    // A new version runs beside the old one, in the other slot, whenever
    // something baked into the pods changes: as a canary, or, without the
    // annotation or steps, walked straight to 100% within the budget, so
    // that no connection is disrupted twice. A change of limits alone
    // restarts no pod, and reaches the pods in the next snapshot.
    let baked_change = o.spec.template_revision() != stable_inputs.template_revision();
    let canary_mode = o.intent.mode == Mode::Canary
        || (o.intent.mode == Mode::Rolling && (!o.rollout.steps.is_empty() || baked_change));
    match &o.status.canary {
        None => {
            if o.intent.abort && !spec_changed {
                plan.problems.push(format!(
                    "{}: \"true\" but no canary runs; remove the annotation",
                    ringway_crds::annotations::CANARY_ABORT
                ));
            }
            let start_canary =
                spec_changed && canary_mode && !o.intent.abort && plan.aborted.is_none();
            if start_canary {
                canary::start(o, &mut plan, stable_slot, &stable_inputs);
            } else {
                // Steady, scaling, or rolling in place.
                let inputs = if spec_changed && !canary_mode && o.intent.mode == Mode::Rolling {
                    o.spec.clone()
                } else {
                    stable_inputs.clone()
                };
                if spec_changed && (canary_mode || o.intent.mode == Mode::Unknown) {
                    plan.progress = Some(Progress {
                        reason: reasons::STABLE,
                        message: held_message(o.intent, plan.aborted.as_ref()),
                    });
                }
                plan.stable.1 = inputs.clone();
                stable::stable_slot_plan(o, &mut plan, stable_view, inputs, &allowance, live);
            }
            retire(o, &mut plan, other_slot(stable_slot), false);
        }
        Some(canary) => {
            let aborting = o.intent.abort || !spec_changed || canary.phase == CanaryPhase::Aborting;
            if canary.phase == CanaryPhase::Promoting {
                canary::promote(o, &mut plan, canary, &allowance);
            } else if aborting {
                canary::abort(o, &mut plan, canary, &stable_inputs, &allowance, live);
            } else {
                canary::shift(o, &mut plan, canary, &stable_inputs, &allowance, live);
            }
        }
    }
    report_unreachable(&mut plan);
    plan
}

/// Names the pods a step went on without in its progress message.
fn report_unreachable(plan: &mut Plan) {
    plan.unreachable.sort();
    plan.unreachable.dedup();
    if plan.unreachable.is_empty() {
        return;
    }
    let report = unreachable_report(&plan.unreachable);
    match &mut plan.progress {
        Some(p) => p.message = format!("{}; {report}", p.message),
        None => wait(plan, reasons::CANARY_IN_PROGRESS, report),
    }
}

fn view(slots: &[SlotView; 2], slot: Slot) -> &SlotView {
    &slots[slot_index(slot)]
}

fn held_message(intent: &Intent, aborted: Option<&AbortedCanary>) -> String {
    if let Some(a) = aborted {
        format!(
            "the spec change is held: its canary (image {}) was aborted, {}; change the spec again, or revert it",
            a.image, a.reason
        )
    } else if intent.abort {
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

/// Whether the budget allows stopping `pod` now, which closes every
/// connection it holds (owned and relayed). If so the cost is charged and
/// progress says `what` with `reason`; if not, progress says when the
/// budget refills. A pod whose count is unknown is waited for (progress
/// names it) until [`UNKNOWN_COUNT_BOUND`]; past it, it stops uncharged
/// and is reported in [`Plan::unreachable`].
fn charge_stop(
    o: &Observed<'_>,
    plan: &mut Plan,
    allowance: &budget::Allowance,
    pod: Option<&PodView>,
    reason: &'static str,
    what: String,
) -> bool {
    let cost = match pod.map(|p| (p, p.count(o.now))) {
        None => 0,
        Some((_, Count::Known(counts))) => counts.held(),
        Some((p, Count::Unknown)) => {
            let hear = waiting_to_hear(std::slice::from_ref(&p.name));
            wait(plan, reason, format!("{what}; {hear}"));
            return false;
        }
        Some((p, Count::Unreachable)) => {
            plan.unreachable.push(p.name.clone());
            0
        }
    };
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
        let relays = match next.map(|p| p.count(o.now)) {
            Some(Count::Known(counts)) => {
                format!(" (the next relays {} connections)", counts.held())
            }
            Some(Count::Unknown | Count::Unreachable) => String::new(),
            None => " (the next relays 0 connections)".to_owned(),
        };
        let message =
            format!("{what}: stopping the old pods one at a time, {replicas} left{relays}");
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

#[cfg(test)]
mod tests;
