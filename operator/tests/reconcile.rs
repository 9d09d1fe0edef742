//! The reconciler against a fake API server (kube's tower-test mock) and a
//! fake control channel: what it applies, pushes and reports for creation,
//! rolling updates, canaries, bad annotations and missing backends.

mod support;

use ringway_control::proto::Version;
use serde_json::{Value, json};
use support::{IMAGE, World};

fn sts(w: &World, name: &str) -> Value {
    w.api.get("statefulsets", name).unwrap_or(Value::Null)
}

fn replicas(w: &World, name: &str) -> i64 {
    sts(w, name)["spec"]["replicas"].as_i64().unwrap_or(-1)
}

fn partition(w: &World, name: &str) -> i64 {
    sts(w, name)["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0)
}

fn image(w: &World, name: &str) -> String {
    sts(w, name)["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn shard_ids(snapshot: &ringway_control::proto::Snapshot, version: Version) -> Vec<String> {
    snapshot
        .versions
        .iter()
        .filter(|v| v.version == version as i32)
        .flat_map(|v| v.shards.iter().map(|s| s.id.clone()))
        .collect()
}

fn set_budget_percent(w: &World, percent: u8) {
    w.edit(|gw| gw["spec"]["disruptionBudget"] = json!({"maxDisruptedPercent": percent}));
}

/// Reconciles (and lets the pods follow) until the StatefulSet `name` has
/// no replicas; returns the replicas after each reconcile.
async fn scaled_down_one_by_one(w: &World, name: &str) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.len() < 6 && seen.last() != Some(&0) {
        w.reconcile().await.expect("a reconcile");
        w.settle();
        seen.push(replicas(w, name));
    }
    seen
}

/// The backend's EndpointSlice keeps one of its endpoints.
fn leave_one_endpoint(w: &World) {
    w.api.put("endpointslices", json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "chat-backend-x1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "chat-backend"}},
        "addressType": "IPv4", "ports": [{"name": "ws", "port": 8080}],
        "endpoints": [{"addresses": ["10.1.0.1"]}]}));
}

/// A gateway at rest: 3 shards ready on the latest snapshot.
async fn steady(annotations: Value) -> World {
    let w = World::new(annotations, 3);
    w.run(3).await;
    assert_eq!(w.condition("Ready")["status"], "True", "{:#}", w.status());
    w
}

#[tokio::test]
async fn create_applies_every_child_and_reports_not_ready_until_pods_run() {
    let w = World::new(Value::Null, 3);
    w.reconcile().await.unwrap();

    for secret in ["chat-control", "chat-control-ca"] {
        let s = w
            .api
            .get("secrets", secret)
            .unwrap_or_else(|| panic!("{secret}"));
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "gw-uid-1");
    }
    let pod_secret = w.api.get("secrets", "chat-control").unwrap();
    for key in ["ca.crt", "tls.crt", "tls.key", "token"] {
        assert!(pod_secret["data"][key].is_string(), "{key}");
    }
    assert!(
        pod_secret["data"]["ca.key"].is_null(),
        "the pods must not get the CA key"
    );
    assert_eq!(replicas(&w, "chat-a"), 3);
    assert_eq!(image(&w, "chat-a"), IMAGE);
    assert!(
        w.api.get("statefulsets", "chat-b").is_none(),
        "no canary slot without a canary"
    );
    assert!(w.api.get("configmaps", "chat-a").is_some());
    assert_eq!(
        w.api.get("services", "chat-peer").unwrap()["spec"]["clusterIP"],
        "None"
    );
    assert!(w.api.get("services", "chat").is_some());
    assert!(w.api.get("poddisruptionbudgets", "chat").is_some());

    let status = w.status();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["stable"]["slot"], "A");
    assert_eq!(status["stable"]["image"], IMAGE);
    assert_eq!(w.condition("Ready")["status"], "False");
    assert_eq!(w.condition("Ready")["reason"], "ShardsNotReady");
    assert_eq!(w.condition("Degraded")["status"], "False");
    assert!(
        w.steer.pushed().is_empty(),
        "no pod runs yet: nothing to push"
    );

    // The pods start; the next reconcile steers them.
    w.settle();
    w.reconcile().await.unwrap();
    let (targets, snapshot) = w.steer.pushed().last().cloned().unwrap();
    assert_eq!(
        targets,
        vec!["10.0.1.0:7443", "10.0.1.1:7443", "10.0.1.2:7443"]
    );
    assert_eq!(
        shard_ids(&snapshot, Version::Stable),
        vec!["chat-a-0", "chat-a-1", "chat-a-2"]
    );
    assert_eq!(snapshot.versions[0].shards[1].peer_address, "10.0.1.1:7000");
    assert_eq!(snapshot.canary_basis_points, 0);
    let backends: Vec<&str> = snapshot.versions[0].backends[0]
        .backends
        .iter()
        .map(|b| b.address.as_str())
        .collect();
    assert_eq!(
        backends,
        vec!["10.1.0.1:8080", "10.1.0.2:8080"],
        "ready endpoints only, at the target port"
    );
    assert_eq!(
        snapshot.drain.unwrap().max_closes_per_second,
        333,
        "1000/s shared by 3 pods"
    );
    assert_eq!(snapshot.gateway, "prod/chat");
    assert_eq!(w.condition("Ready")["status"], "True", "{:#}", w.status());
    assert_eq!(w.status()["shardsReady"], 3);
}

