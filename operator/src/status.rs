//! What a reconcile reports: the gateway's status, the events to publish
//! and when to look again, decided by [`decide`] from what was observed,
//! what was planned and how the snapshot push went. Pure: the effects
//! write what it returns.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;
use ringway_crds::{
    CanaryPhase, Slot, SlotStatus, WebSocketGatewaySpec, WebSocketGatewayStatus,
    condition_reasons as reasons, condition_types as types,
};

use crate::{
    budget,
    conditions::{self, Decided},
    names::{GatewayRef, slot_index},
    rollout::{self, SlotView},
};

/// Look again this often when nothing moves, to refresh the connection
/// counts in the status and to renew certificates in time.
pub const STEADY_REQUEUE: Duration = Duration::from_secs(60);
/// Retry a snapshot that some pods did not acknowledge after this long.
pub const UNACKED_REQUEUE: Duration = Duration::from_secs(5);

/// How the latest snapshot reached the pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The pods it is meant for.
    pub pods: usize,
    /// Whether every one of them acknowledged the current epoch.
    pub acked: bool,
    /// Those that did not in this reconcile, with why.
    pub failed: Vec<String>,
    /// Connections the acknowledging pods reported as draining.
    pub drained: i64,
    /// Whether this reconcile issued a new epoch.
    pub new_epoch: bool,
    /// The epoch the pods should run.
    pub epoch: u64,
}

/// Everything the status and events are decided from.
#[derive(Clone, Debug)]
pub struct Outcome<'a> {
    /// The gateway.
    pub gateway: &'a GatewayRef,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Its spec.
    pub spec: &'a WebSocketGatewaySpec,
    /// Its status as last written.
    pub old: &'a WebSocketGatewayStatus,
    /// Slots A and B as observed.
    pub slots: &'a [SlotView; 2],
    /// Routes without a usable backend.
    pub backend_problems: &'a [String],
    /// The rollout step.
    pub plan: &'a rollout::Plan,
    /// How the snapshot push went.
    pub pushed: &'a Pushed,
    /// What was created or renewed of the control channel's certificates.
    pub certificates: Option<&'a str>,
    /// The last phase change published as an event.
    pub announced: Option<&'a (&'static str, String)>,
    /// Pods already reported as gone on without (the plan's
    /// `unreachable` when last decided).
    pub reported_unreachable: &'a BTreeSet<String>,
    /// The time of this reconcile.
    pub now: Timestamp,
}

/// One Kubernetes event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// The machine-readable reason.
    pub reason: String,
    /// What happened, for a person.
    pub note: String,
}

/// What to write and publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The status to write (when it differs from the old one).
    pub status: WebSocketGatewayStatus,
    /// The events to publish, in order.
    pub events: Vec<Note>,
    /// A phase change published now, to remember so that it is not
    /// published again while its step is retried.
    pub announced: Option<(&'static str, String)>,
    /// The pods reported as gone on without, to remember so that each is
    /// reported once while the rollout goes on without it.
    pub reported_unreachable: BTreeSet<String>,
    /// When to reconcile again.
    pub requeue: Duration,
}

/// Decides the status, the events and the requeue.
pub fn decide(o: &Outcome<'_>) -> Verdict {
    let status = status(o);
    let mut events: Vec<Note> = o
        .certificates
        .map(|what| {
            note(
                EventType::Normal,
                "Certificates",
                format!("control channel: {what}"),
            )
        })
        .into_iter()
        .collect();
    // Events: phase changes and newly seen problems.
    let announced = o.plan.transition.clone().filter(|t| o.announced != Some(t));
    if let Some((reason, message)) = &announced {
        events.push(note(EventType::Normal, reason, message.clone()));
    }
    let reported_unreachable: BTreeSet<String> = o.plan.unreachable.iter().cloned().collect();
    let news: Vec<String> = reported_unreachable
        .difference(o.reported_unreachable)
        .cloned()
        .collect();
    if !news.is_empty() {
        events.push(note(
            EventType::Warning,
            rollout::CONNECTIONS_UNKNOWN,
            rollout::unreachable_report(&news),
        ));
    }
    let old_degraded = conditions::find(&o.old.conditions, types::DEGRADED).map(|c| &c.message);
    if let Some(c) = conditions::find(&status.conditions, types::DEGRADED)
        && c.status == "True"
        && old_degraded != Some(&c.message)
    {
        events.push(note(EventType::Warning, &c.reason, c.message.clone()));
    }
    let requeue = if o.pushed.acked {
        o.plan.requeue.unwrap_or(STEADY_REQUEUE)
    } else {
        UNACKED_REQUEUE
    };
    Verdict {
        status,
        events,
        announced,
        reported_unreachable,
        requeue,
    }
}

