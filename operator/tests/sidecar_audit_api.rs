//! The sidecar audit against kube's mock API server (tower-test), one
//! expected request at a time: a pass lists the three workload kinds of
//! each watched namespace (or of all), then the pods of each annotated
//! workload by its selector, and publishes a `SidecarMissing` warning
//! about a workload whose pods run without the sidecar; the next pass,
//! finding the same, lists again and publishes nothing. Every request must
//! be granted by `ringway_operator::rbac::SIDECAR_AUDIT` (the event by
//! `GATEWAYS`, as every event), and together they use every audit grant.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body, runtime::events::Reporter};
use ringway_dataplane_api::sidecar::CONTAINER;
use ringway_operator::{
    events::Events,
    metrics::Metrics,
    rbac,
    sidecar_audit::{Audit, run::Auditor},
};
use serde_json::{Value, json};
use support::{Handle, Triples};
use tokio::time::timeout;

const NS: &str = "prod";

/// The mock API server and what RBAC saw of every request.
struct Api {
    handle: Handle,
    used: Triples,
}

impl Api {
    /// Expects `GET path` (with `labelSelector`, if any, equal to
    /// `selector`) and answers a list of `items`.
    async fn expect_list(&mut self, path: &str, selector: Option<&str>, items: Vec<Value>) {
        let (request, reply) = self.next().await;
        // A space is `+` in a query (and a `+` is `%2B`).
        let query = support::decode(&request.uri().query().unwrap_or("").replace('+', " "));
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::GET, path),
            "unexpected request ({query})"
        );
        let sent = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("labelSelector="));
        assert_eq!(sent, selector, "{path}?{query}");
        self.authorize(&request, &query, rbac::SIDECAR_AUDIT);
        answer(
            reply,
            200,
            &json!({"kind": "List", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": "1"}, "items": items}),
        );
    }

    /// Expects the creation of an event in `prod` and returns it.
    async fn expect_event(&mut self) -> Value {
        let (request, reply) = self.next().await;
        let path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::POST, path.as_str()),
            "unexpected request"
        );
        self.authorize(&request, "", rbac::GATEWAYS);
        let event: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        answer(reply, 201, &event);
        event
    }

    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .expect("no request")
            .expect("the client is gone")
    }

    /// Fails unless `grants` allow the request; records what it used.
    fn authorize(&mut self, request: &Request<Body>, query: &str, grants: &[rbac::Grant]) {
        let seen = support::authorization(request.method(), request.uri().path(), query, false);
        let (group, resource, verb) = &seen;
        assert!(
            rbac::allows(grants, group, resource, verb),
            "{} {} needs `{verb}` on {resource}, which operator/src/rbac.rs does not grant",
            request.method(),
            request.uri().path()
        );
        self.used.insert(seen);
    }

    /// Fails if the client sent anything more before it was dropped.
    async fn expect_nothing_more(&mut self) {
        let more = timeout(Duration::from_millis(200), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = more {
            panic!(
                "an unexpected request: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

fn answer(reply: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: &Value) {
    reply.send_response(support::respond(StatusCode::from_u16(code).unwrap(), body));
}

fn start(namespaces: &[&str]) -> (Auditor, Api, Arc<Metrics>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let metrics = Arc::new(Metrics::new());
    let reporter = Reporter {
        controller: "ringway-operator".into(),
        instance: Some("operator-0".into()),
    };
    let auditor = Auditor {
        client: client.clone(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        metrics: Arc::clone(&metrics),
        events: Events::new(client, reporter),
    };
    let api = Api {
        handle,
        used: Triples::new(),
    };
    (auditor, api, metrics)
}

/// A workload of `kind` whose pod template asks for the sidecar when
/// `asks`.
fn workload(kind: &str, name: &str, asks: bool) -> Value {
    let annotations = if asks {
        json!({"ringway.dev/sidecar": "ws"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {
            "selector": {"matchLabels": {"app": name},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "web"}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
        },
    })
}

fn pod(name: &str, injected: bool) -> Value {
    let init: Vec<Value> = if injected {
        vec![json!({"name": CONTAINER, "image": "dataplane"})]
    } else {
        vec![]
    };
    json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "chat", "tier": "web"},
                     "annotations": {"ringway.dev/sidecar": "ws"}},
        "spec": {"initContainers": init, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"},
    })
}

const APPS: &str = "/apis/apps/v1/namespaces/prod";

/// One pass in `prod`: three lists of workloads (an annotated Deployment,
/// a StatefulSet that does not ask), then the Deployment's pods.
async fn lists(api: &mut Api) {
    api.expect_list(
        &format!("{APPS}/deployments"),
        None,
        vec![workload("Deployment", "chat", true)],
    )
    .await;
    api.expect_list(
        &format!("{APPS}/statefulsets"),
        None,
        vec![workload("StatefulSet", "db", false)],
    )
    .await;
    api.expect_list(&format!("{APPS}/daemonsets"), None, vec![])
        .await;
    api.expect_list(
        "/api/v1/namespaces/prod/pods",
        Some("app=chat,tier in (web)"),
        vec![pod("chat-1", true), pod("chat-2", false)],
    )
    .await;
}

#[tokio::test]
async fn a_pass_lists_what_is_granted_and_warns_once_per_change() {
    let (auditor, mut api, metrics) = start(&[NS]);
    let running = tokio::spawn(async move {
        let mut audit = Audit::default();
        auditor.pass(&mut audit).await;
        auditor.pass(&mut audit).await;
    });

    lists(&mut api).await;
    let event = api.expect_event().await;
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reason"], "SidecarMissing", "{event:#}");
    assert_eq!(event["regarding"]["kind"], "Deployment", "{event:#}");
    assert_eq!(event["regarding"]["name"], "chat", "{event:#}");
    let note = event["note"].as_str().unwrap();
    assert!(note.starts_with("1 pod(s) run without"), "{note}");
    assert!(note.contains("(chat-2)"), "{note}");
    assert!(
        note.contains("kubectl rollout restart deployment/chat -n prod"),
        "{note}"
    );

    // The same pods missing a minute later: listed again, no new event.
    lists(&mut api).await;
    timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    api.expect_nothing_more().await;

    let text = metrics.render();
    assert!(
        text.contains(
            "ringway_operator_sidecar_missing_pods{namespace=\"prod\",workload=\"deployment/chat\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("statefulset/db"), "{text}");

    // All namespaces: the same lists, cluster-wide.
    let (auditor, mut all, _) = start(&[]);
    let running = tokio::spawn(async move { auditor.pass(&mut Audit::default()).await });
    for kind in ["deployments", "statefulsets", "daemonsets"] {
        all.expect_list(&format!("/apis/apps/v1/{kind}"), None, vec![])
            .await;
    }
    timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    all.expect_nothing_more().await;

    let mut used = api.used;
    used.extend(all.used);
    let mut granted: Triples = rbac::triples(rbac::SIDECAR_AUDIT).into_iter().collect();
    granted.insert(("events.k8s.io".into(), "events".into(), "create".into()));
    assert_eq!(used, granted, "the audit uses exactly its grants");
}

#[tokio::test]
async fn a_failed_list_changes_nothing() {
    let (auditor, mut api, metrics) = start(&[NS]);
    let running = tokio::spawn(async move { auditor.pass(&mut Audit::default()).await });
    let (request, reply) = api.next().await;
    assert_eq!(request.uri().path(), format!("{APPS}/deployments"));
    answer(
        reply,
        403,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "forbidden", "reason": "Forbidden", "code": 403}),
    );
    timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    api.expect_nothing_more().await;
    assert!(!metrics.render().contains("sidecar_missing_pods{"));
}