#[tokio::test]
async fn a_no_op_reconcile_pushes_nothing_and_writes_nothing() {
    let w = steady(Value::Null).await;
    let pushes = w.steer.pushed().len();
    let epoch = w.status()["epoch"].clone();
    w.api.clear_log();
    w.reconcile().await.unwrap();
    assert_eq!(
        w.steer.pushed().len(),
        pushes,
        "unchanged inputs: no new snapshot"
    );
    assert_eq!(w.status()["epoch"], epoch);
    let status_writes = w
        .api
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "PATCH" && p.ends_with("/status"))
        .count();
    assert_eq!(status_writes, 0, "unchanged status: not written");
}

#[tokio::test]
async fn the_epoch_is_persisted_before_the_snapshot_is_sent_and_only_grows() {
    let w = steady(Value::Null).await;
    // Every push went out after its epoch was in the status.
    let pushed: Vec<i64> = w
        .steer
        .pushed()
        .iter()
        .map(|(_, s)| s.epoch as i64)
        .collect();
    assert_eq!(*w.steer.epoch_at_push.lock().unwrap(), pushed);
    // A backend endpoint goes away: a new snapshot with a higher epoch.
    leave_one_endpoint(&w);
    let before = *pushed.last().unwrap();
    w.reconcile().await.unwrap();
    let snapshot = w.last_snapshot();
    assert_eq!(snapshot.epoch as i64, before + 1);
    assert_eq!(snapshot.versions[0].backends[0].backends.len(), 1);
    assert_eq!(w.status()["epoch"], before + 1);
}

#[tokio::test]
async fn status_is_server_side_applied_with_the_whole_picture() {
    let w = steady(Value::Null).await;
    w.connections_per_pod(40);
    w.api.clear_log();
    w.edit(|gw| gw["spec"]["connections"] = json!({"idleTimeoutSeconds": 900}));
    w.reconcile().await.unwrap();
    let (_, _, body) = w
        .api
        .requests()
        .into_iter()
        .rev()
        .find(|(m, p, b)| m == "PATCH" && p.ends_with("/status") && b.get("kind").is_some())
        .expect("a status apply");
    assert_eq!(body["apiVersion"], "ringway.dev/v1alpha1");
    assert_eq!(body["kind"], "WebSocketGateway");
    let s = &body["status"];
    assert_eq!(s["observedGeneration"], 2);
    assert_eq!(s["shardsReady"], 3);
    assert_eq!(s["stable"]["shardsReady"], 3);
    assert!(s["epoch"].as_i64().unwrap() >= 2);
    let types: Vec<&str> = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["Ready", "Progressing", "Degraded", "Drained"]);
    for c in s["conditions"].as_array().unwrap() {
        assert!(
            !c["reason"].as_str().unwrap().is_empty() && !c["message"].as_str().unwrap().is_empty()
        );
        assert_eq!(c["observedGeneration"], 2);
    }
    assert_eq!(
        w.last_snapshot().limits.unwrap().idle_timeout_ms,
        900_000,
        "limits reach pods without a restart"
    );
    assert_eq!(partition(&w, "chat-a"), 0, "a limit change restarts no pod");
}

