use ringway_crds::{
    SlotStatus, WebSocketGatewaySpec,
    annotations::{CANARY_ABORT, CANARY_WEIGHT, ROLLOUT},
};

use super::*;
use crate::annotations;

fn spec(image: &str) -> PodInputs {
    let spec: WebSocketGatewaySpec = serde_yaml::from_str(
        "routes: [{name: r, pathPrefix: /, key: {source: Header, name: x}, backend: {service: s, port: 80}}]",
    )
    .expect("spec");
    PodInputs::from_spec(&spec, image)
}

fn pods(slot: Slot, n: i32, connections: i64) -> Vec<PodView> {
    (0..n)
        .map(|i| PodView {
            name: format!("gw-{}-{i}", crate::names::slot_label(slot)),
            ordinal: i,
            ip: Some(format!("10.0.0.{i}")),
            running: true,
            ready: true,
            updated: true,
            connections: Some(connections),
            relayed: Some(0),
            uid: format!("uid-{i}"),
            restarts: 0,
            owned: None,
            serving: true,
            unanswered_since: None,
        })
        .collect()
}

fn slot(slot: Slot, inputs: &PodInputs, n: i32, connections: i64) -> SlotView {
    SlotView {
        slot,
        inputs: Some(inputs.clone()),
        replicas: n,
        partition: 0,
        template: Some((inputs.template_revision(), "cert".into())),
        pods: pods(slot, n, connections),
    }
}

fn status(
    stable: Slot,
    inputs: &PodInputs,
    canary: Option<CanaryStatus>,
) -> WebSocketGatewayStatus {
    WebSocketGatewayStatus {
        stable: Some(SlotStatus {
            slot: stable,
            image: inputs.image.clone(),
            revision: inputs.revision(),
            shards_ready: 3,
            connections: 0,
        }),
        canary,
        ..WebSocketGatewayStatus::default()
    }
}

/// The status during a canary: slot A stable on `stable`, slot B the
/// canary on `canary` at `weight`.
fn during(
    phase: CanaryPhase,
    weight: u8,
    stable: &PodInputs,
    canary_inputs: &PodInputs,
) -> WebSocketGatewayStatus {
    status(
        Slot::A,
        stable,
        Some(canary(phase, Slot::B, canary_inputs, weight)),
    )
}

fn phase_of(p: &Plan) -> Option<CanaryPhase> {
    p.canary.as_ref().map(|c| c.phase)
}

fn canary(phase: CanaryPhase, slot: Slot, inputs: &PodInputs, weight: u8) -> CanaryStatus {
    CanaryStatus {
        phase,
        pods: SlotStatus {
            slot,
            image: inputs.image.clone(),
            revision: inputs.revision(),
            shards_ready: 3,
            connections: 0,
        },
        weight,
        target_weight: None,
        drained: 0,
        analysis: None,
    }
}

