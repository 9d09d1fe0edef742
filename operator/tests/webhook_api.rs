//! The sidecar injector's certificate Secret and caBundle against kube's
//! mock API server (tower-test), one expected request at a time: the
//! first replica creates the Secret and the next reads it after a
//! conflict; the leader renews an expiring certificate and a standby
//! keeps serving it; the leader replaces a damaged Secret; the leader patches the caBundle only when it differs
//! and waits for a configuration that does not exist. The sidecars'
//! control Secrets: made at admission once per namespace (a conflict is
//! as good; a failure or a silent API server is counted, not cached), and
//! kept by the leader in every namespace with injected pods (created,
//! renewed on a new CA, near expiry or damaged, read after a conflict).
//! Every request must be granted by `ringway_operator::rbac`'s webhook
//! and control-Secret tables (and the pods' list of the pacer's), by name
//! where the chart limits it to one, and together they use every grant.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use ringway_dataplane_api::sidecar::CONTROL_SECRET;
use ringway_operator::{
    metrics::Metrics,
    rbac,
    webhook::{
        admit::{ControlSecrets, SECRET_TIMEOUT},
        ca_bundle::{self, Synced},
        certs::{Decision, LEAF_VALIDITY, RENEW_BEFORE, WebhookTls},
        control_secret::{self, Kept},
        control_tls::{self, ControlTls},
        secret::{self, SecretRef},
    },
};
use serde_json::{Value, json};
use support::{Handle, Triples};
use tokio::time::timeout;

const NS: &str = "ringway";
const SECRET: &str = "hook-tls";
const CONFIGURATION: &str = "ringway-sidecar-injector";
const SECRETS: &str = "/api/v1/namespaces/ringway/secrets";
const CONFIGURATIONS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const ALL_PODS: &str = "/api/v1/pods";

/// The mock API server, answering what the test expects, and what RBAC
/// saw of every request.
struct Api {
    handle: Handle,
    used: Triples,
}

fn client() -> (Client, Api) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api = Api {
        handle,
        used: Triples::new(),
    };
    (Client::new(service, NS), api)
}

