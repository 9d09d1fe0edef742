//! Canaries that move by `spec.rollout.steps` and the analysis: they walk
//! the steps when no worse than stable, hold while the analysis has not
//! decided, abort when worse, and give way to the annotations.

use k8s_openapi::jiff::SignedDuration;
use ringway_crds::{
    RolloutStep,
    annotations::{CANARY_PAUSE, CANARY_WEIGHT},
};

use super::*;
use crate::rollout::analysis::{Counters, Window};

fn steps(weights: &[u8]) -> RolloutSettings {
    RolloutSettings {
        steps: weights
            .iter()
            .map(|&weight| RolloutStep {
                weight,
                hold_seconds: None,
            })
            .collect(),
        ..RolloutSettings::default()
    }
}

/// Every pod of `view` reports `minutes` connection-minutes, `upgrades`
/// upgrades and `too_big` closes with 1009 since it started.
fn counted(mut view: SlotView, minutes: u64, upgrades: u64, too_big: u64) -> SlotView {
    for pod in &mut view.pods {
        let mut c = Counters {
            boot: 7,
            connection_millis: minutes * 60_000,
            upgrades,
            ..Counters::default()
        };
        c.events.too_big_closes = too_big;
        pod.owned = Some(c);
    }
    view
}

/// The window the operator opened `ago` seconds before [`now`] on
/// `canary` at `weight`, with every pod at zero.
fn window(canary: &CanaryStatus, slots: &[SlotView; 2], ago: i64) -> Window {
    let zero = slots.clone().map(|v| counted(v, 0, 0, 0));
    Window::follow(
        None,
        Some(canary),
        &zero,
        now() - SignedDuration::from_secs(ago),
    )
    .expect("a canary with keys has a window")
}

struct Case {
    v1: PodInputs,
    v2: PodInputs,
    status: WebSocketGatewayStatus,
    slots: [SlotView; 2],
}

/// A canary of `img:2` in slot B at `weight`, holding; each pod of both
/// slots served `minutes` connection-minutes and closed `too_big` (stable)
/// and `canary_too_big` (canary) clients with 1009.
fn holding_at(weight: u8, minutes: u64, too_big: u64, canary_too_big: u64) -> Case {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let status = during(CanaryPhase::Holding, weight, &v1, &v2);
    let slots = [
        counted(
            out_of_service(slot(Slot::A, &v1, 3, 10)),
            minutes,
            100,
            too_big,
        ),
        counted(slot(Slot::B, &v2, 3, 10), minutes, 100, canary_too_big),
    ];
    Case {
        v1,
        v2,
        status,
        slots,
    }
}

impl Case {
    fn run(&self, intent: &Intent, rollout: &RolloutSettings, ago: i64) -> Plan {
        let canary = self.status.canary.as_ref().expect("canary");
        let window = window(canary, &self.slots, ago);
        run_with(
            &self.v2,
            intent,
            &self.status,
            &self.slots,
            rollout,
            Some(&window),
        )
    }
}

#[test]
fn with_steps_a_spec_change_starts_a_canary_without_the_annotation() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [slot(Slot::A, &v1, 3, 10), SlotView::empty(Slot::B)];
    let p = run_with(
        &v2,
        &intent(&[]),
        &status(Slot::A, &v1, None),
        &slots,
        &steps(&[5, 25, 50]),
        None,
    );
    assert_eq!(phase_of(&p), Some(CanaryPhase::Starting));
    assert_eq!(p.roles.canary, Some(Slot::B));
}

#[test]
fn a_ready_canary_moves_to_the_first_step_by_itself() {
    let (v1, v2) = (spec("img:1"), spec("img:2"));
    let slots = [
        out_of_service(slot(Slot::A, &v1, 3, 10)),
        slot(Slot::B, &v2, 3, 0),
    ];
    let p = run_with(
        &v2,
        &intent(&[]),
        &during(CanaryPhase::Starting, 0, &v1, &v2),
        &slots,
        &steps(&[25, 5, 50]),
        None,
    );
    let c = p.canary.expect("canary");
    assert_eq!((c.phase, c.weight), (CanaryPhase::Shifting, 5));
}

#[test]
fn a_step_holds_for_its_hold_time_then_advances_when_no_worse_than_stable() {
    // 3 pods × 40 connection-minutes: 120 on the canary, over the 100 needed.
    let case = holding_at(5, 40, 0, 0);
    let rollout = steps(&[5, 25, 50]);
    let early = case.run(&intent(&[]), &rollout, 100);
    let c = early.canary.as_ref().expect("canary");
    assert_eq!((c.phase, c.weight), (CanaryPhase::Holding, 5));
    assert!(
        message(&early).contains("100s of the 300s hold have passed"),
        "{}",
        message(&early)
    );
    let analysis = c.analysis.as_ref().expect("the analysis shows");
    assert_eq!(analysis.canary.connection_minutes, 120);
    assert_eq!(analysis.stable.upgrades, 300);

    let late = case.run(&intent(&[]), &rollout, 301);
    let c = late.canary.expect("canary");
    assert_eq!((c.phase, c.weight), (CanaryPhase::Shifting, 25));
}

