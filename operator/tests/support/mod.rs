//! A fake Kubernetes API server behind kube's mock service (tower-test),
//! with a small in-memory object store, and a fake control channel. The
//! reconciler runs against them exactly as against a cluster: the
//! reflector stores it reads are filled from the fake's objects before
//! each reconcile, as the operator's watches would fill them. Tests then
//! read back what it applied, the status it wrote, the events and the
//! snapshots it pushed.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use http::{Method, Request, Response, StatusCode};
use kube::{
    Client,
    client::Body,
    runtime::{events::Reporter, reflector::store::Writer, watcher},
};
use ringway_control::{
    PodResult, RpcError,
    pki::Ca,
    proto::{ApplySnapshotResponse, ConnectionCount, PodStatus, Snapshot},
};
use ringway_crds::WebSocketGateway;
use ringway_operator::{
    Error,
    children::OperatorPods,
    context::Context,
    events::Events,
    metrics::Metrics,
    names::LABEL_GATEWAY,
    rbac,
    steer::Steer,
    stores::{self, SERVICE_NAME_LABEL, Writers},
    watches::{self, Feed},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Objects by "collection path" (e.g. `/apis/apps/v1/namespaces/ns/statefulsets`) and name.
#[derive(Default)]
pub struct Store {
    pub objects: BTreeMap<(String, String), Value>,
    /// Every request: method, path (without query), and the JSON body.
    pub log: Vec<(Method, String, Value)>,
    /// Every request as RBAC authorizes it: (API group, resource, verb).
    pub authorized: BTreeSet<(String, String, String)>,
    /// The grants every request must fall under; `None`: the gateways'
    /// (and the Lease's for leases).
    pub grants: Option<&'static [rbac::Grant]>,
}

#[derive(Clone, Default)]
pub struct FakeApi(pub Arc<Mutex<Store>>);

/// The other end of a scripted mock API server (tower-test): the test
/// takes each request and answers it.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What RBAC saw of requests: (API group, resource, verb).
pub type Triples = BTreeSet<(String, String, String)>;

pub const NS: &str = "prod";

pub fn path(kind: &str) -> String {
    match kind {
        "secrets" | "pods" | "services" | "configmaps" => format!("/api/v1/namespaces/{NS}/{kind}"),
        "statefulsets" | "deployments" | "daemonsets" => {
            format!("/apis/apps/v1/namespaces/{NS}/{kind}")
        }
        "poddisruptionbudgets" => format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"),
        "networkpolicies" => {
            format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
        }
        "endpointslices" => format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"),
        "websocketgateways" => {
            format!("/apis/ringway.dev/v1alpha1/namespaces/{NS}/websocketgateways")
        }
        "events" => format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
        "leases" => format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"),
        other => panic!("unknown kind {other}"),
    }
}

/// Percent-decodes a query string.
pub fn decode(s: &str) -> String {
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = &s[i + 1..i + 3];
            out.push(u8::from_str_radix(hex, 16).unwrap() as char);
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

fn matches(labels: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
            None => labels.get(term).is_some(),
        })
}

/// A JSON answer with status `code`, as the API server sends.
pub fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found(what: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// Merges `patch` into `target` as a JSON merge patch does (null removes).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// How RBAC sees a request: its API group, resource (with `/status` for the
/// subresource) and verb. A server-side apply that creates its object is
/// authorized as `create`, as the API server does.
pub fn authorization(
    method: &Method,
    path: &str,
    query: &str,
    applies_to_missing: bool,
) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("not a resource path: {path}"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method.clone(), named) {
        (Method::GET, true) => "get",
        (Method::GET, false) if watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) if applies_to_missing => "create",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        (m, _) => panic!("unexpected method {m} on {path}"),
    };
    (group.to_owned(), resource, verb.to_owned())
}