/// Without the canary annotation or steps, a new version still runs
/// beside the old one and takes its keys, straight to 100% within the
/// budget: no pod restarts in place, so no client is closed twice.
#[tokio::test]
async fn a_spec_change_without_the_canary_annotation_runs_beside_the_old_version() {
    let w = steady(Value::Null).await;
    set_budget_percent(&w, 100);
    w.connections_per_pod(10);
    w.reconcile().await.unwrap();
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    // Once their keys have moved, the old pods hold nothing.
    w.connections_per_pod(0);
    let mut weights = Vec::new();
    for _ in 0..12 {
        w.settle();
        w.reconcile().await.unwrap();
        assert_eq!(partition(&w, "chat-a"), 0, "no pod restarts in place");
        let weight = w.status()["canary"]["weight"].as_i64();
        if let Some(weight) = weight
            && weights.last() != Some(&weight)
        {
            weights.push(weight);
        }
        if w.status()["canary"].is_null() && w.status()["stable"]["slot"] == "B" {
            break;
        }
    }
    assert_eq!(weights, [0, 100], "no hold between");
    assert_eq!(w.status()["stable"]["image"], "ringway/dataplane:2");
    assert_eq!(replicas(&w, "chat-a"), 0);
    let reasons: Vec<String> = w.api.events().into_iter().map(|(r, _)| r).collect();
    for reason in ["CanaryStarted", "CanaryPromoting", "CanaryPromoted"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
    w.settle();
    w.reconcile().await.unwrap();
    assert_eq!(w.condition("Progressing")["status"], "False");
}

/// The limit of message sizes of `version` in `snapshot`.
fn max_message(snapshot: &ringway_control::proto::Snapshot, version: Version) -> Option<u32> {
    snapshot
        .versions
        .iter()
        .find(|v| v.version == version as i32)
        .and_then(|v| v.limits.as_ref())
        .map(|l| l.max_message_bytes)
}

/// A change of limits is a new version: without the canary annotation it
/// reaches every pod in the next snapshot and restarts none; with it, it
/// runs as a canary, each version with its own limits.
#[tokio::test]
async fn a_change_of_limits_is_a_version_of_its_own() {
    let w = steady(Value::Null).await;
    let template = sts(&w, "chat-a")["spec"]["template"].clone();
    w.edit(|gw| gw["spec"]["connections"] = json!({"maxMessageBytes": 1024}));
    w.run(2).await;
    assert_eq!(
        sts(&w, "chat-a")["spec"]["template"],
        template,
        "no pod restarts"
    );
    assert_eq!(partition(&w, "chat-a"), 0);
    assert_eq!(max_message(&w.last_snapshot(), Version::Stable), Some(1024));
    assert_eq!(w.condition("Progressing")["status"], "False");

    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "10"})).await;
    set_budget_percent(&w, 100);
    let before = max_message(&w.last_snapshot(), Version::Stable);
    assert!(before.is_some_and(|b| b > 1024), "{before:?}");
    w.edit(|gw| gw["spec"]["connections"] = json!({"maxMessageBytes": 1024}));
    w.run(4).await;
    assert_eq!(w.status()["canary"]["weight"], 10, "{:#}", w.status());
    let snapshot = w.last_snapshot();
    assert_eq!(max_message(&snapshot, Version::Stable), before);
    assert_eq!(max_message(&snapshot, Version::Canary), Some(1024));
}