fn at() -> SecretRef {
    SecretRef {
        namespace: NS.into(),
        name: SECRET.into(),
        dns_names: vec![
            "hook.ringway.svc".into(),
            "hook.ringway.svc.cluster.local".into(),
        ],
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

fn stored(tls: &WebhookTls) -> Value {
    let mut secret = serde_json::to_value(tls.to_secret(NS, SECRET)).unwrap();
    secret["metadata"]["resourceVersion"] = json!("7");
    secret
}

impl Api {
    /// Expects `method path` next and answers what `answer` makes of the
    /// request's body: (status code, body). Fails unless the webhook's
    /// RBAC grants the request. Returns the request's body.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        answer: impl FnOnce(&Value) -> (u16, Value),
    ) -> Value {
        let (request, reply) = timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
            .expect("the client is gone");
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request"
        );
        self.authorize(&method, path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let sent = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (code, body) = answer(&sent);
        reply.send_response(support::respond(StatusCode::from_u16(code).unwrap(), &body));
        sent
    }

    /// What RBAC checks of a request: its verb on its resource, granted by
    /// the table, and the object's name where the chart limits it.
    fn authorize(&mut self, method: &Method, path: &str) {
        let (collection, name) = match path {
            SECRETS | CONFIGURATIONS | ALL_PODS => (path, None),
            _ if path.ends_with("/secrets") => (path, None),
            _ => {
                let (c, n) = path.rsplit_once('/').unwrap();
                (c, Some(n))
            }
        };
        let verb = match (method, name) {
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (other, _) => panic!("the webhook sends no {other}"),
        };
        let control = collection.starts_with("/api/v1/namespaces/") && collection != SECRETS;
        let (group, resource, grants, named) = match collection {
            SECRETS if verb == "create" => ("", "secrets", rbac::WEBHOOK_SECRET_CREATE, None),
            SECRETS => ("", "secrets", rbac::WEBHOOK_SECRET, Some(SECRET)),
            CONFIGURATIONS => (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                rbac::WEBHOOK_CONFIGURATION,
                Some(CONFIGURATION),
            ),
            ALL_PODS => ("", "pods", rbac::SIDECAR_DRAIN, None),
            c if control && c.ends_with("/secrets") && verb == "create" => {
                ("", "secrets", rbac::SIDECAR_CONTROL_SECRET_CREATE, None)
            }
            c if control && c.ends_with("/secrets") => (
                "",
                "secrets",
                rbac::SIDECAR_CONTROL_SECRET,
                Some(CONTROL_SECRET),
            ),
            other => panic!("the webhook has no business with {other}"),
        };
        assert!(
            rbac::allows(grants, group, resource, verb),
            "{method} {path} needs `{verb}` on {resource}, which operator/src/rbac.rs does not grant"
        );
        if let Some(allowed) = named {
            assert_eq!(
                name,
                Some(allowed),
                "{method} {path}: only {allowed} is granted"
            );
        }
        self.used
            .insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
    }
}

fn secret_path() -> String {
    format!("{SECRETS}/{SECRET}")
}

fn tls_of(secret: &Value) -> WebhookTls {
    WebhookTls::from_secret(&serde_json::from_value(secret.clone()).unwrap()).unwrap()
}

fn not_found(_: &Value) -> (u16, Value) {
    (404, status(404, "NotFound"))
}

/// Replica A creates the Secret; replica B, a moment later, finds none,
/// loses the race to create it (409) and serves A's.
async fn create_then_conflict() -> Triples {
    let (client, mut api) = client();
    let ensure = |client: &Client| {
        let client = client.clone();
        tokio::spawn(async move { secret::ensure(&client, &at(), false, SystemTime::now()).await })
    };
    let first = ensure(&client);
    api.expect(Method::GET, &secret_path(), not_found).await;
    let created = api
        .expect(Method::POST, SECRETS, |sent| (201, sent.clone()))
        .await;
    assert_eq!(created["metadata"]["name"], SECRET);
    let created = tls_of(&created);
    assert_eq!(first.await.unwrap().unwrap(), created);

    let second = ensure(&client);
    api.expect(Method::GET, &secret_path(), not_found).await;
    let theirs = api
        .expect(Method::POST, SECRETS, |_| {
            (409, status(409, "AlreadyExists"))
        })
        .await;
    assert_ne!(tls_of(&theirs), created, "each replica makes its own CA");
    api.expect(Method::GET, &secret_path(), |_| (200, stored(&created)))
        .await;
    assert_eq!(
        second.await.unwrap().unwrap(),
        created,
        "B serves A's certificate"
    );
    api.used
}

/// A certificate past two thirds of its life: a standby keeps serving it;
/// the leader replaces it (PUT, with the read resourceVersion) with one
/// from the same CA.
async fn renew_when_leading() -> Triples {
    let (client, mut api) = client();
    let old = WebhookTls::issue(Decision::Create, None, &at().dns_names).unwrap();
    let later = SystemTime::now() + LEAF_VALIDITY - RENEW_BEFORE + Duration::from_secs(3600);
    let ensure = |leading: bool| {
        let client = client.clone();
        tokio::spawn(async move { secret::ensure(&client, &at(), leading, later).await })
    };
    let standby = ensure(false);
    api.expect(Method::GET, &secret_path(), |_| (200, stored(&old)))
        .await;
    assert_eq!(
        standby.await.unwrap().unwrap(),
        old,
        "a standby does not rotate"
    );

    let leader = ensure(true);
    api.expect(Method::GET, &secret_path(), |_| (200, stored(&old)))
        .await;
    let put = api
        .expect(Method::PUT, &secret_path(), |sent| (200, sent.clone()))
        .await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
    let renewed = tls_of(&put);
    assert_eq!(renewed.ca_cert, old.ca_cert, "the caBundle stays");
    assert_ne!(renewed.cert, old.cert);
    assert_eq!(leader.await.unwrap().unwrap(), renewed);
    api.used
}

/// A Secret without the certificates: a standby waits, the leader
/// replaces it with a new CA.
async fn replace_damaged() -> Triples {
    let (client, mut api) = client();
    let damaged = || {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "3"}})
    };
    let ensure = |leading: bool| {
        let client = client.clone();
        tokio::spawn(
            async move { secret::ensure(&client, &at(), leading, SystemTime::now()).await },
        )
    };
    let standby = ensure(false);
    api.expect(Method::GET, &secret_path(), |_| (200, damaged()))
        .await;
    assert!(matches!(
        standby.await.unwrap(),
        Err(ringway_operator::webhook::Error::AwaitingLeader)
    ));
    let leader = ensure(true);
    api.expect(Method::GET, &secret_path(), |_| (200, damaged()))
        .await;
    let put = api
        .expect(Method::PUT, &secret_path(), |sent| (200, sent.clone()))
        .await;
    assert_eq!(put["metadata"]["resourceVersion"], "3");
    assert_eq!(leader.await.unwrap().unwrap(), tls_of(&put));
    api.used
}