/// Fails the test unless `operator/src/rbac.rs` grants what `request` needs:
/// `grants`, or the Lease's grants for leases and the gateways' for
/// everything else.
fn assert_granted(
    (group, resource, verb): &(String, String, String),
    request: &str,
    grants: Option<&[rbac::Grant]>,
) {
    let grants = match grants {
        Some(grants) => grants,
        None if resource == "leases" => rbac::LEADER_ELECTION,
        None => rbac::GATEWAYS,
    };
    assert!(
        rbac::allows(grants, group, resource, verb),
        "the operator sent {request}, which needs `{verb}` on `{resource}` in group {group:?}: \
         operator/src/rbac.rs (and so the chart) does not grant it"
    );
}

impl FakeApi {
    pub fn put(&self, kind: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        self.0
            .lock()
            .unwrap()
            .objects
            .insert((path(kind), name), object);
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.0
            .lock()
            .unwrap()
            .objects
            .get(&(path(kind), name.to_owned()))
            .cloned()
    }

    pub fn remove(&self, kind: &str, name: &str) {
        self.0
            .lock()
            .unwrap()
            .objects
            .remove(&(path(kind), name.to_owned()));
    }

    pub fn list(&self, kind: &str) -> Vec<Value> {
        let p = path(kind);
        self.0
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((c, _), _)| *c == p)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn gateway(&self, name: &str) -> WebSocketGateway {
        serde_json::from_value(self.get("websocketgateways", name).unwrap()).unwrap()
    }