#[test]
fn a_step_without_enough_canary_connection_minutes_holds_on() {
    // 3 × 20 = 60 of the 100 needed.
    let p = holding_at(5, 20, 0, 0).run(&intent(&[]), &steps(&[5, 25]), 3600);
    assert_eq!(p.canary.as_ref().expect("canary").weight, 5);
    assert!(
        message(&p).contains("60.0 of the 100 canary connection-minutes"),
        "{}",
        message(&p)
    );
}

#[test]
fn a_steps_own_hold_time_overrides_the_analysiss() {
    let mut rollout = steps(&[5, 25]);
    rollout.steps[0].hold_seconds = Some(60);
    let p = holding_at(5, 40, 0, 0).run(&intent(&[]), &rollout, 61);
    assert_eq!(p.canary.expect("canary").weight, 25);
}

#[test]
fn after_the_last_step_the_canary_goes_to_100_and_is_promoted() {
    let rollout = steps(&[5, 50]);
    let p = holding_at(50, 40, 0, 0).run(&intent(&[]), &rollout, 301);
    assert_eq!(p.canary.as_ref().expect("canary").weight, 100);
    let at_100 = holding_at(100, 40, 0, 0).run(&intent(&[]), &rollout, 1);
    assert_eq!(phase_of(&at_100), Some(CanaryPhase::Promoting));
    assert_eq!(at_100.roles.stable, Slot::B);
}

#[test]
fn a_canary_worse_than_stable_is_aborted_with_both_figures_and_its_revision_held() {
    // 3 × 20 too-big closes on the canary, none on stable.
    let case = holding_at(25, 40, 0, 20);
    let p = case.run(&intent(&[]), &steps(&[5, 25, 50]), 30);
    let c = p.canary.as_ref().expect("canary");
    // The weight goes back once the canary's pods have left the client
    // Service and stable's have returned.
    assert_eq!((c.phase, c.weight), (CanaryPhase::Aborting, 25));
    assert_eq!(p.roles.held_out, Some(Slot::B));
    let (reason, event) = p.transition.clone().expect("an event");
    assert_eq!(reason, "CanaryAnalysisFailed");
    assert!(
        event.contains(
            "closes with 1009 (message too big): canary 0.500 per connection-minute, stable 0"
        ),
        "{event}"
    );
    let aborted = p.aborted.clone().expect("status.aborted");
    assert_eq!(aborted.revision, case.v2.revision());
    assert_eq!(
        c.analysis
            .as_ref()
            .map(|a| a.canary.events.get("tooBigCloses")),
        Some(Some(&60))
    );

    // Once the canary is gone the spec change is held, not started again.
    let after = WebSocketGatewayStatus {
        aborted: Some(aborted),
        ..status(Slot::A, &case.v1, None)
    };
    let slots = [slot(Slot::A, &case.v1, 3, 10), SlotView::empty(Slot::B)];
    let held = run_with(&case.v2, &intent(&[]), &after, &slots, &steps(&[5]), None);
    assert!(held.canary.is_none());
    assert!(held.aborted.is_some());
    assert!(message(&held).contains("was aborted"), "{}", message(&held));
    // A new spec starts a new canary and forgets the old abort.
    let v3 = spec("img:3");
    let next = run_with(&v3, &intent(&[]), &after, &slots, &steps(&[5]), None);
    assert_eq!(phase_of(&next), Some(CanaryPhase::Starting));
    assert!(next.aborted.is_none());
}

#[test]
fn a_few_bad_closes_never_abort_however_high_their_rate() {
    // 3 × 6 = 18 < 20 events.
    let p = holding_at(5, 1, 0, 6).run(&intent(&[]), &steps(&[5, 25]), 30);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Holding));
    assert!(p.aborted.is_none());
}

#[test]
fn the_annotations_take_precedence_over_the_steps_but_not_over_an_abort() {
    let healthy = holding_at(5, 40, 0, 0);
    let rollout = steps(&[5, 25, 50]);
    let held = healthy.run(&intent(&[(CANARY_WEIGHT, "5")]), &rollout, 3600);
    assert_eq!(phase_of(&held), Some(CanaryPhase::Holding));
    let paused = healthy.run(&intent(&[(CANARY_PAUSE, "true")]), &rollout, 3600);
    assert_eq!(paused.canary.as_ref().expect("canary").weight, 5);
    assert!(
        message(&paused).contains("canary-pause"),
        "{}",
        message(&paused)
    );
    let asked = healthy.run(&intent(&[(CANARY_WEIGHT, "50")]), &rollout, 1);
    assert_eq!(asked.canary.expect("canary").weight, 50);

    let harmful = holding_at(5, 40, 0, 20);
    let p = harmful.run(&intent(&[(CANARY_PAUSE, "true")]), &rollout, 1);
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
    // A canary moved by annotation alone is judged too.
    let manual = harmful.run(
        &intent(&[(ROLLOUT, "canary")]),
        &RolloutSettings::default(),
        1,
    );
    assert_eq!(phase_of(&manual), Some(CanaryPhase::Aborting));
}

