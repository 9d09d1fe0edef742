//! Table tests of [`decide`]: each condition's paths, the status fields
//! that depend on the push, the events and the requeue.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use ringway_crds::{CanaryPhase, CanaryStatus, Slot, WebSocketGateway};

use super::*;
use crate::{
    PodInputs,
    names::slot_label,
    rollout::{PodView, Progress, Roles},
};

const IMAGE: &str = "ringway/dataplane:1";

/// Everything an [`Outcome`] borrows, with a steady gateway as default:
/// 3 shards, slot A stable with 3 ready pods, every pod acknowledged.
struct Case {
    gateway: WebSocketGateway,
    old: WebSocketGatewayStatus,
    slots: [SlotView; 2],
    backend_problems: Vec<String>,
    plan: rollout::Plan,
    pushed: Pushed,
    certificates: Option<&'static str>,
    announced: Option<(&'static str, String)>,
    reported_unreachable: std::collections::BTreeSet<String>,
}

impl Case {
    fn steady() -> Self {
        let gateway: WebSocketGateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "ringway.dev/v1alpha1", "kind": "WebSocketGateway",
            "metadata": {"name": "chat", "namespace": "prod", "uid": "u1", "generation": 4},
            "spec": {"shards": 3, "routes": [{"name": "r", "pathPrefix": "/",
                "key": {"source": "Header", "name": "x"}, "backend": {"service": "s", "port": 80}}]}
        }))
        .expect("gateway");
        let inputs = PodInputs::from_spec(&gateway.spec, IMAGE);
        Self {
            old: WebSocketGatewayStatus::default(),
            slots: [slot(Slot::A, 3, 3), slot(Slot::B, 0, 0)],
            backend_problems: Vec::new(),
            plan: rollout::Plan {
                slots: Vec::new(),
                roles: Roles {
                    stable: Slot::A,
                    canary: None,
                    weight: 0,
                    retiring: None,
                    held_out: None,
                },
                stable: (Slot::A, inputs),
                canary: None,
                progress: None,
                problems: Vec::new(),
                disrupting: 0,
                requeue: None,
                transition: None,
                unreachable: Vec::new(),
                aborted: None,
            },
            pushed: Pushed {
                pods: 3,
                acked: true,
                epoch: 7,
                ..Pushed::default()
            },
            certificates: None,
            announced: None,
            reported_unreachable: std::collections::BTreeSet::new(),
            gateway,
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    fn decide(&self) -> Verdict {
        let gwref = GatewayRef::new(&self.gateway).expect("gateway ref");
        decide(&Outcome {
            gateway: &gwref,
            generation: self.gateway.metadata.generation,
            spec: &self.gateway.spec,
            old: &self.old,
            slots: &self.slots,
            backend_problems: &self.backend_problems,
            plan: &self.plan,
            pushed: &self.pushed,
            certificates: self.certificates,
            announced: self.announced.as_ref(),
            reported_unreachable: &self.reported_unreachable,
            now: Timestamp::from_second(1_000_000).expect("now"),
        })
    }
}

/// A slot with `pods` running pods of which the first `ready` are ready,
/// each reporting 10 connections.
fn slot(slot: Slot, pods: i32, ready: i32) -> SlotView {
    SlotView {
        pods: (0..pods)
            .map(|i| PodView {
                name: format!("chat-{}-{i}", slot_label(slot)),
                ordinal: i,
                ip: Some(format!("10.0.0.{i}")),
                running: true,
                ready: i < ready,
                updated: true,
                connections: Some(10),
                relayed: Some(0),
                uid: format!("uid-{i}"),
                restarts: 0,
                owned: None,
                serving: false,
                unanswered_since: None,
            })
            .collect(),
        replicas: pods,
        ..SlotView::empty(slot)
    }
}

/// `view` as a version's slot: rendered from the first image's inputs.
fn retiring(view: SlotView) -> SlotView {
    SlotView {
        inputs: Some(Case::steady().plan.stable.1),
        ..view
    }
}

fn canary(phase: CanaryPhase, weight: u8) -> CanaryStatus {
    CanaryStatus {
        phase,
        pods: SlotStatus {
            slot: Slot::B,
            image: "ringway/dataplane:2".into(),
            revision: "r2".into(),
            shards_ready: 3,
            connections: 0,
        },
        weight,
        target_weight: None,
        drained: 0,
        analysis: None,
    }
}