    pub fn events(&self) -> Vec<(String, String)> {
        self.list("events")
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or("").to_owned(),
                    e["note"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Every (group, resource, verb) the operator has used so far.
    pub fn authorized(&self) -> BTreeSet<(String, String, String)> {
        self.0.lock().unwrap().authorized.clone()
    }

    pub fn requests(&self) -> Vec<(Method, String, Value)> {
        self.0.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.0.lock().unwrap().log.clear();
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let body = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let full = uri.path().to_owned();
        let query = decode(uri.query().unwrap_or(""));
        let mut store = self.0.lock().unwrap();
        store.log.push((method.clone(), full.clone(), body.clone()));
        let (path, status) = match full.strip_suffix("/status") {
            Some(p) => (p.to_owned(), true),
            None => (full.clone(), false),
        };
        // Collection paths end in a plural kind; object paths add a name.
        let kinds = [
            "secrets",
            "pods",
            "services",
            "configmaps",
            "statefulsets",
            "poddisruptionbudgets",
            "networkpolicies",
            "endpointslices",
            "websocketgateways",
            "events",
            "leases",
        ];
        let (collection, name) = if kinds.iter().any(|k| path.ends_with(&format!("/{k}"))) {
            (path.clone(), None)
        } else {
            let (c, n) = path.rsplit_once('/').unwrap();
            (c.to_owned(), Some(n.to_owned()))
        };
        let applies_to_missing = method == Method::PATCH
            && query.contains("fieldManager=")
            && query.contains("force=true")
            && !status
            && name
                .as_ref()
                .is_some_and(|n| !store.objects.contains_key(&(collection.clone(), n.clone())));
        let seen = authorization(&method, &full, &query, applies_to_missing);
        assert_granted(&seen, &format!("{method} {full}?{query}"), store.grants);
        let (group, resource, _) = &seen;
        if applies_to_missing {
            // The apply also needs `patch`, as every later apply does.
            store
                .authorized
                .insert((group.clone(), resource.clone(), "patch".to_owned()));
        }
        store.authorized.insert(seen);
        match (method.clone(), name) {
            (Method::GET, None) => {
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .unwrap_or("")
                    .to_owned();
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|((c, _), v)| {
                        *c == collection && matches(&v["metadata"]["labels"], &selector)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (Method::GET, Some(name)) => match store.objects.get(&(collection, name.clone())) {
                Some(v) => respond(StatusCode::OK, v),
                None => not_found(&name),
            },
            (Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("ev-{}", store.log.len()));
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["resourceVersion"] = json!("1");
                store.objects.insert((collection, name), obj.clone());
                respond(StatusCode::CREATED, &obj)
            }
            (Method::PATCH, Some(name)) => {
                let key = (collection, name.clone());
                let apply = query.contains("fieldManager=") && query.contains("force=true");
                let entry = store.objects.get(&key).cloned();
                let updated = match (status, entry) {
                    (true, None) => return not_found(&name),
                    (true, Some(mut obj)) => {
                        if apply {
                            obj["status"] = body["status"].clone();
                        } else {
                            merge(&mut obj, &body);
                        }
                        obj
                    }
                    (false, Some(mut obj)) if !apply => {
                        merge(&mut obj, &body);
                        obj
                    }
                    (false, old) => {
                        // Server-side apply of a whole object: the applied
                        // fields replace ours; the status stays.
                        let mut obj = body.clone();
                        if let Some(s) = old.as_ref().and_then(|o| o.get("status")) {
                            obj["status"] = s.clone();
                        }
                        // The server gives a new object its uid and keeps it.
                        obj["metadata"]["uid"] = match old.as_ref() {
                            Some(o) => o["metadata"]["uid"].clone(),
                            None => json!(format!("uid-{}-{name}", store.log.len())),
                        };
                        obj
                    }
                };
                store.objects.insert(key, updated.clone());
                respond(StatusCode::OK, &updated)
            }
            (Method::PUT, Some(name)) => {
                let key = (collection, name.clone());
                let Some(old) = store.objects.get(&key) else {
                    return not_found(&name);
                };
                let version = old["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                store.objects.insert(key, obj.clone());
                respond(StatusCode::OK, &obj)
            }
            (Method::DELETE, Some(name)) => {
                let key = (collection, name.clone());
                let Some(old) = store.objects.get(&key).cloned() else {
                    return not_found(&name);
                };
                let wanted = &body["preconditions"]["uid"];
                if !wanted.is_null() && *wanted != old["metadata"]["uid"] {
                    return respond(
                        StatusCode::CONFLICT,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "Precondition failed: UID in precondition", "reason": "Conflict", "code": 409}),
                    );
                }
                store.objects.remove(&key);
                respond(StatusCode::OK, &old)
            }
            (m, n) => panic!("unexpected request {m} {full} ({n:?})"),
        }
    }

    /// Checks and records a watch, which is never answered.
    fn note_watch(&self, request: &Request<Body>) {
        let query = decode(request.uri().query().unwrap_or(""));
        let seen = authorization(request.method(), request.uri().path(), &query, false);
        let mut store = self.0.lock().unwrap();
        let grants = store.grants;
        assert_granted(
            &seen,
            &format!("{} {}", request.method(), request.uri()),
            grants,
        );
        store.authorized.insert(seen);
    }

    /// A kube client whose every request this fake answers.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            // A watch is answered with nothing: it stays open, as a watch
            // with no news does.
            let mut watching = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let query = request.uri().query().unwrap_or("");
                if query
                    .split('&')
                    .any(|kv| kv == "watch=true" || kv == "watch=1")
                {
                    api.note_watch(&request);
                    watching.push(send);
                } else {
                    send.send_response(api.handle(request).await);
                }
            }
        });
        Client::new(service, NS)
    }
}