fn configuration(ca_bundle: Option<&str>) -> Value {
    let mut hook = json!({
        "name": "sidecar.ringway.dev",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "clientConfig": {"service": {"name": "hook", "namespace": NS, "path": "/mutate-pods"}},
    });
    if let Some(ca) = ca_bundle {
        hook["clientConfig"]["caBundle"] = json!(ca);
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [hook],
    })
}

/// The caBundle patched when missing, left alone when current, and a
/// configuration that does not exist reported, not an error.
async fn ca_bundle_sync() -> Triples {
    let (client, mut api) = client();
    let path = format!("{CONFIGURATIONS}/{CONFIGURATION}");
    // base64 of "CA"
    let ca = "Q0E=";
    let sync = || {
        let client = client.clone();
        tokio::spawn(async move { ca_bundle::sync(&client, CONFIGURATION, "CA").await })
    };
    let patched = sync();
    api.expect(Method::GET, &path, |_| (200, configuration(None)))
        .await;
    let patch = api
        .expect(Method::PATCH, &path, |_| (200, configuration(Some(ca))))
        .await;
    assert_eq!(
        patch,
        json!({"webhooks": [{"name": "sidecar.ringway.dev", "clientConfig": {"caBundle": ca}}]})
    );
    assert_eq!(patched.await.unwrap().unwrap(), Synced::Patched);

    let current = sync();
    api.expect(Method::GET, &path, |_| (200, configuration(Some(ca))))
        .await;
    assert_eq!(
        current.await.unwrap().unwrap(),
        Synced::Current,
        "no patch sent"
    );

    let missing = sync();
    api.expect(Method::GET, &path, not_found).await;
    assert_eq!(missing.await.unwrap().unwrap(), Synced::Missing);
    api.used
}

fn webhook_tls() -> WebhookTls {
    WebhookTls::issue(Decision::Create, None, &at().dns_names).unwrap()
}

fn control_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets")
}

fn control_secret_path(namespace: &str) -> String {
    format!("{}/{CONTROL_SECRET}", control_path(namespace))
}

fn stored_control(tls: &ControlTls, namespace: &str) -> Value {
    let mut secret = serde_json::to_value(tls.to_secret(namespace)).unwrap();
    secret["metadata"]["resourceVersion"] = json!("11");
    secret
}

fn control_of(secret: &Value) -> ControlTls {
    ControlTls::from_secret(&serde_json::from_value(secret.clone()).unwrap()).unwrap()
}