fn intent(pairs: &[(&str, &str)]) -> Intent {
    annotations::read(
        &pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn run(
    spec: &PodInputs,
    intent: &Intent,
    status: &WebSocketGatewayStatus,
    slots: &[SlotView; 2],
) -> Plan {
    run_with(
        spec,
        intent,
        status,
        slots,
        &RolloutSettings::default(),
        None,
    )
}

/// [`run`] with `spec.rollout` and the analysis's window.
fn run_with(
    spec: &PodInputs,
    intent: &Intent,
    status: &WebSocketGatewayStatus,
    slots: &[SlotView; 2],
    rollout: &RolloutSettings,
    analysis: Option<&analysis::Window>,
) -> Plan {
    let budget = DisruptionBudget {
        max_reconnects_per_second: 1000,
        max_disrupted_percent: 100,
        window_seconds: 60,
    };
    plan(&Observed {
        spec,
        shards: 3,
        budget: &budget,
        intent,
        status,
        slots,
        control_cert: "cert",
        rollout,
        analysis,
        now: now(),
    })
}

/// The time every [`run`] plans at.
fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("time")
}

/// The pods of `view` with these ordinals did not answer their status
/// polls for the last `secs` seconds.
fn silent(mut view: SlotView, ordinals: &[i32], secs: i64) -> SlotView {
    for pod in &mut view.pods {
        if ordinals.contains(&pod.ordinal) {
            pod.connections = None;
            pod.relayed = None;
            pod.unanswered_since = Some(now() - k8s_openapi::jiff::SignedDuration::from_secs(secs));
        }
    }
    view
}

/// `view`'s pods after they left the client Service on purpose: not
/// ready, still serving their shard.
fn out_of_service(mut view: SlotView) -> SlotView {
    for pod in &mut view.pods {
        pod.ready = false;
        pod.serving = true;
    }
    view
}

fn message(p: &Plan) -> &str {
    p.progress.as_ref().map_or("", |p| p.message.as_str())
}

#[test]
fn a_new_gateway_gets_slot_a_with_every_shard() {
    let v1 = spec("img:1");
    let p = run(
        &v1,
        &intent(&[]),
        &WebSocketGatewayStatus::default(),
        &[SlotView::empty(Slot::A), SlotView::empty(Slot::B)],
    );
    assert_eq!(
        p.slots,
        vec![SlotPlan {
            slot: Slot::A,
            inputs: v1,
            replicas: 3,
            partition: 0
        }]
    );
    assert_eq!(
        p.roles,
        Roles {
            stable: Slot::A,
            canary: None,
            weight: 0,
            retiring: None,
            held_out: None,
        }
    );
    assert!(p.progress.is_none() && p.problems.is_empty() && p.canary.is_none());
}

#[test]
fn with_the_canary_annotation_a_spec_change_starts_a_canary_in_the_free_slot() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run(
        &v2,
        &intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "25")]),
        &status(Slot::A, &v1, None),
        &slots,
    );
    let stable = p.slots.iter().find(|s| s.slot == Slot::A).expect("stable");
    assert_eq!(stable.inputs, v1, "stable keeps its version");
    let canary = p.slots.iter().find(|s| s.slot == Slot::B).expect("canary");
    assert_eq!((canary.inputs.clone(), canary.replicas), (v2, 3));
    let c = p.canary.expect("canary status");
    assert_eq!(
        (c.phase, c.weight, c.target_weight),
        (CanaryPhase::Starting, 0, Some(25))
    );
    assert_eq!(
        p.roles.weight, 0,
        "no key moves before the canary's pods are ready"
    );
}

#[test]
fn a_ready_canary_steps_to_the_annotated_weight_then_holds() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "25")]);
    // The canary's pods are ready: first the stable pods leave the client
    // Service, and no key moves while any of them still takes clients.
    let open = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 0)];
    let p = run(&v2, &i, &during(CanaryPhase::Starting, 0, &v1, &v2), &open);
    assert_eq!((p.roles.weight, p.roles.held_out), (0, Some(Slot::A)));
    assert_eq!(phase_of(&p), Some(CanaryPhase::Starting));
    assert!(
        message(&p).contains("3 stable pods still take new clients"),
        "{}",
        message(&p)
    );
    let slots = [
        out_of_service(slot(Slot::A, &v1, 3, 10)),
        slot(Slot::B, &v2, 3, 0),
    ];
    let p = run(&v2, &i, &during(CanaryPhase::Starting, 0, &v1, &v2), &slots);
    assert_eq!(
        p.roles,
        Roles {
            stable: Slot::A,
            canary: Some(Slot::B),
            weight: 25,
            retiring: None,
            held_out: Some(Slot::A),
        }
    );
    assert_eq!(phase_of(&p), Some(CanaryPhase::Shifting));
    assert_eq!(p.disrupting, 8, "25% of 30 connections, rounded up");
    let p = run(
        &v2,
        &i,
        &during(CanaryPhase::Shifting, 25, &v1, &v2),
        &slots,
    );
    assert_eq!(phase_of(&p), Some(CanaryPhase::Holding));
    assert_eq!(p.disrupting, 0);
}

#[test]
fn an_invalid_weight_holds_the_canary_where_it_is() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 10)];
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "150")]);
    let p = run(&v2, &i, &during(CanaryPhase::Holding, 40, &v1, &v2), &slots);
    assert_eq!(p.roles.weight, 40);
    assert_eq!(p.problems.len(), 1);
    assert!(p.problems[0].starts_with(CANARY_WEIGHT));
}