/// Replaces what `writer` holds with the `objects` that match `selector`,
/// as a watch that lists again does.
fn relist<K>(writer: &mut Writer<K>, objects: Vec<Value>, selector: &str)
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        if matches(&object["metadata"]["labels"], selector) {
            let object = serde_json::from_value(object).unwrap();
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// A control channel that records pushes and answers from a script.
#[derive(Default)]
pub struct FakeSteer {
    pub pushes: Mutex<Vec<(Vec<String>, Snapshot)>>,
    pub polls: Mutex<usize>,
    /// Live connections reported per control address.
    pub connections: Mutex<BTreeMap<String, u64>>,
    /// Addresses that do not answer.
    pub down: Mutex<Vec<String>>,
    /// Connections each acknowledged push reports as draining.
    pub draining: Mutex<u64>,
    /// The API, to note the gateway's `status.epoch` at each push.
    pub api: Mutex<Option<FakeApi>>,
    /// `status.epoch` as stored when each push went out.
    pub epoch_at_push: Mutex<Vec<i64>>,
}

impl FakeSteer {
    pub fn pushed(&self) -> Vec<(Vec<String>, Snapshot)> {
        self.pushes.lock().unwrap().clone()
    }

    fn error(address: &str) -> RpcError {
        RpcError {
            address: address.to_owned(),
            code: tonic::Code::Unavailable,
            message: "connection refused".into(),
            attempts: 4,
        }
    }
}

impl Steer for FakeSteer {
    async fn push(
        &self,
        _gateway: &str,
        _ca: &Ca,
        addresses: &[String],
        snapshot: &Snapshot,
    ) -> Result<Vec<PodResult>, Error> {
        self.pushes
            .lock()
            .unwrap()
            .push((addresses.to_vec(), snapshot.clone()));
        if let Some(api) = self.api.lock().unwrap().as_ref() {
            let epoch = api.get("websocketgateways", "chat").unwrap()["status"]["epoch"]
                .as_i64()
                .unwrap_or(0);
            self.epoch_at_push.lock().unwrap().push(epoch);
        }
        let down = self.down.lock().unwrap().clone();
        let draining = *self.draining.lock().unwrap();
        Ok(addresses
            .iter()
            .map(|a| PodResult {
                address: a.clone(),
                outcome: if down.contains(a) {
                    Err(FakeSteer::error(a))
                } else {
                    Ok(ApplySnapshotResponse {
                        epoch: snapshot.epoch,
                        changed: true,
                        draining,
                    })
                },
            })
            .collect())
    }

    async fn status(
        &self,
        _gateway: &str,
        _ca: &Ca,
        addresses: &[String],
    ) -> Result<ringway_operator::steer::StatusAnswers, Error> {
        *self.polls.lock().unwrap() += 1;
        let down = self.down.lock().unwrap().clone();
        let counts = self.connections.lock().unwrap().clone();
        Ok(addresses
            .iter()
            .map(|a| {
                let answer = if down.contains(a) {
                    Err(FakeSteer::error(a))
                } else {
                    Ok(PodStatus {
                        serving: true,
                        connections: vec![ConnectionCount {
                            version: 1,
                            route: "chat".into(),
                            count: counts.get(a).copied().unwrap_or(0),
                        }],
                        ..PodStatus::default()
                    })
                };
                (a.clone(), answer)
            })
            .collect())
    }

    fn forget(&self, _gateway: &str) {}
}

/// The fake API, the operator's context on it, and the control channel
/// `S` it steers pods with: [`FakeSteer`] by default, the real one
/// (`GrpcSteer`) when real data-plane processes play the pods.
pub struct World<S: Steer = FakeSteer> {
    pub api: FakeApi,
    pub steer: Arc<S>,
    pub ctx: Arc<Context<Arc<S>>>,
    /// Fill the context's stores, as the watches would; `None` once
    /// handed to real watches ([`World::watches`]).
    writers: Mutex<Option<Writers>>,
}

/// A pod a StatefulSet wants (see [`World::stateful_set_pods`]).
pub struct WantedPod {
    pub name: String,
    /// The template's labels and the `controller-revision-hash` of the
    /// revision the pod runs.
    pub labels: Value,
}

pub const IMAGE: &str = "ringway/dataplane:1";
/// The namespace the operator runs in.
pub const OPERATOR_NS: &str = "ringway-system";

impl World {
    /// A gateway `chat` (routes keyed by the `room` query parameter to the
    /// Service `chat-backend`), that Service and two ready endpoints.
    pub fn new(annotations: Value, shards: u16) -> Self {
        let steer = Arc::new(FakeSteer::default());
        let world = Self::with_steer(annotations, shards, Arc::clone(&steer));
        *steer.api.lock().unwrap() = Some(world.api.clone());
        world
    }

    /// Plays the StatefulSet controller and the kubelet: every StatefulSet
    /// gets its pods, running and ready, but for those the last snapshot
    /// takes out of the client Service (`retiring`), whose readiness probe
    /// fails; pods at or above the partition run the latest template, the
    /// others keep theirs.
    pub fn settle(&self) {
        let retiring: BTreeSet<String> = self
            .steer
            .pushed()
            .last()
            .map(|(_, s)| s.retiring.iter().cloned().collect())
            .unwrap_or_default();
        for sts in self.api.list("statefulsets") {
            let name = sts["metadata"]["name"].as_str().unwrap().to_owned();
            let slot_octet = if name.ends_with("-a") { 1 } else { 2 };
            let wanted = self.stateful_set_pods(sts);
            for (i, pod) in wanted.iter().enumerate() {
                self.api.put(
                    "pods",
                    json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod.name, "namespace": NS, "labels": pod.labels},
                    "status": {"phase": "Running", "podIP": format!("10.0.{slot_octet}.{i}"),
                        "conditions": [{"type": "Ready",
                            "status": if retiring.contains(&pod.name) { "False" } else { "True" }}]}}),
                );
            }
            for pod in self.api.list("pods") {
                let pod_name = pod["metadata"]["name"].as_str().unwrap();
                if pod_name.starts_with(&format!("{name}-"))
                    && !wanted.iter().any(|w| w.name == pod_name)
                {
                    self.api.remove("pods", pod_name);
                }
            }
        }
    }

    /// Every pod reports `n` connections.
    pub fn connections_per_pod(&self, n: u64) {
        let mut c = self.steer.connections.lock().unwrap();
        c.clear();
        for pod in self.api.list("pods") {
            c.insert(
                format!("{}:7443", pod["status"]["podIP"].as_str().unwrap()),
                n,
            );
        }
    }

    /// Reconciles and settles until nothing changes (at most `rounds`).
    pub async fn run(&self, rounds: usize) {
        for _ in 0..rounds {
            self.reconcile().await.unwrap();
            self.settle();
        }
    }

    pub fn last_snapshot(&self) -> Snapshot {
        self.steer.pushed().last().unwrap().1.clone()
    }
}