#[tokio::test]
async fn a_rolling_update_waits_for_the_disruption_budget() {
    let w = steady(Value::Null).await;
    // 10% of the live connections per window.
    w.connections_per_pod(100);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    for _ in 0..4 {
        w.settle();
        w.connections_per_pod(100);
        w.reconcile().await.unwrap();
    }
    assert_eq!(w.status()["canary"]["weight"], 10, "{:#}", w.status());
    assert_eq!(w.status()["canary"]["targetWeight"], 100);
    let progressing = w.condition("Progressing");
    assert_eq!(progressing["reason"], "WaitingForBudget", "{progressing:#}");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .contains("disruption budget")
    );
}

#[tokio::test]
async fn canary_starts_steps_and_promotes_by_annotation() {
    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "10"})).await;
    set_budget_percent(&w, 100);
    w.connections_per_pod(50);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.reconcile().await.unwrap();
    // The canary starts in the free slot; stable is untouched.
    assert_eq!(replicas(&w, "chat-b"), 3);
    assert_eq!(image(&w, "chat-b"), "ringway/dataplane:2");
    assert_eq!(image(&w, "chat-a"), IMAGE);
    assert_eq!(partition(&w, "chat-a"), 0);
    assert_eq!(w.status()["canary"]["phase"], "Starting");
    assert_eq!(w.status()["canary"]["weight"], 0);
    assert!(
        w.api.events().iter().any(|(r, _)| r == "CanaryStarted"),
        "{:?}",
        w.api.events()
    );

    w.settle();
    w.connections_per_pod(50);
    w.reconcile().await.unwrap();
    // The canary's pods are ready: before any key moves, the stable pods
    // leave the client Service (they answer not ready, keep their keys).
    let snapshot = w.last_snapshot();
    assert_eq!(snapshot.canary_basis_points, 0);
    assert_eq!(snapshot.retiring, ["chat-a-0", "chat-a-1", "chat-a-2"]);
    assert!(
        w.condition("Progressing")["message"]
            .as_str()
            .unwrap()
            .contains("the stable pods leave the client Service"),
        "{:#}",
        w.condition("Progressing")
    );
    w.settle();
    w.connections_per_pod(50);
    w.reconcile().await.unwrap();
    let snapshot = w.last_snapshot();
    assert_eq!(snapshot.canary_basis_points, 1000);
    assert_eq!(
        snapshot.retiring,
        ["chat-a-0", "chat-a-1", "chat-a-2"],
        "out of the Service, in the ring"
    );
    assert_eq!(
        shard_ids(&snapshot, Version::Canary),
        vec!["chat-b-0", "chat-b-1", "chat-b-2"]
    );
    assert_eq!(
        shard_ids(&snapshot, Version::Stable),
        vec!["chat-a-0", "chat-a-1", "chat-a-2"]
    );
    assert_eq!(w.status()["canary"]["phase"], "Shifting");
    assert_eq!(w.status()["canary"]["weight"], 10);
    assert_eq!(w.status()["canary"]["slot"], "B");
    assert_eq!(w.status()["canary"]["image"], "ringway/dataplane:2");
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["phase"], "Holding");
    // The Ready message counts what the READY column counts: pods, of
    // both versions.
    assert_eq!(w.status()["shardsReady"], 6);
    assert_eq!(
        w.condition("Ready")["message"],
        "6 of 6 pods ready (stable 3 of 3, canary 3 of 3) on the latest snapshot"
    );

    // Each step is an event of its own, not a repeat of the first.
    w.annotate("ringway.dev/canary-weight", Some("20"));
    w.reconcile().await.unwrap();
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["weight"], 20);
    assert_eq!(w.status()["canary"]["phase"], "Holding");
    let notes = |reason: &str| -> Vec<String> {
        w.api
            .events()
            .into_iter()
            .filter(|(r, _)| r == reason)
            .map(|(_, n)| n)
            .collect()
    };
    let steps = notes("CanaryWeightChanged");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|n| n.starts_with("canary weight 0% → 10%"))
    );
    assert!(
        steps
            .iter()
            .any(|n| n.starts_with("canary weight 10% → 20%"))
    );
    let mut holds = notes("CanaryPhaseChanged");
    holds.sort();
    assert_eq!(holds, ["canary Holding at 10%", "canary Holding at 20%"]);

    w.annotate("ringway.dev/canary-weight", Some("100"));
    w.reconcile().await.unwrap();
    assert_eq!(w.last_snapshot().canary_basis_points, 10_000);
    // Promotion: the canary's slot is stable; the old pods keep their
    // stragglers until they drain.
    w.reconcile().await.unwrap();
    assert_eq!(
        w.status()["canary"]["phase"],
        "Promoting",
        "{:#}",
        w.status()
    );
    assert_eq!(w.status()["stable"]["slot"], "B");
    let snapshot = w.last_snapshot();
    assert_eq!(
        shard_ids(&snapshot, Version::Stable),
        vec!["chat-b-0", "chat-b-1", "chat-b-2"]
    );
    assert!(shard_ids(&snapshot, Version::Canary).is_empty());
    assert_eq!(snapshot.canary_basis_points, 0);
    assert_eq!(
        snapshot.retiring,
        ["chat-a-0", "chat-a-1", "chat-a-2"],
        "the old pods answer not ready: no new client enters through them"
    );
    assert_eq!(
        replicas(&w, "chat-a"),
        3,
        "old pods wait for their connections to drain"
    );
    let drained = w.condition("Drained");
    assert_eq!(
        (drained["status"].as_str(), drained["reason"].as_str()),
        (Some("False"), Some("VersionDraining")),
        "a hook waiting on Drained waits: {drained:#}"
    );
    // The old version's pods are empty: they stop one at a time (each
    // within the budget, for the clients it relays).
    w.connections_per_pod(0);
    w.reconcile().await.unwrap();
    let drained = w.condition("Drained");
    assert_eq!(
        (drained["status"].as_str(), drained["reason"].as_str()),
        (Some("True"), Some("VersionDrained")),
        "drained while its pods still stop: {drained:#}"
    );
    assert_eq!(replicas(&w, "chat-a"), 2);
    assert_eq!(scaled_down_one_by_one(&w, "chat-a").await, [1, 0]);
    assert!(w.status()["canary"].is_null());
    assert_eq!(w.status()["stable"]["image"], "ringway/dataplane:2");
    assert!(w.api.events().iter().any(|(r, _)| r == "CanaryPromoted"));
}

