use std::time::{Duration, Instant};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::json;

use super::*;

#[test]
fn the_budget_is_split_with_the_remainder_to_the_first_pods() {
    assert_eq!(shares(100, 1), [100]);
    assert_eq!(shares(100, 3), [34, 33, 33]);
    assert_eq!(shares(10, 4), [3, 3, 2, 2]);
    assert_eq!(shares(7, 0), [0u32; 0]);
    for (budget, count) in [(100, 7), (1, 1), (5, 5), (9900, 13)] {
        assert_eq!(shares(budget, count).iter().sum::<u32>(), budget);
    }
}

#[test]
fn more_pods_than_the_budget_each_get_one_close_per_second() {
    assert_eq!(shares(2, 3), [1, 1, 1]);
}

fn workload(name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: "prod".into(),
        workload: format!("deployment/{name}"),
    }
}

fn pod(name: &str, of: &str, budget: u32, second: i64) -> DrainingPod {
    DrainingPod {
        pod: PodKey {
            namespace: "prod".into(),
            name: name.into(),
        },
        workload: workload(of),
        reference: ObjectReference {
            name: Some(name.into()),
            ..ObjectReference::default()
        },
        address: format!("{name}:15091"),
        budget,
        since: Timestamp::from_second(second).unwrap(),
    }
}

fn rates(calls: &[Call]) -> Vec<(&str, u32)> {
    calls
        .iter()
        .map(|c| (c.pod.name.as_str(), c.rate))
        .collect()
}

/// Every call of `plan` answered with `left` clients.
fn answer_all(fleet: &mut Fleet, plan: &Plan, left: u64) -> Vec<Report> {
    let now = Instant::now();
    plan.workloads
        .values()
        .flat_map(|w| w.lower.iter().chain(&w.raise))
        .filter_map(|c| fleet.paced(c, Ok(left), now))
        .collect()
}

#[test]
fn a_pod_that_joins_the_drain_lowers_the_others_first() {
    let mut fleet = Fleet::default();
    let a = pod("a", "chat", 10, 1);
    let (plan, gone) = fleet.plan(std::slice::from_ref(&a));
    assert!(gone.is_empty());
    let w = &plan.workloads[&workload("chat")];
    assert!(w.lower.is_empty());
    assert_eq!(rates(&w.raise), [("a", 10)]);
    let reports = answer_all(&mut fleet, &plan, 70);
    assert!(matches!(
        reports[..],
        [Report {
            event: DrainEvent::Started {
                connections: 70,
                rate: 10,
                sharing: 1,
                budget: 10
            },
            ..
        }]
    ));

    // Nothing changed: only a poll.
    let (plan, _) = fleet.plan(std::slice::from_ref(&a));
    assert!(plan.workloads.is_empty());
    assert_eq!(plan.poll.len(), 1);

    let b = pod("b", "chat", 10, 2);
    let (plan, _) = fleet.plan(&[a.clone(), b.clone()]);
    let w = &plan.workloads[&workload("chat")];
    assert_eq!(rates(&w.lower), [("a", 5)]);
    assert_eq!(rates(&w.raise), [("b", 5)]);
}

#[test]
fn a_drained_pod_gives_its_share_back() {
    let mut fleet = Fleet::default();
    let (a, b) = (pod("a", "chat", 10, 1), pod("b", "chat", 10, 2));
    let (plan, _) = fleet.plan(&[a.clone(), b.clone()]);
    answer_all(&mut fleet, &plan, 20);
    let later = Instant::now() + Duration::from_secs(4);
    let report = fleet.polled(&a.pod, Ok(0), later).unwrap();
    assert!(matches!(
        report.event,
        DrainEvent::Drained {
            connections: 20,
            ..
        }
    ));
    let (plan, _) = fleet.plan(&[a, b]);
    let w = &plan.workloads[&workload("chat")];
    assert!(w.lower.is_empty());
    assert_eq!(rates(&w.raise), [("b", 10)]);
}

#[test]
fn workloads_have_budgets_of_their_own() {
    let mut fleet = Fleet::default();
    let pods = [
        pod("a", "chat", 10, 1),
        pod("b", "chat", 10, 2),
        pod("x", "feed", 6, 1),
    ];
    let (plan, _) = fleet.plan(&pods);
    assert_eq!(
        rates(&plan.workloads[&workload("chat")].raise),
        [("a", 5), ("b", 5)]
    );
    assert_eq!(rates(&plan.workloads[&workload("feed")].raise), [("x", 6)]);
}