impl<S: Steer> World<S> {
    /// [`World::new`]'s gateway, Service and endpoints, steered by `steer`.
    pub fn with_steer(annotations: Value, shards: u16, steer: Arc<S>) -> Self {
        let api = FakeApi::default();
        api.put(
            "websocketgateways",
            json!({
                "apiVersion": "ringway.dev/v1alpha1", "kind": "WebSocketGateway",
                "metadata": {"name": "chat", "namespace": NS, "uid": "gw-uid-1", "generation": 1, "annotations": annotations},
                "spec": {"shards": shards, "routes": [{"name": "chat", "pathPrefix": "/chat",
                    "key": {"source": "Query", "name": "room"}, "backend": {"service": "chat-backend", "port": 80}}]}
            }),
        );
        api.put(
            "services",
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "chat-backend", "namespace": NS},
            "spec": {"ports": [{"name": "ws", "port": 80, "targetPort": 8080}]}}),
        );
        api.put("endpointslices", json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "chat-backend-x1", "namespace": NS, "labels": {"kubernetes.io/service-name": "chat-backend"}},
            "addressType": "IPv4",
            "ports": [{"name": "ws", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"]},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}}
            ]}));
        let client = api.client();
        let events = Events::new(
            client.clone(),
            Reporter {
                controller: "ringway-operator".into(),
                instance: Some("test".into()),
            },
        );
        let (stores, mut writers) = stores::stores(&[NS.to_owned()]);
        let ctx = Arc::new(Context::new(
            client,
            Arc::clone(&steer),
            Arc::new(Metrics::new()),
            events,
            IMAGE.into(),
            OperatorPods {
                namespace: OPERATOR_NS.into(),
                labels: BTreeMap::from([("app.kubernetes.io/component".into(), "operator".into())]),
            },
            stores,
        ));
        let writers = Mutex::new(writers.pop());
        Self {
            api,
            steer,
            ctx,
            writers,
        }
    }

    /// Brings the context's stores up to date with the fake API's
    /// objects, as the operator's watches would (same label selectors):
    /// each a fresh list.
    pub fn sync_stores(&self) {
        let mut guard = self.writers.lock().unwrap();
        let writers = guard
            .as_mut()
            .expect("the stores are filled by the watches");
        relist(
            &mut writers.gateways,
            self.api.list("websocketgateways"),
            "",
        );
        relist(&mut writers.pods, self.api.list("pods"), LABEL_GATEWAY);
        relist(
            &mut writers.endpoint_slices,
            self.api.list("endpointslices"),
            SERVICE_NAME_LABEL,
        );
    }

    /// Starts the operator's watches against the fake API, filling the
    /// context's stores (from then on instead of [`World::sync_stores`]),
    /// handing what they touch to the feed while `leading`.
    pub fn watches(&self, leading: &watch::Receiver<bool>) -> Vec<Feed> {
        let writers = self.writers.lock().unwrap().take();
        let writers = writers.expect("the watches start once");
        watches::start(&self.api.client(), vec![writers], leading)
    }

    /// Runs one reconcile of `chat` as the controller would, on stores
    /// that show what the fake API holds.
    pub async fn reconcile(&self) -> Result<kube::runtime::controller::Action, Error> {
        self.sync_stores();
        ringway_operator::reconcile::reconcile(
            Arc::new(self.api.gateway("chat")),
            Arc::clone(&self.ctx),
        )
        .await
    }

    pub fn status(&self) -> Value {
        self.api.get("websocketgateways", "chat").unwrap()["status"].clone()
    }

    pub fn condition(&self, type_: &str) -> Value {
        self.status()["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Changes the gateway like `kubectl edit` would: the spec change bumps the generation.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut gw = self.api.get("websocketgateways", "chat").unwrap();
        let spec = gw["spec"].clone();
        f(&mut gw);
        if gw["spec"] != spec {
            let g = gw["metadata"]["generation"].as_i64().unwrap();
            gw["metadata"]["generation"] = json!(g + 1);
        }
        self.api.put("websocketgateways", gw);
    }

    pub fn annotate(&self, key: &str, value: Option<&str>) {
        self.edit(|gw| {
            if gw["metadata"]["annotations"].is_null() {
                gw["metadata"]["annotations"] = json!({});
            }
            match value {
                Some(v) => gw["metadata"]["annotations"][key] = json!(v),
                None => {
                    gw["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove(key);
                }
            }
        });
    }

    /// Plays the StatefulSet controller for `sts`: records the revision of
    /// its template and its replicas in its status, and says which pods it
    /// wants: ordinals below `replicas`; those at or above the partition
    /// run the latest template, the others keep the revision they run.
    pub fn stateful_set_pods(&self, mut sts: Value) -> Vec<WantedPod> {
        let name = sts["metadata"]["name"].as_str().unwrap().to_owned();
        let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
        let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0);
        let template = &sts["spec"]["template"];
        let revision = format!(
            "{}-{}",
            template["metadata"]["annotations"]["ringway.dev/revision"]
                .as_str()
                .unwrap_or(""),
            template["metadata"]["annotations"]["ringway.dev/control-cert"]
                .as_str()
                .unwrap_or("")
        );
        let wanted = (0..replicas)
            .map(|i| {
                let pod_name = format!("{name}-{i}");
                let running = self.api.get("pods", &pod_name).and_then(|old| {
                    old["metadata"]["labels"]["controller-revision-hash"]
                        .as_str()
                        .map(str::to_owned)
                });
                let hash = match running {
                    Some(hash) if i < partition => hash,
                    _ => revision.clone(),
                };
                let mut labels = template["metadata"]["labels"].clone();
                labels["controller-revision-hash"] = json!(hash);
                WantedPod {
                    name: pod_name,
                    labels,
                }
            })
            .collect();
        sts["status"] = json!({"updateRevision": revision, "replicas": replicas});
        self.api.put("statefulsets", sts);
        wanted
    }
}