/// A step whose push some pod did not acknowledge is planned again; it is
/// one event, and a repeat of the same note is a series on that event.
#[tokio::test]
async fn a_step_retried_until_acknowledged_is_one_event() {
    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "10"})).await;
    set_budget_percent(&w, 100);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.reconcile().await.unwrap();
    w.settle();
    let canary_pod = w.api.get("pods", "chat-b-0").unwrap();
    let address = format!("{}:7443", canary_pod["status"]["podIP"].as_str().unwrap());
    w.steer.down.lock().unwrap().push(address);
    for _ in 0..3 {
        w.reconcile().await.unwrap();
        w.settle();
    }
    assert_eq!(w.status()["canary"]["weight"], 0, "not every pod runs 10%");
    w.steer.down.lock().unwrap().clear();
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["weight"], 10);
    let steps: Vec<Value> = w
        .api
        .list("events")
        .into_iter()
        .filter(|e| e["reason"] == "CanaryWeightChanged")
        .collect();
    assert_eq!(steps.len(), 1, "{steps:#?}");
    assert!(steps[0]["series"].is_null(), "{:#}", steps[0]);
}

#[tokio::test]
async fn a_canary_weight_step_is_cut_to_the_disruption_budget() {
    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "50"})).await;
    w.connections_per_pod(100);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.reconcile().await.unwrap();
    w.settle();
    w.connections_per_pod(100);
    w.reconcile().await.unwrap();
    w.settle();
    w.reconcile().await.unwrap();
    assert_eq!(
        w.status()["canary"]["weight"],
        10,
        "10% of the connections per window"
    );
    assert_eq!(w.status()["canary"]["targetWeight"], 50);
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["phase"], "WaitingForBudget");
    assert_eq!(w.condition("Progressing")["reason"], "WaitingForBudget");
    assert_eq!(
        w.last_snapshot().canary_basis_points,
        1000,
        "the waiting step was not pushed"
    );
}