#[test]
fn the_smallest_budget_a_pod_gives_holds() {
    let mut fleet = Fleet::default();
    let (plan, _) = fleet.plan(&[pod("a", "chat", 10, 1), pod("b", "chat", 4, 2)]);
    assert_eq!(
        rates(&plan.workloads[&workload("chat")].raise),
        [("a", 2), ("b", 2)]
    );
}

#[test]
fn a_pod_that_does_not_answer_is_given_up_and_its_share_freed() {
    let mut fleet = Fleet::default();
    let (a, b) = (pod("a", "chat", 10, 1), pod("b", "chat", 10, 2));
    let mut unreachable = None;
    for _ in 0..GIVE_UP_AFTER {
        let (plan, _) = fleet.plan(&[a.clone(), b.clone()]);
        let w = &plan.workloads[&workload("chat")];
        let now = Instant::now();
        for call in &w.raise {
            let answer = if call.pod == a.pod {
                Err("connection refused".to_owned())
            } else {
                Ok(30)
            };
            if let Some(r) = fleet.paced(call, answer, now)
                && matches!(r.event, DrainEvent::Unreachable { .. })
            {
                unreachable = Some(r);
            }
        }
    }
    let report = unreachable.expect("given up after the last failure");
    assert_eq!(report.pod, a.pod);
    let (plan, _) = fleet.plan(&[a, b]);
    assert_eq!(rates(&plan.workloads[&workload("chat")].raise), [("b", 10)]);
}

#[test]
fn a_pod_gone_with_clients_left_is_reported() {
    let mut fleet = Fleet::default();
    let a = pod("a", "chat", 10, 1);
    let (plan, _) = fleet.plan(std::slice::from_ref(&a));
    answer_all(&mut fleet, &plan, 40);
    fleet.polled(&a.pod, Ok(12), Instant::now());
    assert_eq!(fleet.progress()[&workload("chat")], (1, 12));
    let (plan, reports) = fleet.plan(&[]);
    assert!(plan.workloads.is_empty() && plan.poll.is_empty());
    assert!(matches!(
        reports[..],
        [Report {
            event: DrainEvent::Gone {
                left: 12,
                connections: 40
            },
            ..
        }]
    ));
    assert!(fleet.progress().is_empty());
    assert!(!fleet.busy());
}

#[test]
fn a_drained_pod_that_goes_away_is_not_reported_again() {
    let mut fleet = Fleet::default();
    let a = pod("a", "chat", 10, 1);
    let (plan, _) = fleet.plan(std::slice::from_ref(&a));
    answer_all(&mut fleet, &plan, 0);
    let report = fleet.polled(&a.pod, Ok(0), Instant::now()).unwrap();
    assert!(matches!(report.event, DrainEvent::Drained { .. }));
    assert!(!fleet.busy());
    let (_, reports) = fleet.plan(&[]);
    assert!(reports.is_empty());
}

fn k8s_pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn terminating(owner: serde_json::Value, sidecar_state: serde_json::Value) -> Pod {
    k8s_pod(json!({
        "metadata": {
            "name": "chat-7d9f8c-x2x", "namespace": "prod", "uid": "u1",
            "deletionTimestamp": "2026-12-06T10:00:00Z",
            "labels": {"pod-template-hash": "7d9f8c"},
            "annotations": {
                "ringway.dev/sidecar": "ws",
                "ringway.dev/sidecar-max-closes-per-second": "40"
            },
            "ownerReferences": [owner]
        },
        "status": {
            "podIP": "10.1.2.3",
            "initContainerStatuses": [{
                "name": "ringway-sidecar", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": sidecar_state
            }]
        }
    }))
}

fn owner(kind: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "o", "controller": true})
}

#[test]
fn a_terminating_pod_with_a_running_sidecar_drains() {
    let running = json!({"running": {}});
    let pod = terminating(owner("ReplicaSet", "chat-7d9f8c"), running);
    let draining = pods::draining(&pod, 15091).unwrap();
    assert_eq!(draining.workload, workload("chat"));
    assert_eq!(draining.address, "10.1.2.3:15091");
    assert_eq!(draining.budget, 40);
    assert_eq!(draining.pod.name, "chat-7d9f8c-x2x");
}