#[test]
fn promotion_swaps_roles_and_waits_for_the_old_pods_to_empty() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "100")]);
    let holding = during(CanaryPhase::Holding, 100, &v1, &v2);
    let busy = [slot(Slot::A, &v1, 3, 2), slot(Slot::B, &v2, 3, 10)];
    let p = run(&v2, &i, &holding, &busy);
    assert_eq!(
        p.roles,
        Roles {
            stable: Slot::B,
            canary: None,
            weight: 0,
            retiring: Some(Slot::A),
            held_out: None,
        }
    );
    assert_eq!(p.stable, (Slot::B, v2.clone()));
    assert_eq!(phase_of(&p), Some(CanaryPhase::Promoting));
    assert_eq!(replicas_of(&p, Slot::A), 3);
    // The old pods own nothing now, but each still relays 4 clients that
    // entered through it: they stop one at a time, each step costing what
    // it relays, and the promotion ends with the last.
    let mut old = relaying(slot(Slot::A, &v1, 3, 0), 4);
    let new = slot(Slot::B, &v2, 3, 10);
    let mut promoting = status(Slot::B, &v2, p.canary.clone());
    let mut steps = Vec::new();
    let last = loop {
        let p = run(&v2, &i, &promoting, &[old.clone(), new.clone()]);
        let replicas = replicas_of(&p, Slot::A);
        steps.push((replicas, p.disrupting));
        if p.canary.is_none() || steps.len() > 3 {
            break p;
        }
        assert_eq!(phase_of(&p), Some(CanaryPhase::Promoting));
        old.replicas = replicas;
        old.pods.retain(|pod| pod.ordinal < replicas);
        promoting = status(Slot::B, &v2, p.canary.clone());
    };
    assert_eq!(steps, vec![(2, 4), (1, 4), (0, 4)]);
    assert_eq!(last.transition.map(|t| t.0), Some("CanaryPromoted"));
}

/// Each pod of `view` relays `n` connections owned elsewhere.
fn relaying(mut view: SlotView, n: i64) -> SlotView {
    for pod in &mut view.pods {
        pod.relayed = Some(n);
    }
    view
}

fn replicas_of(p: &Plan, slot: Slot) -> i32 {
    p.slots
        .iter()
        .find(|s| s.slot == slot)
        .map_or(-1, |s| s.replicas)
}

#[test]
fn an_old_pod_that_relays_connections_stops_only_when_the_budget_allows() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "100")]);
    let mut promoting = status(
        Slot::B,
        &v2,
        Some(canary(CanaryPhase::Promoting, Slot::B, &v2, 100)),
    );
    // This window already closed every connection the budget allows.
    promoting.disruption = Some(ringway_crds::DisruptionStatus {
        window_start: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(1_800_000_000 - 10).expect("time"),
        ),
        disrupted: 30,
    });
    let slots = [
        relaying(slot(Slot::A, &v1, 3, 0), 4),
        slot(Slot::B, &v2, 3, 10),
    ];
    let p = run(&v2, &i, &promoting, &slots);
    assert_eq!(replicas_of(&p, Slot::A), 3);
    assert_eq!(p.disrupting, 0);
    assert_eq!(
        p.progress.as_ref().map(|p| p.reason),
        Some(reasons::WAITING_FOR_BUDGET),
        "{:?}",
        p.progress
    );
    assert_eq!(phase_of(&p), Some(CanaryPhase::Promoting));
}

#[test]
fn a_restart_in_place_costs_what_the_pod_owns_and_relays() {
    // A new control certificate restarts the pods in place, one at a time.
    let v1 = spec("img:1");
    let mut stable = relaying(slot(Slot::A, &v1, 3, 10), 5);
    // The template has the new certificate; no pod runs it yet.
    stable.template = Some((v1.template_revision(), "cert".into()));
    stable.partition = 3;
    for pod in &mut stable.pods {
        pod.updated = false;
    }
    let empty = SlotView::empty(Slot::B);
    let p = run(
        &v1,
        &intent(&[]),
        &status(Slot::A, &v1, None),
        &[stable, empty],
    );
    assert_eq!(p.disrupting, 15, "{:?}", p.progress);
}