fn with_canary(c: &mut Case) {
    c.slots[1] = slot(Slot::B, 3, 3);
    c.plan.roles.canary = Some(Slot::B);
}

fn progress(reason: &'static str, message: &'static str) -> impl FnOnce(&mut Case) {
    move |c| {
        c.plan.progress = Some(Progress {
            reason,
            message: message.into(),
        })
    }
}

fn condition<'a>(v: &'a Verdict, type_: &str) -> &'a Condition {
    conditions::find(&v.status.conditions, type_).expect("every condition is decided")
}

#[test]
fn each_condition_path_is_decided() {
    let failed = |c: &mut Case| {
        c.pushed.acked = false;
        c.pushed.failed = vec!["chat-a-2: connection refused".into()];
    };
    let cases: Vec<(&str, Case, &str, &str, &str, &str)> = vec![
        (
            "steady",
            Case::steady(),
            types::READY,
            "True",
            reasons::SHARDS_READY,
            "3 of 3 pods ready on the latest snapshot",
        ),
        (
            "pods not ready",
            Case::steady().with(|c| c.slots[0] = slot(Slot::A, 3, 1)),
            types::READY,
            "False",
            reasons::SHARDS_NOT_READY,
            "1 of 3 pods ready; see `kubectl get pods -l ringway.dev/gateway=chat`",
        ),
        (
            "no pods yet",
            Case::steady().with(|c| {
                c.slots[0] = slot(Slot::A, 0, 0);
                c.pushed.pods = 0;
            }),
            types::READY,
            "False",
            reasons::SHARDS_NOT_READY,
            "0 of 3 pods ready; see `kubectl get pods -l ringway.dev/gateway=chat`",
        ),
        (
            "ready but not acknowledged",
            Case::steady().with(failed),
            types::READY,
            "False",
            reasons::SHARDS_NOT_READY,
            "2 of 3 pods acknowledged the latest snapshot",
        ),
        (
            "canary beside stable",
            Case::steady().with(with_canary),
            types::READY,
            "True",
            reasons::SHARDS_READY,
            "6 of 6 pods ready (stable 3 of 3, canary 3 of 3) on the latest snapshot",
        ),
        (
            "retiring pods still ready",
            Case::steady().with(|c| {
                c.slots[1] = slot(Slot::B, 2, 2);
                c.plan.roles.retiring = Some(Slot::B);
            }),
            types::READY,
            "True",
            reasons::SHARDS_READY,
            "5 of 3 pods ready (stable 3 of 3, 2 of the retiring version) on the latest snapshot",
        ),
        (
            "nothing planned",
            Case::steady(),
            types::PROGRESSING,
            "False",
            reasons::STABLE,
            "nothing is changing",
        ),
        (
            "a rolling update",
            Case::steady().with(progress(reasons::ROLLING_UPDATE, "2 of 3 pods updated")),
            types::PROGRESSING,
            "True",
            reasons::ROLLING_UPDATE,
            "2 of 3 pods updated",
        ),
        (
            "a plan that says stable",
            Case::steady().with(progress(reasons::STABLE, "held")),
            types::PROGRESSING,
            "False",
            reasons::STABLE,
            "held",
        ),
        (
            "healthy",
            Case::steady(),
            types::DEGRADED,
            "False",
            reasons::HEALTHY,
            "nothing needs attention",
        ),
        (
            "a bad annotation wins over a missing backend",
            Case::steady().with(|c| {
                c.backend_problems = vec!["route r: backend Service s: not found".into()];
                c.plan.problems = vec!["ringway.dev/canary-weight: \"abc\" is not a number".into()];
            }),
            types::DEGRADED,
            "True",
            reasons::INVALID_ANNOTATION,
            "ringway.dev/canary-weight: \"abc\" is not a number; the gateway keeps running as it was",
        ),
        (
            "a canary the analysis aborted",
            Case::steady().with(|c| {
                c.plan.aborted = Some(ringway_crds::AbortedCanary {
                    revision: "r2".into(),
                    image: "img:2".into(),
                    reason: "closes with 1009 (message too big): canary 0.5, stable 0".into(),
                    at: Time(Timestamp::from_second(1).expect("time")),
                });
                c.backend_problems = vec!["route r: no endpoints".into()];
            }),
            types::DEGRADED,
            "True",
            reasons::CANARY_ANALYSIS_FAILED,
            "the canary of image img:2 (revision r2) was worse than stable and is aborted: closes with 1009 (message too big): canary 0.5, stable 0; its spec change is held until the spec changes again",
        ),
        (
            "missing backends, and a rollout problem",
            Case::steady().with(|c| {
                c.plan.problems = vec!["a rollout problem".into()];
                c.backend_problems = vec!["route r: backend Service s: not found".into()];
            }),
            types::DEGRADED,
            "True",
            reasons::BACKEND_UNAVAILABLE,
            "a rollout problem; route r: backend Service s: not found",
        ),
        (
            "a backend problem wins over an unacknowledged push",
            Case::steady().with(|c| {
                failed(c);
                c.backend_problems = vec!["route r: no endpoints".into()];
            }),
            types::DEGRADED,
            "True",
            reasons::BACKEND_UNAVAILABLE,
            "route r: no endpoints",
        ),
        (
            "an unacknowledged push",
            Case::steady().with(failed),
            types::DEGRADED,
            "True",
            reasons::SNAPSHOT_NOT_ACKNOWLEDGED,
            "pods did not acknowledge the snapshot: chat-a-2: connection refused",
        ),
        (
            "no version leaving",
            Case::steady().with(with_canary),
            types::DRAINED,
            "True",
            reasons::NO_VERSION_LEAVING,
            "no version is on its way out",
        ),
        (
            "a promotion's old version still holds connections",
            Case::steady().with(|c| {
                c.slots[1] = retiring(slot(Slot::B, 2, 0));
                c.plan.roles.retiring = Some(Slot::B);
            }),
            types::DRAINED,
            "False",
            reasons::VERSION_DRAINING,
            "the leaving version (slot B, image ringway/dataplane:1): 20 connections left on its pods",
        ),
        (
            "an aborted canary still holds connections",
            Case::steady().with(|c| {
                with_canary(c);
                c.slots[1] = retiring(slot(Slot::B, 3, 3));
                c.plan.canary = Some(canary(CanaryPhase::Aborting, 5));
            }),
            types::DRAINED,
            "False",
            reasons::VERSION_DRAINING,
            "the leaving version (slot B, image ringway/dataplane:1): 30 connections left on its pods",
        ),
        (
            "a leaving pod whose count is unknown",
            Case::steady().with(|c| {
                let mut b = retiring(slot(Slot::B, 1, 0));
                b.pods[0].connections = None;
                b.pods[0].unanswered_since = Some(Timestamp::from_second(999_990).expect("t"));
                c.slots[1] = b;
                c.plan.roles.retiring = Some(Slot::B);
            }),
            types::DRAINED,
            "False",
            reasons::VERSION_DRAINING,
            "the leaving version (slot B, image ringway/dataplane:1): waiting to hear how many connections pod chat-b-0 holds (its status polls failed)",
        ),
        (
            "a leaving pod given up on is waited for until it is gone",
            Case::steady().with(|c| {
                let mut b = retiring(slot(Slot::B, 1, 0));
                b.pods[0].connections = None;
                b.pods[0].unanswered_since = Some(Timestamp::from_second(0).expect("t"));
                c.slots[1] = b;
                c.plan.roles.retiring = Some(Slot::B);
            }),
            types::DRAINED,
            "False",
            reasons::VERSION_DRAINING,
            "the leaving version (slot B, image ringway/dataplane:1): pod chat-b-0 has not answered status polls for 120s: its connections are unknown and will be closed by its stop (over its grace period, with 1001)",
        ),
        (
            "the old version's pods hold no connections",
            Case::steady().with(|c| {
                let mut b = retiring(slot(Slot::B, 2, 0));
                b.pods[0].connections = Some(0);
                // Stopped: not polled, so nothing reported.
                b.pods[1].running = false;
                b.pods[1].connections = None;
                c.slots[1] = b;
                c.plan.roles.retiring = Some(Slot::B);
            }),
            types::DRAINED,
            "True",
            reasons::VERSION_DRAINED,
            "the leaving version (slot B, image ringway/dataplane:1) holds no connections",
        ),
    ];
    for (name, case, type_, status, reason, message) in cases {
        let verdict = case.decide();
        let c = condition(&verdict, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (status, reason, message),
            "{name}: {type_}"
        );
        assert_eq!(c.observed_generation, Some(4), "{name}");
    }
}