fn counted(metrics: &Metrics, result: &str) -> usize {
    let line = format!("ringway_operator_sidecar_control_secrets_total{{result=\"{result}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

/// A namespace's control Secret made by what the webhook runs at
/// admission: one POST for a namespace not seen; a conflict is as good;
/// a failure is counted and tried again at the next admission.
async fn admission_secrets() -> Triples {
    let (client, mut api) = client();
    let ca = webhook_tls();
    let metrics = std::sync::Arc::new(Metrics::new());
    let (_ca_tx, ca_rx) = tokio::sync::watch::channel(Some(ca.clone()));
    let secrets = std::sync::Arc::new(ControlSecrets::new(client, ca_rx, metrics.clone()));
    let ensure = |namespace: &'static str| {
        let secrets = secrets.clone();
        tokio::spawn(async move { secrets.ensure(namespace).await })
    };
    let done = |task: tokio::task::JoinHandle<()>| async {
        timeout(Duration::from_secs(1), task)
            .await
            .expect("no request left unanswered")
            .unwrap();
    };

    let apps = ensure("apps");
    let created = api
        .expect(Method::POST, &control_path("apps"), |sent| {
            (201, sent.clone())
        })
        .await;
    done(apps).await;
    assert_eq!(created["metadata"]["name"], CONTROL_SECRET);
    assert_eq!(
        created["metadata"]["labels"]["app.kubernetes.io/component"],
        "sidecar-control"
    );
    let tls = control_of(&created);
    assert_eq!(tls.ca_cert, ca.ca_cert, "the webhook's CA");
    assert_eq!(
        control_tls::decide(Some(Some(&tls)), &ca.ca_cert, "apps", SystemTime::now()),
        control_tls::Decision::Keep
    );
    assert_eq!(counted(&metrics, "created"), 1);
    done(ensure("apps")).await; // seen: no request

    let games = ensure("games");
    api.expect(Method::POST, &control_path("games"), |_| {
        (409, status(409, "AlreadyExists"))
    })
    .await;
    done(games).await;
    done(ensure("games")).await; // someone else made it: seen
    assert_eq!(counted(&metrics, "created"), 1);

    let chat = ensure("chat");
    api.expect(Method::POST, &control_path("chat"), |_| {
        (500, status(500, "InternalError"))
    })
    .await;
    done(chat).await;
    assert_eq!(counted(&metrics, "failed"), 1);
    let chat = ensure("chat");
    api.expect(Method::POST, &control_path("chat"), |sent| {
        (201, sent.clone())
    })
    .await;
    done(chat).await;
    assert_eq!(counted(&metrics, "created"), 2, "tried again, and made");
    api.used
}

/// The leader's round: the namespaces of the injected pods, each one's
/// Secret read, then created, kept, or renewed on a new CA.
async fn leader_round() -> Triples {
    let (client, mut api) = client();
    let old_ca = webhook_tls();
    let ca = webhook_tls();
    let now = SystemTime::now();
    let round = {
        let (client, ca) = (client.clone(), ca.clone());
        tokio::spawn(async move {
            let metrics = Metrics::new();
            let result = control_secret::keep_all(&client, &ca, &metrics, now).await;
            (result.is_ok(), metrics.render())
        })
    };
    let pod = |namespace: &str, name: &str| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name, "namespace": namespace}})
    };
    let (request, reply) = timeout(Duration::from_secs(5), api.handle.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.uri().path(), ALL_PODS);
    let query = request.uri().query().unwrap_or_default().to_owned();
    assert!(
        query.contains("labelSelector=ringway.dev%2Fsidecar-injected%3Dtrue"),
        "only the injected pods: {query}"
    );
    api.authorize(&Method::GET, ALL_PODS);
    let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "5"},
        "items": [pod("games", "a"), pod("apps", "b"), pod("chat", "c"), pod("apps", "d")]});
    reply.send_response(support::respond(StatusCode::OK, &list));
    // apps: none yet, created.
    api.expect(Method::GET, &control_secret_path("apps"), not_found)
        .await;
    api.expect(Method::POST, &control_path("apps"), |sent| {
        (201, sent.clone())
    })
    .await;
    // chat: current, kept.
    let current = ControlTls::issue(&ca, "chat").unwrap();
    api.expect(Method::GET, &control_secret_path("chat"), |_| {
        (200, stored_control(&current, "chat"))
    })
    .await;
    // games: from the old CA, renewed from the new one.
    let stale = ControlTls::issue(&old_ca, "games").unwrap();
    api.expect(Method::GET, &control_secret_path("games"), |_| {
        (200, stored_control(&stale, "games"))
    })
    .await;
    let put = api
        .expect(Method::PUT, &control_secret_path("games"), |sent| {
            (200, sent.clone())
        })
        .await;
    assert_eq!(
        put["metadata"]["resourceVersion"], "11",
        "optimistic concurrency"
    );
    assert_eq!(control_of(&put).ca_cert, ca.ca_cert, "the new CA");
    let (ok, rendered) = round.await.unwrap();
    assert!(ok);
    for result in ["created", "renewed"] {
        let line =
            format!("ringway_operator_sidecar_control_secrets_total{{result=\"{result}\"}} 1");
        assert!(rendered.lines().any(|l| l == line), "{rendered}");
    }
    api.used
}