/// A gateway whose canary of image 2 holds 20% of the keys, with a budget
/// that allows any step.
async fn canary_holding_20() -> World {
    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "20"})).await;
    set_budget_percent(&w, 100);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.run(4).await;
    assert_eq!(w.status()["canary"]["weight"], 20);
    w
}

/// A canary pod that cannot be asked what it holds is waited for, by
/// name, not taken as empty; once it answers, the abort goes on.
#[tokio::test]
async fn abort_waits_to_hear_from_a_canary_pod_that_does_not_answer() {
    let w = canary_holding_20().await;
    w.annotate("ringway.dev/canary-abort", Some("true"));
    w.connections_per_pod(0);
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["weight"], 20, "stable returns first");
    w.settle();
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["weight"], 0);
    w.steer.down.lock().unwrap().push("10.0.2.1:7443".into());
    for _ in 0..3 {
        w.reconcile().await.unwrap();
        w.settle();
    }
    assert_eq!(replicas(&w, "chat-b"), 3, "no canary pod stops on a guess");
    assert_eq!(w.status()["canary"]["phase"], "Aborting");
    assert_eq!(
        w.condition("Progressing")["message"],
        "aborting: waiting to hear how many connections pod chat-b-1 holds (its status polls failed)"
    );
    assert_eq!(
        w.condition("Drained")["message"],
        "the leaving version (slot B, image ringway/dataplane:2): waiting to hear how many connections pod chat-b-1 holds (its status polls failed)",
        "unknown is not drained"
    );
    w.steer.down.lock().unwrap().clear();
    assert_eq!(scaled_down_one_by_one(&w, "chat-b").await, [2, 1, 0]);
    assert!(w.api.events().iter().any(|(r, _)| r == "CanaryAborted"));
}

#[tokio::test]
async fn abort_drains_the_canary_back_and_removes_it() {
    let w = canary_holding_20().await;
    w.annotate("ringway.dev/canary-abort", Some("true"));
    w.connections_per_pod(5);
    w.reconcile().await.unwrap();
    assert_eq!(w.status()["canary"]["phase"], "Aborting");
    // Before a key moves back, the canary's pods leave the client Service
    // and stable's return to it.
    assert_eq!(w.last_snapshot().canary_basis_points, 2000);
    assert_eq!(
        w.last_snapshot().retiring,
        ["chat-b-0", "chat-b-1", "chat-b-2"]
    );
    w.settle();
    w.reconcile().await.unwrap();
    assert_eq!(
        w.last_snapshot().canary_basis_points,
        0,
        "every key goes back to stable"
    );
    assert!(w.api.events().iter().any(|(r, _)| r == "CanaryAborting"));
    w.reconcile().await.unwrap();
    assert_eq!(replicas(&w, "chat-b"), 3, "its pods still hold connections");
    w.connections_per_pod(0);
    assert_eq!(scaled_down_one_by_one(&w, "chat-b").await, [2, 1, 0]);
    assert!(w.status()["canary"].is_null());
    assert_eq!(w.status()["stable"]["image"], IMAGE);
    assert!(w.api.events().iter().any(|(r, _)| r == "CanaryAborted"));
    // The spec still names the aborted image: nothing restarts until the
    // person reverts it or removes the abort annotation.
    w.settle();
    w.reconcile().await.unwrap();
    assert_eq!(replicas(&w, "chat-b"), 0);
    assert!(
        w.condition("Progressing")["message"]
            .as_str()
            .unwrap()
            .contains("revert the spec")
    );
}