#[test]
fn backend_problems_are_cut_to_1000_characters() {
    let verdict = Case::steady()
        .with(|c| c.backend_problems = vec!["x".repeat(600), "y".repeat(600)])
        .decide();
    assert_eq!(
        condition(&verdict, types::DEGRADED).message.chars().count(),
        1000
    );
}

#[test]
fn the_requeue_follows_the_push_then_the_plan() {
    let cases = [
        ("acknowledged, nothing planned", true, None, STEADY_REQUEUE),
        (
            "acknowledged, a step planned",
            true,
            Some(Duration::from_secs(5)),
            Duration::from_secs(5),
        ),
        (
            "unacknowledged",
            false,
            Some(Duration::from_secs(30)),
            UNACKED_REQUEUE,
        ),
    ];
    for (name, acked, planned, want) in cases {
        let verdict = Case::steady()
            .with(|c| {
                c.pushed.acked = acked;
                c.plan.requeue = planned;
            })
            .decide();
        assert_eq!(verdict.requeue, want, "{name}");
    }
}

#[test]
fn a_canary_weight_counts_only_once_every_pod_runs_it() {
    let cases = [("acknowledged", true, 20), ("not acknowledged", false, 10)];
    for (name, acked, weight) in cases {
        let verdict = Case::steady()
            .with(|c| {
                with_canary(c);
                c.old.canary = Some(canary(CanaryPhase::Holding, 10));
                c.plan.canary = Some(canary(CanaryPhase::Shifting, 20));
                c.pushed.acked = acked;
            })
            .decide();
        let canary = verdict.status.canary.expect("a canary");
        assert_eq!(
            (canary.phase, canary.weight),
            (CanaryPhase::Shifting, weight),
            "{name}"
        );
    }
}