#[test]
fn abort_steps_the_weight_to_zero_then_removes_the_canary() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_ABORT, "true")]);
    // First the canary's pods leave the client Service and stable's
    // return; no key moves back before.
    let slots = [
        out_of_service(slot(Slot::A, &v1, 3, 10)),
        slot(Slot::B, &v2, 3, 10),
    ];
    let p = run(&v2, &i, &during(CanaryPhase::Holding, 30, &v1, &v2), &slots);
    assert_eq!((p.roles.weight, p.roles.held_out), (30, Some(Slot::B)));
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
    assert!(
        message(&p).contains("3 canary pods still take new clients, 0 of 3 stable pods do"),
        "{}",
        message(&p)
    );
    let slots = [
        slot(Slot::A, &v1, 3, 10),
        out_of_service(slot(Slot::B, &v2, 3, 10)),
    ];
    let p = run(
        &v2,
        &i,
        &during(CanaryPhase::Aborting, 30, &v1, &v2),
        &slots,
    );
    assert_eq!(p.roles.weight, 0);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
    // The canary's pods own nothing at weight 0; they stop one at a time.
    let mut drained = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 0)];
    let mut aborting = during(CanaryPhase::Aborting, 0, &v1, &v2);
    let mut replicas = Vec::new();
    let last = loop {
        let p = run(&v2, &i, &aborting, &drained);
        replicas.push(replicas_of(&p, Slot::B));
        if p.canary.is_none() || replicas.len() > 3 {
            break p;
        }
        assert_eq!(p.roles.weight, 0);
        let left = replicas_of(&p, Slot::B);
        drained[1].replicas = left;
        drained[1].pods.retain(|pod| pod.ordinal < left);
        aborting = status(Slot::A, &v1, p.canary.clone());
    };
    assert_eq!(replicas, vec![2, 1, 0]);
    assert_eq!(last.transition.map(|t| t.0), Some("CanaryAborted"));
    assert_eq!(last.stable, (Slot::A, v1));
}

#[test]
fn reverting_the_spec_during_a_canary_aborts_it() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 10)];
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "30")]);
    let p = run(&v1, &i, &during(CanaryPhase::Holding, 30, &v1, &v2), &slots);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
}

#[test]
fn without_the_annotation_a_new_version_runs_beside_the_old_and_walks_straight_to_100() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run(&v2, &intent(&[]), &status(Slot::A, &v1, None), &slots);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Starting));
    let stable = p.slots.iter().find(|s| s.slot == Slot::A).expect("stable");
    assert_eq!(
        (&stable.inputs, stable.partition),
        (&v1, 0),
        "no pod restarts in place"
    );
    let ready = [
        out_of_service(slot(Slot::A, &v1, 3, 10)),
        slot(Slot::B, &v2, 3, 0),
    ];
    let p = run(
        &v2,
        &intent(&[]),
        &during(CanaryPhase::Starting, 0, &v1, &v2),
        &ready,
    );
    assert_eq!(p.roles.weight, 100, "no hold: the budget alone paces it");
}

#[test]
fn a_change_of_limits_alone_starts_no_second_slot() {
    let v1 = spec("img:1");
    let mut lower = v1.clone();
    if let Some(l) = lower.limits.as_mut() {
        l.max_message_bytes = 1024;
    }
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run(&lower, &intent(&[]), &status(Slot::A, &v1, None), &slots);
    assert!(p.canary.is_none());
    assert_eq!(p.stable, (Slot::A, lower));
    assert_eq!(p.slots[0].partition, 0);
}

#[test]
fn an_unknown_rollout_kind_holds_the_spec_change() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run(
        &v2,
        &intent(&[(ROLLOUT, "blue-green")]),
        &status(Slot::A, &v1, None),
        &slots,
    );
    assert_eq!(p.slots[0].inputs, v1, "nothing restarts on a guess");
    assert_eq!(p.problems.len(), 1);
}

#[test]
fn a_pod_without_an_answer_is_unknown_only_while_it_runs_with_an_address() {
    let v1 = spec("img:1");
    let known = slot(Slot::A, &v1, 1, 7);
    let unknown = silent(known.clone(), &[0], 10);
    let mut stopped = unknown.clone();
    stopped.pods[0].running = false;
    let mut no_ip = unknown.clone();
    no_ip.pods[0].ip = None;
    let cases = [
        (
            "answered",
            known,
            Count::Known(PodCounts {
                owned: 7,
                relayed: 0,
            }),
        ),
        ("silent for 10s", unknown.clone(), Count::Unknown),
        (
            "silent, never timed",
            silent(unknown.clone(), &[], 0),
            Count::Unknown,
        ),
        (
            "silent for 119s",
            silent(unknown.clone(), &[0], 119),
            Count::Unknown,
        ),
        (
            "silent for 120s",
            silent(unknown.clone(), &[0], 120),
            Count::Unreachable,
        ),
        ("not running", stopped, Count::Known(PodCounts::default())),
        ("no address", no_ip, Count::Known(PodCounts::default())),
    ];
    for (name, view, want) in cases {
        assert_eq!(view.pods[0].count(now()), want, "{name}");
    }
    let mut never_timed = unknown;
    never_timed.pods[0].unanswered_since = None;
    assert_eq!(never_timed.pods[0].count(now()), Count::Unknown);
}

