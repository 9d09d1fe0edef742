//! The stable slot outside a canary: scaling one shard per budget step and
//! rolling a changed template one pod per budget step.

use super::{
    Observed, PROGRESS_REQUEUE, Plan, Progress, SlotPlan, SlotView, budget_wait, charge_stop,
    reasons, wait,
};
use crate::{PodInputs, budget};

/// The stable slot outside a canary: scale one shard per budget step and
/// roll a changed template one pod per budget step.
pub(super) fn stable_slot_plan(
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
    let desired = (inputs.template_revision(), o.control_cert.to_owned());
    if current.template.as_ref() != Some(&desired) {
        plan.progress = Some(Progress {
            reason: reasons::ROLLING_UPDATE,
            message: format!("rolling update to revision {} started", inputs.revision()),
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
        inputs.revision()
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