/// `keep` after a conflict reads what the other made and judges it; an
/// expiring or damaged Secret is replaced.
async fn keep_after_conflict_expiry_and_damage() -> Triples {
    let (client, mut api) = client();
    let ca = webhook_tls();
    let keep = |namespace: &'static str, now: SystemTime| {
        let (client, ca) = (client.clone(), ca.clone());
        tokio::spawn(async move { control_secret::keep(&client, &ca, namespace, now).await })
    };
    let theirs = ControlTls::issue(&ca, "apps").unwrap();
    let raced = keep("apps", SystemTime::now());
    api.expect(Method::GET, &control_secret_path("apps"), not_found)
        .await;
    api.expect(Method::POST, &control_path("apps"), |_| {
        (409, status(409, "AlreadyExists"))
    })
    .await;
    api.expect(Method::GET, &control_secret_path("apps"), |_| {
        (200, stored_control(&theirs, "apps"))
    })
    .await;
    assert_eq!(raced.await.unwrap().unwrap(), Kept::Current);

    let later = SystemTime::now() + control_tls::SERVER_VALIDITY - control_tls::RENEW_BEFORE
        + Duration::from_secs(3600);
    let expiring = keep("apps", later);
    api.expect(Method::GET, &control_secret_path("apps"), |_| {
        (200, stored_control(&theirs, "apps"))
    })
    .await;
    let put = api
        .expect(Method::PUT, &control_secret_path("apps"), |sent| {
            (200, sent.clone())
        })
        .await;
    assert_ne!(control_of(&put).cert, theirs.cert);
    assert_eq!(expiring.await.unwrap().unwrap(), Kept::Renewed);

    let damaged = keep("apps", SystemTime::now());
    api.expect(Method::GET, &control_secret_path("apps"), |_| {
        (200, json!({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": CONTROL_SECRET, "namespace": "apps", "resourceVersion": "4"}}))
    })
    .await;
    let put = api
        .expect(Method::PUT, &control_secret_path("apps"), |sent| {
            (200, sent.clone())
        })
        .await;
    assert_eq!(put["metadata"]["resourceVersion"], "4");
    assert_eq!(damaged.await.unwrap().unwrap(), Kept::Renewed);
    api.used
}

#[tokio::test]
async fn admission_makes_a_namespaces_control_secret_once_and_a_failure_is_counted() {
    admission_secrets().await;
}

#[tokio::test(start_paused = true)]
async fn an_api_server_that_does_not_answer_delays_admission_by_the_timeout_only() {
    let (client, mut api) = client();
    let metrics = std::sync::Arc::new(Metrics::new());
    let (_ca_tx, ca_rx) = tokio::sync::watch::channel(Some(webhook_tls()));
    let secrets = ControlSecrets::new(client, ca_rx, metrics.clone());
    let started = tokio::time::Instant::now();
    let ensure = secrets.ensure("apps");
    let held = async {
        let (_request, reply) = api.handle.next_request().await.unwrap();
        std::future::pending::<()>().await;
        drop(reply);
    };
    tokio::select! {
        () = ensure => {}
        () = held => unreachable!(),
    }
    assert_eq!(started.elapsed(), SECRET_TIMEOUT);
    assert_eq!(counted(&metrics, "failed"), 1);
}

#[tokio::test]
async fn the_leader_keeps_the_control_secret_of_every_namespace_with_injected_pods() {
    leader_round().await;
}

#[tokio::test]
async fn the_leader_reads_a_secret_made_meanwhile_and_replaces_an_expiring_or_damaged_one() {
    keep_after_conflict_expiry_and_damage().await;
}

#[tokio::test]
async fn the_first_replica_creates_the_secret_and_the_next_reads_it_after_a_conflict() {
    create_then_conflict().await;
}

#[tokio::test]
async fn the_leader_renews_an_expiring_certificate_and_a_standby_keeps_serving_it() {
    renew_when_leading().await;
}

#[tokio::test]
async fn a_damaged_secret_is_replaced_by_the_leader_while_a_standby_waits() {
    replace_damaged().await;
}

#[tokio::test]
async fn the_ca_bundle_is_patched_only_when_it_differs() {
    ca_bundle_sync().await;
}

#[tokio::test]
async fn every_webhook_grant_is_used() {
    let mut used = create_then_conflict().await;
    used.extend(renew_when_leading().await);
    used.extend(replace_damaged().await);
    used.extend(ca_bundle_sync().await);
    used.extend(admission_secrets().await);
    used.extend(leader_round().await);
    used.extend(keep_after_conflict_expiry_and_damage().await);
    let mut granted: Triples = [
        rbac::WEBHOOK_SECRET_CREATE,
        rbac::WEBHOOK_SECRET,
        rbac::WEBHOOK_CONFIGURATION,
        rbac::SIDECAR_CONTROL_SECRET_CREATE,
        rbac::SIDECAR_CONTROL_SECRET,
    ]
    .into_iter()
    .flat_map(rbac::triples)
    .collect();
    // Of the drain pacer's grants, the leader's round lists the pods.
    granted.insert(("".into(), "pods".into(), "list".into()));
    assert_eq!(
        used, granted,
        "operator/src/rbac.rs grants what the webhook never uses"
    );
}