#[tokio::test]
async fn bad_annotations_are_reported_and_change_nothing() {
    let w =
        steady(json!({"ringway.dev/rollout": "canary", "ringway.dev/canary-weight": "10"})).await;
    set_budget_percent(&w, 100);
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.run(3).await;
    assert_eq!(w.status()["canary"]["weight"], 10);
    for bad in ["abc", "150"] {
        let pushes = w.steer.pushed().len();
        w.annotate("ringway.dev/canary-weight", Some(bad));
        w.reconcile().await.unwrap();
        let degraded = w.condition("Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "InvalidAnnotation");
        assert!(
            degraded["message"].as_str().unwrap().contains(bad),
            "{degraded:#}"
        );
        assert_eq!(
            w.status()["canary"]["weight"],
            10,
            "the canary stays where it was"
        );
        let p = w.steer.pushed();
        assert_eq!(
            p.len(),
            pushes,
            "nothing new is sent: {:?}",
            &p[pushes.saturating_sub(1)..]
        );
        // Repeats of one reason become a series of one Event (kube's recorder).
        assert!(
            w.api
                .events()
                .iter()
                .any(|(r, n)| r == "InvalidAnnotation" && n.contains("canary-weight")),
            "{:?}",
            w.api.events()
        );
    }
}

#[tokio::test]
async fn abort_without_a_canary_is_an_invalid_annotation() {
    let w = steady(json!({"ringway.dev/canary-abort": "true"})).await;
    let degraded = w.condition("Degraded");
    assert_eq!(degraded["reason"], "InvalidAnnotation");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("no canary runs")
    );
    assert_eq!(
        w.condition("Ready")["status"],
        "True",
        "the gateway keeps running"
    );
}

#[tokio::test]
async fn a_missing_backend_service_is_degraded_not_an_error() {
    let w = steady(Value::Null).await;
    w.api.remove("services", "chat-backend");
    w.reconcile().await.unwrap();
    let degraded = w.condition("Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "BackendUnavailable");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("chat-backend"),
        "{degraded:#}"
    );
    assert!(
        w.last_snapshot().versions[0].backends[0]
            .backends
            .is_empty()
    );
    assert!(
        w.api
            .events()
            .iter()
            .any(|(r, _)| r == "BackendUnavailable")
    );
}

#[tokio::test]
async fn pods_that_do_not_acknowledge_are_retried_and_reported() {
    let w = World::new(Value::Null, 3);
    w.reconcile().await.unwrap();
    w.settle();
    w.steer.down.lock().unwrap().push("10.0.1.2:7443".into());
    let action = w.reconcile().await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(5))
    );
    let degraded = w.condition("Degraded");
    assert_eq!(degraded["reason"], "SnapshotNotAcknowledged");
    assert!(
        degraded["message"].as_str().unwrap().contains("chat-a-2"),
        "{degraded:#}"
    );
    // It comes back: only it gets the same epoch again.
    w.steer.down.lock().unwrap().clear();
    let epoch = w.last_snapshot().epoch;
    w.reconcile().await.unwrap();
    let (targets, snapshot) = w.steer.pushed().last().cloned().unwrap();
    assert_eq!(targets, vec!["10.0.1.2:7443"]);
    assert_eq!(snapshot.epoch, epoch);
    assert_eq!(w.condition("Degraded")["status"], "False");
}

#[tokio::test]
async fn a_gateway_without_a_uid_is_refused_as_malformed() {
    let w = World::new(Value::Null, 2);
    let mut gw = w.api.gateway("chat");
    gw.metadata.uid = None;
    let err = ringway_operator::reconcile::reconcile(std::sync::Arc::new(gw), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "malformed");
}