#[test]
fn the_status_counts_pods_connections_epoch_and_stable_version() {
    let verdict = Case::steady()
        .with(|c| {
            with_canary(c);
            c.old.epoch = 9;
        })
        .decide();
    let s = &verdict.status;
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.shards_ready, 6);
    assert_eq!(s.connections, 60);
    assert_eq!(s.epoch, 9, "the epoch never goes back");
    let stable = s.stable.as_ref().expect("stable");
    assert_eq!(
        (
            stable.slot,
            stable.image.as_str(),
            stable.shards_ready,
            stable.connections
        ),
        (Slot::A, IMAGE, 3, 30)
    );
    let newer = Case::steady().with(|c| c.old.epoch = 3).decide();
    assert_eq!(newer.status.epoch, 7);
}

#[test]
fn disruption_is_recorded_for_a_new_epoch_or_a_disrupting_step() {
    // (case, new epoch, planned disruption, drained, recorded)
    let cases = [
        ("nothing new", false, 0, 40, None),
        ("a new epoch drains", true, 0, 40, Some(40)),
        ("a step that disrupts", false, 30, 0, Some(30)),
        ("a step that drains more", false, 30, 50, Some(50)),
    ];
    for (name, new_epoch, disrupting, drained, recorded) in cases {
        let verdict = Case::steady()
            .with(|c| {
                c.pushed.new_epoch = new_epoch;
                c.pushed.drained = drained;
                c.plan.disrupting = disrupting;
            })
            .decide();
        assert_eq!(
            verdict.status.disruption.map(|d| d.disrupted),
            recorded,
            "{name}"
        );
    }
}