fn note(type_: EventType, reason: &str, note: String) -> Note {
    Note {
        type_,
        reason: reason.to_owned(),
        note,
    }
}

fn status(o: &Outcome<'_>) -> WebSocketGatewayStatus {
    let plan = o.plan;
    let mut canary = plan.canary.clone();
    if !o.pushed.acked
        && let (Some(new), Some(old)) = (canary.as_mut(), o.old.canary.as_ref())
    {
        // A weight counts only once every pod runs it.
        new.weight = old.weight;
    }
    let disrupted = if o.pushed.new_epoch || plan.disrupting > 0 {
        plan.disrupting.max(o.pushed.drained)
    } else {
        0
    };
    let stable_view = &o.slots[slot_index(plan.stable.0)];
    let old_epoch = u64::try_from(o.old.epoch).unwrap_or(0);
    WebSocketGatewayStatus {
        observed_generation: o.generation,
        conditions: conditions::merge(&o.old.conditions, conditions(o), o.generation, &Time(o.now)),
        shards_ready: o.slots.iter().map(SlotView::ready).sum(),
        connections: o.slots.iter().map(SlotView::connections).sum(),
        epoch: i64::try_from(o.pushed.epoch.max(old_epoch)).unwrap_or(i64::MAX),
        stable: Some(SlotStatus {
            slot: plan.stable.0,
            image: plan.stable.1.image.clone(),
            revision: plan.stable.1.revision(),
            shards_ready: stable_view.ready(),
            connections: stable_view.connections(),
        }),
        canary,
        aborted: plan.aborted.clone(),
        disruption: budget::record(
            &o.spec.disruption_budget,
            o.old.disruption.as_ref(),
            o.now,
            disrupted,
        ),
    }
}

/// `Ready`, `Progressing`, `Degraded` and `Drained`.
fn conditions(o: &Outcome<'_>) -> Vec<Decided> {
    vec![ready(o), progressing(o.plan), degraded(o), drained(o)]
}

fn ready(o: &Outcome<'_>) -> Decided {
    let roles = &o.plan.roles;
    let shards = o.spec.shards;
    let stable_ready = o.slots[slot_index(roles.stable)].ready() >= i32::from(shards);
    let counted = pods_ready(roles, shards, o.slots);
    let Pushed {
        pods,
        acked,
        failed,
        ..
    } = o.pushed;
    if stable_ready && *acked {
        return Decided {
            type_: types::READY,
            status: true,
            reason: reasons::SHARDS_READY,
            message: format!("{counted} on the latest snapshot"),
        };
    }
    Decided {
        type_: types::READY,
        status: false,
        reason: reasons::SHARDS_NOT_READY,
        message: if !stable_ready {
            format!(
                "{counted}; see `kubectl get pods -l {}`",
                o.gateway.selector_string()
            )
        } else {
            format!(
                "{} of {pods} pods acknowledged the latest snapshot",
                pods.saturating_sub(failed.len()),
            )
        },
    }
}

fn progressing(plan: &rollout::Plan) -> Decided {
    match &plan.progress {
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
    }
}

