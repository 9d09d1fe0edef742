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
        template: Some((inputs.revision(), "cert".into())),
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
        now: Timestamp::from_second(1_800_000_000).expect("time"),
    })
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
    let slots = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 0)];
    let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, "25")]);
    let p = run(&v2, &i, &during(CanaryPhase::Starting, 0, &v1, &v2), &slots);
    assert_eq!(
        p.roles,
        Roles {
            stable: Slot::A,
            canary: Some(Slot::B),
            weight: 25,
            retiring: None,
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
fn a_rolling_restart_costs_what_the_pod_owns_and_relays() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let mut stable = relaying(slot(Slot::A, &v1, 3, 10), 5);
    // The template is the new revision; no pod runs it yet.
    stable.template = Some((v2.revision(), "cert".into()));
    stable.partition = 3;
    for pod in &mut stable.pods {
        pod.updated = false;
    }
    let empty = SlotView::empty(Slot::B);
    let p = run(
        &v2,
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
    let slots = [slot(Slot::A, &v1, 3, 10), slot(Slot::B, &v2, 3, 10)];
    let p = run(&v2, &i, &during(CanaryPhase::Holding, 30, &v1, &v2), &slots);
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
fn without_the_annotation_a_spec_change_rolls_the_stable_slot_in_place() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run(&v2, &intent(&[]), &status(Slot::A, &v1, None), &slots);
    assert_eq!(
        p.slots,
        vec![SlotPlan {
            slot: Slot::A,
            inputs: v2,
            replicas: 3,
            partition: 3
        }]
    );
    assert_eq!(p.progress.map(|p| p.reason), Some(reasons::ROLLING_UPDATE));
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