/// The type and reason of each event, in order.
type Published = Vec<(EventType, &'static str)>;

#[test]
fn events_say_what_is_new() {
    let hold = ("CanaryPhaseChanged", "canary Holding at 10%".to_owned());
    let degraded_before = |c: &mut Case| {
        c.old.conditions = vec![Condition {
            type_: types::DEGRADED.into(),
            status: "True".into(),
            reason: reasons::BACKEND_UNAVAILABLE.into(),
            message: "route r: no endpoints".into(),
            observed_generation: Some(3),
            last_transition_time: Time(Timestamp::from_second(1).expect("t")),
        }];
    };
    let cases: Vec<(&str, Case, Published)> = vec![
        ("steady", Case::steady(), vec![]),
        (
            "certificates, a phase change and a new problem, in that order",
            Case::steady().with(|c| {
                c.certificates = Some("created the CA");
                c.plan.transition = Some(hold.clone());
                c.backend_problems = vec!["route r: no endpoints".into()];
            }),
            vec![
                (EventType::Normal, "Certificates"),
                (EventType::Normal, "CanaryPhaseChanged"),
                (EventType::Warning, reasons::BACKEND_UNAVAILABLE),
            ],
        ),
        (
            "a phase change already announced",
            Case::steady().with(|c| {
                c.plan.transition = Some(hold.clone());
                c.announced = Some(hold.clone());
            }),
            vec![],
        ),
        (
            "a problem already reported",
            Case::steady().with(|c| {
                degraded_before(c);
                c.backend_problems = vec!["route r: no endpoints".into()];
            }),
            vec![],
        ),
        (
            "the same problem, said differently",
            Case::steady().with(|c| {
                degraded_before(c);
                c.backend_problems = vec!["route r: Service s not found".into()];
            }),
            vec![(EventType::Warning, reasons::BACKEND_UNAVAILABLE)],
        ),
    ];
    for (name, case, want) in cases {
        let verdict = case.decide();
        let got: Vec<(EventType, &str)> = verdict
            .events
            .iter()
            .map(|n| (n.type_, n.reason.as_str()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_pod_gone_on_without_is_a_warning_once_and_only_the_new_one_is_named() {
    let first = Case::steady()
        .with(|c| c.plan.unreachable = vec!["chat-a-2".into()])
        .decide();
    let warnings: Vec<(&str, &str)> = first
        .events
        .iter()
        .filter(|n| n.type_ == EventType::Warning)
        .map(|n| (n.reason.as_str(), n.note.as_str()))
        .collect();
    assert_eq!(
        warnings,
        vec![(
            rollout::CONNECTIONS_UNKNOWN,
            "pod chat-a-2 has not answered status polls for 120s: its connections are unknown \
             and will be closed by its stop (over its grace period, with 1001)"
        )]
    );
    assert_eq!(first.reported_unreachable, ["chat-a-2".to_owned()].into());
    let again = Case::steady()
        .with(|c| {
            c.plan.unreachable = vec!["chat-a-1".into(), "chat-a-2".into()];
            c.reported_unreachable = first.reported_unreachable.clone();
        })
        .decide();
    let notes: Vec<&str> = again.events.iter().map(|n| n.note.as_str()).collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("pod chat-a-1 has not answered"),
        "{notes:?}"
    );
    let back = Case::steady()
        .with(|c| c.reported_unreachable = again.reported_unreachable.clone())
        .decide();
    assert!(back.events.is_empty() && back.reported_unreachable.is_empty());
}

#[test]
fn a_new_phase_change_is_announced_once() {
    let hold = ("CanaryPhaseChanged", "canary Holding at 10%".to_owned());
    let first = Case::steady()
        .with(|c| c.plan.transition = Some(hold.clone()))
        .decide();
    assert_eq!(first.announced, Some(hold.clone()));
    assert_eq!(
        first.events[0].note, "canary Holding at 10%",
        "the note is the transition's message"
    );
    let again = Case::steady()
        .with(|c| {
            c.plan.transition = Some(hold.clone());
            c.announced = Some(hold.clone());
        })
        .decide();
    assert_eq!(again.announced, None);
}

#[test]
fn the_certificates_event_says_what_changed() {
    let verdict = Case::steady()
        .with(|c| c.certificates = Some("renewed the CA"))
        .decide();
    assert_eq!(
        verdict.events,
        vec![Note {
            type_: EventType::Normal,
            reason: "Certificates".into(),
            note: "control channel: renewed the CA".into(),
        }]
    );
}
