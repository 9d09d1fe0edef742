//! The audit's decisions: which pods miss the sidecar, which workloads are
//! audited, and what each pass reports.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::Pod,
};
use serde_json::{Value, json};

use super::*;

const NS: &str = "prod";

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// A workload of `kind` whose template has `annotations` and whose
/// selector is `selector`.
fn spec(annotations: Value, selector: Value) -> Value {
    json!({
        "selector": selector,
        "template": {
            "metadata": {"labels": {"app": "chat"}, "annotations": annotations},
            "spec": {"containers": [{"name": "chat", "image": "chat"}]},
        },
    })
}

fn deployment(name: &str, annotations: Value, selector: Value) -> Deployment {
    from(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": spec(annotations, selector),
    }))
}

fn asks() -> Value {
    json!({SIDECAR: "ws"})
}

fn app() -> Value {
    json!({"matchLabels": {"app": "chat"}})
}

/// A pod labelled `app: chat`, annotated, in `phase`, with `init`
/// containers beside its `chat` container.
fn pod(name: &str, phase: &str, init: &[&str]) -> Value {
    let init: Vec<Value> = init
        .iter()
        .map(|n| json!({"name": n, "image": "x"}))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "chat"},
                     "annotations": asks()},
        "spec": {"initContainers": init, "containers": [{"name": "chat", "image": "chat"}]},
        "status": {"phase": phase},
    })
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn missing(workload: &Workload, pods: Vec<Value>) -> BTreeSet<String> {
    let pods: Vec<Pod> = pods.into_iter().map(from).collect();
    missing_pods(&workload.selector, &pods)
}

#[test]
fn finds_the_pods_that_run_without_the_sidecar() {
    let w = workload(&deployment("chat", asks(), app())).unwrap();
    let mut terminating = pod("chat-gone", "Running", &[]);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let mut not_annotated = pod("chat-old", "Running", &[]);
    not_annotated["metadata"]["annotations"] = json!({});
    let mut as_container = pod("chat-own", "Running", &[]);
    as_container["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": CONTAINER, "image": "x"}));
    let mut other_app = pod("other", "Running", &[]);
    other_app["metadata"]["labels"] = json!({"app": "other"});
    let pods = vec![
        pod("chat-injected", "Running", &["setup", CONTAINER]),
        pod("chat-missing", "Running", &["setup"]),
        pod("chat-pending", "Pending", &[]),
        pod("chat-done", "Succeeded", &[]),
        pod("chat-failed", "Failed", &[]),
        terminating,
        not_annotated,
        as_container,
        other_app,
    ];
    assert_eq!(missing(&w, pods), names(&["chat-missing", "chat-pending"]));
}

#[test]
fn a_workload_without_the_annotation_is_not_audited() {
    assert_eq!(workload(&deployment("chat", json!({}), app())), None);
    assert_eq!(workload(&deployment("chat", Value::Null, app())), None);
    let other = json!({"ringway.dev/sidecar-max-connections": "10"});
    assert_eq!(workload(&deployment("chat", other, app())), None);
}

#[test]
fn every_kind_is_named_as_kubectl_takes_it() {
    let object = |kind: &str| {
        json!({"apiVersion": "apps/v1", "kind": kind,
               "metadata": {"name": "chat", "namespace": NS}, "spec": spec(asks(), app())})
    };
    let keys = [
        workload(&from::<Deployment>(object("Deployment"))),
        workload(&from::<StatefulSet>(object("StatefulSet"))),
        workload(&from::<DaemonSet>(object("DaemonSet"))),
    ]
    .map(|w| w.unwrap().key.workload);
    assert_eq!(
        keys,
        ["deployment/chat", "statefulset/chat", "daemonset/chat"]
    );
    let w = workload(&deployment("chat", asks(), app())).unwrap();
    assert_eq!(
        (w.reference.kind.as_deref(), w.reference.uid.as_deref()),
        (Some("Deployment"), Some("uid-chat"))
    );
}

#[test]
fn match_expressions_select_as_the_api_server_does() {
    let selector = json!({
        "matchLabels": {"app": "chat"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    });
    let w = workload(&deployment("chat", asks(), selector)).unwrap();
    assert_eq!(
        w.selector.to_string(),
        "app=chat,tier in (edge,web),!canary"
    );
    let labelled = |name: &str, labels: Value| {
        let mut p = pod(name, "Running", &[]);
        p["metadata"]["labels"] = labels;
        p
    };
    let pods = vec![
        labelled("web", json!({"app": "chat", "tier": "web"})),
        labelled(
            "canary",
            json!({"app": "chat", "tier": "web", "canary": "1"}),
        ),
        labelled("no-tier", json!({"app": "chat"})),
        labelled("backend", json!({"app": "chat", "tier": "backend"})),
    ];
    assert_eq!(missing(&w, pods), names(&["web"]));
}

#[test]
fn a_selector_that_cannot_be_used_is_skipped() {
    let unknown =
        json!({"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]});
    assert_eq!(workload(&deployment("chat", asks(), unknown)), None);
    assert_eq!(workload(&deployment("chat", asks(), json!({}))), None);
}

fn finding(name: &str, missing: &[&str]) -> Finding {
    Finding {
        workload: workload(&deployment(name, asks(), app())).unwrap(),
        missing: names(missing),
    }
}

fn key(name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: NS.into(),
        workload: format!("deployment/{name}"),
    }
}

#[test]
fn every_annotated_workload_has_a_gauge_and_a_vanished_one_is_forgotten() {
    let mut audit = Audit::default();
    let first = audit.update(vec![finding("chat", &["chat-1"]), finding("echo", &[])]);
    assert_eq!(first.gauges, vec![(key("chat"), 1), (key("echo"), 0)]);
    assert!(first.vanished.is_empty());
    let second = audit.update(vec![finding("echo", &[])]);
    assert_eq!(second.gauges, vec![(key("echo"), 0)]);
    assert_eq!(second.vanished, vec![key("chat")]);
    assert!(audit.update(vec![]).vanished == vec![key("echo")]);
}

#[test]
fn a_warning_only_when_the_missing_pods_change() {
    let mut audit = Audit::default();
    let warned = |report: Report| report.warnings.len();
    assert_eq!(warned(audit.update(vec![finding("chat", &["chat-1"])])), 1);
    assert_eq!(warned(audit.update(vec![finding("chat", &["chat-1"])])), 0);
    assert_eq!(
        warned(audit.update(vec![finding("chat", &["chat-1", "chat-2"])])),
        1
    );
    assert_eq!(warned(audit.update(vec![finding("chat", &["chat-2"])])), 1);
    // Fixed: nothing to warn about; missing again: warned again.
    assert_eq!(warned(audit.update(vec![finding("chat", &[])])), 0);
    assert_eq!(warned(audit.update(vec![finding("chat", &["chat-3"])])), 1);
}

#[test]
fn the_warning_says_how_many_which_why_and_what_to_do() {
    let mut audit = Audit::default();
    let pods: Vec<String> = (1..=7).map(|i| format!("chat-{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let report = audit.update(vec![finding("chat", &pods)]);
    let warning = &report.warnings[0];
    assert_eq!(warning.regarding.name.as_deref(), Some("chat"));
    assert_eq!(
        warning.note,
        "7 pod(s) run without the ringway-sidecar sidecar (chat-1, chat-2, chat-3, chat-4, \
         chat-5 and 2 more): they were created while the sidecar injector did not answer, and \
         its failurePolicy Ignore let them start without it. Their clients are cut, not \
         drained, when they stop. Once the injector is up: kubectl rollout restart \
         deployment/chat -n prod"
    );
}