#[test]
fn a_drain_names_what_it_waits_for() {
    let v1 = spec("img:1");
    let cases = [
        (slot(Slot::A, &v1, 3, 0), true, "0 connections left on them"),
        (
            slot(Slot::A, &v1, 3, 2),
            false,
            "6 connections left on them",
        ),
        (
            silent(slot(Slot::A, &v1, 3, 0), &[1], 5),
            false,
            "waiting to hear how many connections pod gw-a-1 holds (its status polls failed)",
        ),
        (
            silent(slot(Slot::A, &v1, 3, 2), &[0, 1], 5),
            false,
            "waiting to hear how many connections pods gw-a-0, gw-a-1 hold (their status polls failed); 2 connections left on them",
        ),
        (
            silent(slot(Slot::A, &v1, 3, 0), &[2], 600),
            true,
            "0 connections left on them",
        ),
    ];
    for (view, done, want) in cases {
        let drain = view.drain(now());
        assert_eq!(
            (drain.done(), drain.waiting_for("them").as_str()),
            (done, want)
        );
    }
    let drain = silent(slot(Slot::A, &v1, 3, 0), &[2], 600).drain(now());
    assert_eq!(drain.unreachable, vec!["gw-a-2".to_owned()]);
}

#[test]
fn promotion_waits_to_hear_from_an_old_pod_whose_poll_failed() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "100")]);
    let new = slot(Slot::B, &v2, 3, 10);
    // At the step to promotion, and on each reconcile of it after.
    let statuses = [
        during(CanaryPhase::Holding, 100, &v1, &v2),
        status(
            Slot::B,
            &v2,
            Some(canary(CanaryPhase::Promoting, Slot::B, &v2, 100)),
        ),
    ];
    for st in &statuses {
        let old = silent(slot(Slot::A, &v1, 3, 0), &[0, 1], 30);
        let p = run(&v2, &i, st, &[old, new.clone()]);
        assert_eq!(phase_of(&p), Some(CanaryPhase::Promoting));
        assert_eq!((replicas_of(&p, Slot::A), p.disrupting), (3, 0));
        assert_eq!(
            message(&p),
            "promoting slot B: waiting to hear how many connections pods gw-a-0, gw-a-1 hold (their status polls failed)"
        );
        assert_eq!(p.requeue, Some(PROGRESS_REQUEUE));
        assert!(p.unreachable.is_empty());
    }
}

#[test]
fn abort_waits_to_hear_from_a_canary_pod_whose_poll_failed() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_ABORT, "true")]);
    let slots = [
        slot(Slot::A, &v1, 3, 10),
        silent(slot(Slot::B, &v2, 3, 0), &[2], 30),
    ];
    let p = run(&v2, &i, &during(CanaryPhase::Aborting, 0, &v1, &v2), &slots);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
    assert_eq!((replicas_of(&p, Slot::B), p.disrupting), (3, 0));
    assert_eq!(
        message(&p),
        "aborting: waiting to hear how many connections pod gw-b-2 holds (its status polls failed)"
    );
}

#[test]
fn a_paced_stop_waits_to_hear_from_the_next_pod() {
    // A restart in place (a new control certificate): the next pod to
    // restart (the highest ordinal) did not answer.
    let v1 = spec("img:1");
    let mut stable = silent(slot(Slot::A, &v1, 3, 10), &[2], 30);
    stable.template = Some((v1.template_revision(), "cert".into()));
    stable.partition = 3;
    for pod in &mut stable.pods {
        pod.updated = false;
    }
    let slots = [stable, SlotView::empty(Slot::B)];
    let p = run(&v1, &intent(&[]), &status(Slot::A, &v1, None), &slots);
    assert_eq!((p.slots[0].partition, p.disrupting), (3, 0));
    assert_eq!(
        message(&p),
        format!(
            "rolling update to revision {}: 0 of 3 pods updated; waiting to hear how many connections pod gw-a-2 holds (its status polls failed)",
            v1.revision()
        )
    );
}