#[tokio::test]
async fn a_network_policy_is_applied_when_enabled_and_deleted_when_disabled() {
    let w = steady(Value::Null).await;
    assert!(
        w.api.get("networkpolicies", "chat").is_none(),
        "off by default"
    );

    w.edit(|gw| {
        gw["spec"]["networkPolicy"] = json!({"enabled": true, "metricsFrom": [
            {"namespaceSelector": {"kubernetes.io/metadata.name": "monitoring"}}]})
    });
    let pushes = w.steer.pushed().len();
    w.reconcile().await.unwrap();
    let policy = w.api.get("networkpolicies", "chat").expect("applied");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "gw-uid-1");
    assert_eq!(policy["metadata"]["labels"]["ringway.dev/gateway"], "chat");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"],
        json!({"matchLabels": {"ringway.dev/gateway": "chat"}})
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    let from = |port: &str| {
        spec["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ports"][0]["port"] == port)
            .map(|r| r["from"].clone())
            .unwrap_or_else(|| panic!("no rule for {port}: {spec:#}"))
    };
    assert_eq!(from("client"), Value::Null, "clients from anywhere");
    assert_eq!(
        from("peer"),
        json!([{"podSelector": {"matchLabels": {"ringway.dev/gateway": "chat"}}}])
    );
    assert_eq!(
        from("control"),
        json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": support::OPERATOR_NS}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
        }])
    );
    assert_eq!(
        from("admin"),
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    assert_eq!(
        w.steer.pushed().len(),
        pushes,
        "the policy is no snapshot content"
    );
    assert_eq!(
        replicas(&w, "chat-a"),
        3,
        "and no revision: nothing restarts"
    );

    w.edit(|gw| gw["spec"]["networkPolicy"]["enabled"] = json!(false));
    w.reconcile().await.unwrap();
    assert!(
        w.api.get("networkpolicies", "chat").is_none(),
        "deleted when turned off"
    );
    // Nothing left to delete: one read, no delete.
    w.api.clear_log();
    w.reconcile().await.unwrap();
    let to_policies: Vec<_> = w
        .api
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p.contains("/networkpolicies"))
        .map(|(m, _, _)| m.to_string())
        .collect();
    assert_eq!(to_policies, vec!["GET"]);
}

#[tokio::test]
async fn a_network_policy_the_gateway_does_not_own_is_left_alone() {
    let w = steady(Value::Null).await;
    let theirs = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "chat", "namespace": "prod", "uid": "np-uid-9"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    w.api.put("networkpolicies", theirs.clone());
    w.reconcile().await.unwrap();
    assert_eq!(w.api.get("networkpolicies", "chat"), Some(theirs));
}

/// Pods and EndpointSlices are read from the watches' stores: a reconcile
/// lists nothing, and sees a change once the watch delivered it.
#[tokio::test]
async fn pods_and_endpoints_come_from_the_watches_not_from_lists() {
    let w = steady(Value::Null).await;
    w.api.clear_log();
    w.reconcile().await.unwrap();
    let lists: Vec<String> = w
        .api
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "GET" && (p.ends_with("/pods") || p.ends_with("/endpointslices")))
        .map(|(_, p, _)| p)
        .collect();
    assert!(lists.is_empty(), "listed again: {lists:?}");

    // An endpoint goes away; until the watch delivers it, the snapshot
    // stays as it is.
    leave_one_endpoint(&w);
    let pushes = w.steer.pushed().len();
    ringway_operator::reconcile::reconcile(
        std::sync::Arc::new(w.api.gateway("chat")),
        w.ctx.clone(),
    )
    .await
    .unwrap();
    assert_eq!(w.steer.pushed().len(), pushes, "the store has not seen it");
    w.reconcile().await.unwrap();
    assert_eq!(
        w.last_snapshot().versions[0].backends[0].backends.len(),
        1,
        "the watch delivered it"
    );
}