#[test]
fn pods_that_have_nothing_to_pace_are_left_out() {
    let stopped = json!({"terminated": {"exitCode": 0}});
    let pod = terminating(owner("ReplicaSet", "chat-7d9f8c"), stopped);
    assert_eq!(pods::draining(&pod, 15091), None);
    let mut alive = terminating(owner("ReplicaSet", "chat-7d9f8c"), json!({"running": {}}));
    alive.metadata.deletion_timestamp = None;
    assert_eq!(pods::draining(&alive, 15091), None);
}

#[test]
fn the_workload_is_the_owner_a_person_knows() {
    let running = json!({"running": {}});
    let of = |kind, name| pods::workload(&terminating(owner(kind, name), running.clone()));
    assert_eq!(of("ReplicaSet", "chat-7d9f8c"), "deployment/chat");
    assert_eq!(of("ReplicaSet", "chat"), "replicaset/chat");
    assert_eq!(of("StatefulSet", "chat"), "statefulset/chat");
    assert_eq!(of("DaemonSet", "agent"), "daemonset/agent");
    let mut bare = terminating(owner("ReplicaSet", "x"), running);
    bare.metadata.owner_references = None;
    assert_eq!(pods::workload(&bare), "pod/chat-7d9f8c-x2x");
}

/// Records the calls; pods named in `refuse` do not answer.
#[derive(Default)]
struct FakeDial {
    calls: std::sync::Mutex<Vec<(String, Option<u32>)>>,
    refuse: Vec<String>,
}

impl FakeDial {
    fn answer(&self, address: &str, rate: Option<u32>) -> Result<u64, String> {
        self.calls.lock().unwrap().push((address.to_owned(), rate));
        if self.refuse.iter().any(|r| address.starts_with(r.as_str())) {
            Err("connection refused".into())
        } else {
            Ok(9)
        }
    }
}

impl pace::Dial for FakeDial {
    async fn drain(&self, _: &str, address: &str, rate: u32) -> Result<u64, String> {
        self.answer(address, Some(rate))
    }
    async fn status(&self, _: &str, address: &str) -> Result<u64, String> {
        self.answer(address, None)
    }
}

#[tokio::test]
async fn a_round_lowers_before_it_raises_and_polls_the_rest() {
    let mut fleet = Fleet::default();
    let dial = FakeDial::default();
    let (a, b) = (pod("a", "chat", 10, 1), pod("b", "chat", 10, 2));
    let ask = pace::Progress::Ask;
    pace::round(&mut fleet, std::slice::from_ref(&a), &dial, ask).await;
    pace::round(&mut fleet, &[a.clone(), b.clone()], &dial, ask).await;
    pace::round(
        &mut fleet,
        &[a.clone(), b.clone()],
        &dial,
        pace::Progress::Skip,
    )
    .await;
    pace::round(&mut fleet, &[a, b], &dial, ask).await;
    let calls = dial.calls.lock().unwrap().clone();
    let expected = [
        ("a:15091", Some(10)),
        ("a:15091", Some(5)),
        ("b:15091", Some(5)),
        ("a:15091", None),
        ("b:15091", None),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(a, r)| ((*a).to_owned(), *r))
        .collect();
    assert_eq!(calls, expected);
}

#[tokio::test]
async fn a_share_that_could_not_be_lowered_holds_back_the_raise() {
    let mut fleet = Fleet::default();
    let (a, b) = (pod("a", "chat", 10, 1), pod("b", "chat", 10, 2));
    let ask = pace::Progress::Ask;
    pace::round(
        &mut fleet,
        std::slice::from_ref(&a),
        &FakeDial::default(),
        ask,
    )
    .await;
    let refusing = FakeDial {
        refuse: vec!["a:".into()],
        ..FakeDial::default()
    };
    pace::round(&mut fleet, &[a, b], &refusing, ask).await;
    let calls = refusing.calls.lock().unwrap().clone();
    assert_eq!(calls, [("a:15091".to_owned(), Some(5))]);
}