#[test]
fn past_the_bound_a_silent_pod_is_reported_and_stopped_without_a_charge() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let report = "pod gw-a-2 has not answered status polls for 120s: its connections are unknown and will be closed by its stop (over its grace period, with 1001)";
    // Promotion: the old slot is waited for no longer; its silent pod is
    // the next to stop.
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "100")]);
    let promoting = status(
        Slot::B,
        &v2,
        Some(canary(CanaryPhase::Promoting, Slot::B, &v2, 100)),
    );
    let slots = [
        silent(relaying(slot(Slot::A, &v1, 3, 0), 4), &[2], 121),
        slot(Slot::B, &v2, 3, 10),
    ];
    let p = run(&v2, &i, &promoting, &slots);
    assert_eq!((replicas_of(&p, Slot::A), p.disrupting), (2, 0));
    assert_eq!(p.unreachable, vec!["gw-a-2".to_owned()]);
    assert_eq!(
        message(&p),
        format!("promoting slot B: stopping the old pods one at a time, 3 left; {report}")
    );
    // Abort: the same for the canary's slot.
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_ABORT, "true")]);
    let slots = [
        slot(Slot::A, &v1, 3, 10),
        silent(slot(Slot::B, &v2, 3, 0), &[0], 600),
    ];
    let p = run(&v2, &i, &during(CanaryPhase::Aborting, 0, &v1, &v2), &slots);
    assert_eq!((replicas_of(&p, Slot::B), p.disrupting), (2, 0));
    assert_eq!(p.unreachable, vec!["gw-b-0".to_owned()]);
    assert!(
        message(&p).ends_with("pod gw-b-0 has not answered status polls for 120s: its connections are unknown and will be closed by its stop (over its grace period, with 1001)"),
        "{}",
        message(&p)
    );
}

#[test]
fn pods_that_answered_zero_or_are_not_running_are_not_waited_for() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "100")]);
    let promoting = status(
        Slot::B,
        &v2,
        Some(canary(CanaryPhase::Promoting, Slot::B, &v2, 100)),
    );
    // gw-a-0 stopped running before it could be asked: it holds nothing.
    let mut old = silent(slot(Slot::A, &v1, 3, 0), &[0], 30);
    old.pods[0].running = false;
    let p = run(&v2, &i, &promoting, &[old, slot(Slot::B, &v2, 3, 10)]);
    assert_eq!(replicas_of(&p, Slot::A), 2);
    assert!(p.unreachable.is_empty());
    assert_eq!(
        message(&p),
        "promoting slot B: stopping the old pods one at a time, 3 left (the next relays 0 connections)"
    );
}

#[test]
fn an_abort_moves_keys_back_once_one_stable_pod_takes_clients_again() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_ABORT, "true")]);
    // Two stable pods cannot get ready; one can: the abort does not wait
    // for good.
    let mut stable = out_of_service(slot(Slot::A, &v1, 3, 10));
    stable.pods[0].ready = true;
    let slots = [stable, out_of_service(slot(Slot::B, &v2, 3, 10))];
    let p = run(
        &v2,
        &i,
        &during(CanaryPhase::Aborting, 30, &v1, &v2),
        &slots,
    );
    assert_eq!(p.roles.weight, 0, "{}", message(&p));
}

#[test]
fn stable_pods_of_an_older_data_plane_stay_in_the_service() {
    // They never say they serve while retiring (and would refuse the
    // hand-offs of their keys): holding them out would empty the ring.
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "25")]);
    let mut stable = slot(Slot::A, &v1, 3, 10);
    for pod in &mut stable.pods {
        pod.serving = false;
    }
    let slots = [stable, slot(Slot::B, &v2, 3, 0)];
    let p = run(&v2, &i, &during(CanaryPhase::Starting, 0, &v1, &v2), &slots);
    assert_eq!((p.roles.weight, p.roles.held_out), (25, None));
}

mod automatic;