#[test]
fn between_steps_the_canary_moves_on_without_a_hold() {
    // Left at 10 by an annotation since removed: on to the next step.
    let p = holding_at(10, 0, 0, 0).run(&intent(&[]), &steps(&[5, 25]), 1);
    assert_eq!(p.canary.expect("canary").weight, 25);
}

#[test]
fn a_restarted_pod_counts_from_zero_and_a_window_of_another_weight_is_not_used() {
    let case = holding_at(5, 40, 0, 0);
    let canary = case.status.canary.as_ref().expect("canary");
    let w = window(canary, &case.slots, 400);
    // The canary's pods restarted (new boot) and since closed 10 each.
    let mut slots = case.slots.clone();
    for pod in &mut slots[1].pods {
        let mut c = Counters {
            boot: 8,
            connection_millis: 60_000,
            ..Counters::default()
        };
        c.events.too_big_closes = 10;
        pod.owned = Some(c);
        pod.restarts = 1;
    }
    let sample = w.sample(&slots, Slot::B);
    assert_eq!((sample.connection_seconds, sample.restarts), (180, 3));
    assert_eq!(sample.events.too_big_closes, 30);
    let p = run_with(
        &case.v2,
        &intent(&[]),
        &case.status,
        &slots,
        &steps(&[5, 25]),
        Some(&w),
    );
    assert_eq!(phase_of(&p), Some(CanaryPhase::Aborting));
    assert!(
        p.transition
            .expect("event")
            .1
            .contains("pod restarts: canary 3, stable 0"),
        "restarts decide first"
    );

    let elsewhere = holding_at(25, 40, 0, 0);
    let p = run_with(
        &elsewhere.v2,
        &intent(&[]),
        &elsewhere.status,
        &elsewhere.slots,
        &steps(&[5, 25]),
        Some(&w),
    );
    assert!(
        message(&p).contains("the analysis starts"),
        "{}",
        message(&p)
    );
}

#[test]
fn closes_an_edge_decided_count_for_the_version_of_the_key() {
    let case = holding_at(25, 40, 0, 0);
    let canary = case.status.canary.as_ref().expect("canary");
    let w = window(canary, &case.slots, 30);
    // Each stable pod, as the edge of canary keys' connections, closed 10
    // clients with 1009 under the canary's limits.
    let mut slots = case.slots.clone();
    for pod in &mut slots[0].pods {
        let c = pod.owned.as_mut().expect("counters");
        c.edge[1].too_big_closes = 10;
    }
    assert_eq!(w.sample(&slots, Slot::B).events.too_big_closes, 30);
    assert_eq!(w.sample(&slots, Slot::A).events.too_big_closes, 0);
    let p = run_with(
        &case.v2,
        &intent(&[]),
        &case.status,
        &slots,
        &steps(&[25, 50]),
        Some(&w),
    );
    assert_eq!(p.transition.expect("event").0, "CanaryAnalysisFailed");
}

#[test]
fn a_report_counts_each_close_in_its_measure_and_each_edge_close_by_version() {
    use ringway_control::proto as v1;
    let close = |code, reason: &str, count| v1::CloseCount {
        code,
        reason: reason.into(),
        count,
    };
    let report = v1::OwnerCounters {
        boot: 1,
        connection_millis: 5_000,
        upgrades: 9,
        upgrade_failures: vec![v1::ReasonCount {
            reason: "backend_refused".into(),
            count: 2,
        }],
        closes: vec![
            close(1009, "client_protocol_error", 3),
            close(1000, "client", 50),
            close(0, "backend_eof", 4),
        ],
        failures: vec![v1::ReasonCount {
            reason: "io".into(),
            count: 1,
        }],
    };
    let edge = [v1::VersionCloses {
        version: v1::Version::Canary as i32,
        closes: vec![close(1009, "client_protocol_error", 7)],
    }];
    let c = Counters::from_report(&report, &edge);
    assert_eq!(c.events.backend_failures, 2);
    assert_eq!(c.events.too_big_closes, 3);
    assert_eq!(c.events.unclean_closes, 4);
    assert_eq!(c.events.relay_errors, 1);
    assert_eq!(c.edge[1].too_big_closes, 7);
    assert_eq!(c.edge[0].too_big_closes, 0);
}