/// `Drained`: whether the version on its way out still holds connections,
/// or pods whose count is not known. True only once every one of its pods
/// said it holds none, or is gone: a pod that does not answer is waited
/// for until it stops (the rollout stops it past the bound).
fn drained(o: &Outcome<'_>) -> Decided {
    let Some(slot) = leaving(o.plan) else {
        return Decided {
            type_: types::DRAINED,
            status: true,
            reason: reasons::NO_VERSION_LEAVING,
            message: "no version is on its way out".into(),
        };
    };
    let view = &o.slots[slot_index(slot)];
    let version = match &view.inputs {
        Some(inputs) => format!(
            "the leaving version (slot {slot:?}, image {})",
            inputs.image
        ),
        None => format!("the leaving version (slot {slot:?})"),
    };
    let drain = view.drain(o.now);
    let (status, reason, message) = if !drain.done() {
        let waiting = drain.waiting_for("its pods");
        (
            false,
            reasons::VERSION_DRAINING,
            format!("{version}: {waiting}"),
        )
    } else if !drain.unreachable.is_empty() {
        let report = rollout::unreachable_report(&drain.unreachable);
        (
            false,
            reasons::VERSION_DRAINING,
            format!("{version}: {report}"),
        )
    } else {
        (
            true,
            reasons::VERSION_DRAINED,
            format!("{version} holds no connections"),
        )
    };
    Decided {
        type_: types::DRAINED,
        status,
        reason,
        message,
    }
}

/// The version on its way out: the old one while a canary is promoted (the
/// retiring slot), the canary while it is aborted.
fn leaving(plan: &rollout::Plan) -> Option<Slot> {
    plan.roles.retiring.or_else(|| {
        plan.canary
            .as_ref()
            .filter(|c| c.phase == CanaryPhase::Aborting)
            .map(|c| c.pods.slot)
    })
}

fn degraded(o: &Outcome<'_>) -> Decided {
    let problems: Vec<&String> = o.plan.problems.iter().chain(o.backend_problems).collect();
    let failed = &o.pushed.failed;
    let (status, reason, message) = if let Some(p) =
        problems.iter().find(|p| p.starts_with("ringway.dev/"))
    {
        (
            true,
            reasons::INVALID_ANNOTATION,
            format!("{p}; the gateway keeps running as it was"),
        )
    } else if let Some(a) = &o.plan.aborted {
        (
            true,
            reasons::CANARY_ANALYSIS_FAILED,
            format!(
                "the canary of image {} (revision {}) was worse than stable and is aborted: {}; its spec change is held until the spec changes again",
                a.image, a.revision, a.reason
            ),
        )
    } else if !problems.is_empty() {
        let all: Vec<&str> = problems.iter().map(|p| p.as_str()).collect();
        (
            true,
            reasons::BACKEND_UNAVAILABLE,
            all.join("; ").chars().take(1000).collect(),
        )
    } else if !failed.is_empty() {
        (
            true,
            reasons::SNAPSHOT_NOT_ACKNOWLEDGED,
            format!(
                "pods did not acknowledge the snapshot: {}",
                failed.join("; ")
            ),
        )
    } else {
        (false, reasons::HEALTHY, "nothing needs attention".into())
    };
    Decided {
        type_: types::DEGRADED,
        status,
        reason,
        message,
    }
}

/// The pods ready, in the unit of the `Ready` column (data-plane pods of
/// every version): "3 of 3 pods ready", and per version when a canary or
/// a retiring version runs beside stable: "4 of 4 pods ready (stable 2 of
/// 2, canary 2 of 2)".
fn pods_ready(roles: &rollout::Roles, shards: u16, slots: &[SlotView; 2]) -> String {
    let want = i32::from(shards);
    let stable = slots[slot_index(roles.stable)].ready();
    let mut parts = vec![format!("stable {stable} of {want}")];
    let (mut ready, mut wanted) = (stable, want);
    if let Some(canary) = roles.canary {
        let r = slots[slot_index(canary)].ready();
        parts.push(format!("canary {r} of {want}"));
        ready += r;
        wanted += want;
    }
    if let Some(old) = roles.retiring.filter(|s| Some(*s) != roles.canary) {
        // Retiring pods answer not ready; any that still do are counted
        // in the column, so they are named here too.
        let r = slots[slot_index(old)].ready();
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

#[cfg(test)]
mod tests;
