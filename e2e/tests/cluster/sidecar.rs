//! The sidecar injector called by a real API server: the operator serves
//! its webhook on loopback, reached by a MutatingWebhookConfiguration's
//! `url` (`https://localhost:<port>`, hence `--webhook-dns-name localhost`)
//! with no caBundle until the operator sets it, `failurePolicy: Fail` (a
//! webhook that cannot answer fails the test instead of admitting pods
//! unchanged) and the chart's match condition. A Deployment's pods, made
//! by the ReplicaSet controller (they never run: there need be no kubelet),
//! are stored with their sidecar; a pod without the annotation is stored
//! unchanged, and one annotated with a port it lacks is refused.
//!
//! Then one of the Deployment's pods stops with its sidecar a real process
//! on this machine, the test playing the kubelet ([`kubelet`]): the
//! operator, which leads, paces its drain at the workload's budget over the
//! pod's control port, which must be free here (`127.0.0.1:15091`).

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use ringway_crds::annotations::{SIDECAR, SIDECAR_MAX_CLOSES_PER_SECOND};
use ringway_dataplane_api::sidecar::{
    ADMIN_PORT, CONTAINER, CONTROL_SECRET, DRAIN_PATH, DRAIN_TOKEN_ENV, DRAIN_TOKEN_HEADER,
    LISTEN_PORT,
};
use ringway_e2e::{
    fleet::{Binaries, EchoProcess},
    sidecar::{SidecarProcess, pre_stop_with_token},
};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::timeout};
use tokio_tungstenite::tungstenite::Message;

use super::{
    DEADLINE,
    chart::Scratch,
    judge_run,
    kubectl::{Kubectl, fresh_name, keep_for_a_look},
    kubelet::{self, HeldPod},
    operator::{Operator, eventually, health_address, http_get},
    repo_file,
};

/// The webhook's name, as in the chart.
const WEBHOOK: &str = "sidecar.ringway.dev";
/// The Service name the certificate also names; nothing calls it.
const SERVICE: &str = "ringway-e2e-webhook";
/// The Secret the operator keeps the webhook's certificates in.
const SECRET: &str = "ringway-e2e-webhook-tls";
/// The Deployment whose pods opt in, and their label.
const APP: &str = "chat";
/// Its replicas: two pods, to see two different drain tokens.
const REPLICAS: usize = 2;
/// The application's WebSocket port and its name.
const APP_PORT: u16 = 8080;
const APP_PORT_NAME: &str = "ws";

/// The Deployment's budget of closes per second
/// (`ringway.dev/sidecar-max-closes-per-second`).
const BUDGET: u32 = 5;
/// The clients of the pod whose drain the leader paces: at the budget,
/// their closes take about 2 s.
const CLIENTS: usize = 10;

/// The operator with its webhook on `127.0.0.1:<free port>`, the
/// configuration that sends this namespace's pods to it, then the checks;
/// at the end no request of the operator may have been refused.
pub fn injection(kubectl: &Kubectl, binary: &Path, image: &str) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let port = free_port()?;
    let configuration = Configuration::create(kubectl, &scratch, port)?;
    let log = scratch.0.join("operator.log");
    let address = format!("127.0.0.1:{port}");
    let args = [
        "--namespace",
        &kubectl.namespace,
        "--leader-election=false",
        "--image",
        image,
        "--metrics-address",
        "127.0.0.1:0",
        "--webhook-address",
        &address,
        "--webhook-service",
        SERVICE,
        "--webhook-dns-name",
        "localhost",
        "--webhook-configuration",
        &configuration.name,
        "--webhook-secret",
        SECRET,
        "--log-format",
        "text",
    ]
    .map(str::to_owned);
    let mut operator = Operator::spawn(
        binary,
        &kubectl.kubeconfig,
        &args,
        &[("POD_NAMESPACE", kubectl.namespace.as_str())],
        Some(&log),
    )?;

    let steps = ca_bundle_set(kubectl, &mut operator, &configuration.name)
        .and_then(|()| deployment_injected(kubectl, &mut operator, &scratch, image))
        .and_then(|()| other_pods(kubectl, &scratch))
        .and_then(|()| reviews_counted(&log))
        .and_then(|()| drain_paced(kubectl, &mut operator, &scratch, &log));
    judge_run(operator, &log, steps, kubectl, "the operator")
}

/// The operator's counters: the Deployment's pods and the direct opted-in
/// pod injected, the bad one denied, each reviewed once. The API server
/// reinvokes its own ServiceAccount plugin after a webhook's change, but
/// the sidecar already has a mount where the token would go, so that
/// plugin changes nothing and this `IfNeeded` webhook is not called again.
/// No other review: the match condition kept the plain pod away.
fn reviews_counted(log: &Path) -> anyhow::Result<()> {
    outcomes_counted(
        log,
        "ringway_operator_sidecar_injections_total",
        &[("injected", REPLICAS + 1), ("denied", 1)],
        "the injector",
    )
}

/// The operator's counter `counter` (at its health port, found in its
/// `log`) is `wanted` by outcome, and no other outcome; `who` counts it.
fn outcomes_counted(
    log: &Path,
    counter: &str,
    wanted: &[(&str, usize)],
    who: &str,
) -> anyhow::Result<()> {
    let (status, metrics) = http_get(health_address(log)?, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    let mut counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{counter}{{")))
        .collect();
    counted.sort_unstable();
    let mut wanted: Vec<String> = wanted
        .iter()
        .map(|(outcome, count)| format!("{counter}{{outcome=\"{outcome}\"}} {count}"))
        .collect();
    wanted.sort_unstable();
    ensure!(
        counted == wanted,
        "{who} counted {counted:?}; want {wanted:?}"
    );
    Ok(())
}

/// A port nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The test's MutatingWebhookConfiguration, deleted when dropped.
struct Configuration<'a> {
    kubectl: &'a Kubectl,
    name: String,
}

impl<'a> Configuration<'a> {
    /// Creates it, sending this namespace's pod creations to `port`.
    fn create(kubectl: &'a Kubectl, scratch: &Scratch, port: u16) -> anyhow::Result<Self> {
        let name = fresh_name();
        let manifest = webhook_configuration(&name, &kubectl.namespace, port)?;
        let file = scratch.write("webhook.json", &manifest.to_string())?;
        kubectl
            .run(&["create", "-f"], Some(&file))
            .context("creating the MutatingWebhookConfiguration")?;
        println!("mutatingwebhookconfiguration {name}");
        Ok(Self { kubectl, name })
    }
}

impl Drop for Configuration<'_> {
    fn drop(&mut self) {
        if keep_for_a_look() {
            eprintln!(
                "keeping mutatingwebhookconfiguration {} (RINGWAY_E2E_KEEP_NAMESPACE)",
                self.name
            );
            return;
        }
        let deleted = self.kubectl.run(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ],
            None,
        );
        if let Err(e) = deleted {
            eprintln!(
                "could not delete mutatingwebhookconfiguration {}: {e:#}",
                self.name
            );
        }
    }
}

/// The chart's webhook, called by `url` instead of its Service, failing
/// closed, for `namespace` alone, without a caBundle.
fn webhook_configuration(name: &str, namespace: &str, port: u16) -> anyhow::Result<Value> {
    Ok(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "clientConfig": { "url": format!("https://localhost:{port}/mutate-pods") },
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "failurePolicy": "Fail",
            "namespaceSelector": { "matchExpressions": [{
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": [namespace],
            }]},
            "matchConditions": [{ "name": "opted-in", "expression": charts_match_condition()? }],
        }],
    }))
}

/// The CEL expression of the chart's match condition, from its template
/// (a literal there, nothing templated).
fn charts_match_condition() -> anyhow::Result<String> {
    let path = repo_file("charts/ringway/templates/webhook.yaml");
    let template =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("expression: "))
        .with_context(|| format!("{} has no match condition expression", path.display()))?;
    serde_json::from_str(line).with_context(|| format!("{line} is not a quoted string"))
}

/// The operator (the only one, so the leader) sets the configuration's
/// caBundle to the CA in its Secret.
fn ca_bundle_set(kubectl: &Kubectl, operator: &mut Operator, name: &str) -> anyhow::Result<()> {
    eventually(operator, "the caBundle to be the Secret's ca.crt", || {
        let secret = kubectl.must_get("secret", SECRET)?;
        let ca = secret
            .pointer("/data/ca.crt")
            .and_then(Value::as_str)
            .context("the Secret has no ca.crt")?;
        let configuration = kubectl.must_get("mutatingwebhookconfiguration", name)?;
        let bundle = configuration
            .pointer("/webhooks/0/clientConfig/caBundle")
            .and_then(Value::as_str);
        // Both are base64 of the same PEM when they agree.
        ensure!(bundle == Some(ca), "the caBundle is {bundle:?}");
        Ok(())
    })
}

/// An application pod (template) labelled `app`, with `annotations`: one
/// container with the named WebSocket port and a readiness probe on that
/// name.
fn app_pod(app: &str, annotations: Value) -> Value {
    json!({
        "metadata": { "labels": { "app": app }, "annotations": annotations },
        "spec": { "containers": [{
            "name": "app",
            "image": "example.invalid/chat:1",
            "ports": [{ "name": APP_PORT_NAME, "containerPort": APP_PORT, "protocol": "TCP" }],
            "readinessProbe": { "httpGet": { "path": "/ready", "port": APP_PORT_NAME } },
        }]},
    })
}

/// A Deployment `name` of `replicas` pods that ask for the sidecar.
pub fn opted_in_deployment(name: &str, replicas: usize) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": app_pod(name, json!({ SIDECAR: APP_PORT_NAME })),
        },
    })
}

/// A Deployment of opted-in pods: the ReplicaSet controller's pods are
/// stored injected, each with its own drain token.
fn deployment_injected(
    kubectl: &Kubectl,
    operator: &mut Operator,
    scratch: &Scratch,
    image: &str,
) -> anyhow::Result<()> {
    let mut deployment = opted_in_deployment(APP, REPLICAS);
    // A small budget, so that the leader's pacing of a drain shows.
    deployment["spec"]["template"]["metadata"]["annotations"][SIDECAR_MAX_CLOSES_PER_SECOND] =
        json!(BUDGET.to_string());
    let file = scratch.write("deployment.json", &deployment.to_string())?;
    kubectl.run(
        &["create", "--namespace", &kubectl.namespace, "-f"],
        Some(&file),
    )?;
    let mut pods = Vec::new();
    eventually(operator, "the Deployment's pods", || {
        let listed = kubectl.json(&["get", "pods", "--selector", &format!("app={APP}")])?;
        pods = listed
            .pointer("/items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        ensure!(pods.len() == REPLICAS, "{} pods", pods.len());
        Ok(())
    })?;
    let tokens = pods
        .iter()
        .map(|pod| injected(pod, image).with_context(|| format!("pod {}", name_of(pod))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        tokens[0] != tokens[1],
        "the two pods share their drain token"
    );
    Ok(())
}

/// Checks a stored pod's sidecar and application container; its drain
/// token.
fn injected(pod: &Value, image: &str) -> anyhow::Result<String> {
    let sidecar = named(pod, "/spec/initContainers", CONTAINER)?;
    ensure!(
        sidecar["restartPolicy"] == "Always",
        "the sidecar's restartPolicy is {}",
        sidecar["restartPolicy"]
    );
    ensure!(
        sidecar["image"] == image,
        "the sidecar's image is {}",
        sidecar["image"]
    );
    let listens = sidecar["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["containerPort"] == LISTEN_PORT && p["name"] == APP_PORT_NAME);
    ensure!(
        listens,
        "the sidecar does not listen on {LISTEN_PORT} named {APP_PORT_NAME}: {}",
        sidecar["ports"]
    );
    let token = drain_token(sidecar)?;
    // The API server's ServiceAccount admission mounted the pod's token in
    // the application, and none in the sidecar, which has an empty volume
    // there.
    let sidecar_mounts = mounts_at(sidecar, SERVICE_ACCOUNT_TOKEN_PATH);
    ensure!(
        sidecar_mounts == [NO_TOKEN_VOLUME],
        "the sidecar mounts {sidecar_mounts:?} at {SERVICE_ACCOUNT_TOKEN_PATH}"
    );

    let app = named(pod, "/spec/containers", "app")?;
    let app_mounts = mounts_at(app, SERVICE_ACCOUNT_TOKEN_PATH);
    ensure!(
        app_mounts.len() == 1 && app_mounts[0].starts_with("kube-api-access-"),
        "the application mounts {app_mounts:?} at {SERVICE_ACCOUNT_TOKEN_PATH}"
    );
    ensure!(
        app["ports"] == json!([{ "containerPort": APP_PORT, "protocol": "TCP" }]),
        "the application's ports are {}",
        app["ports"]
    );
    let probe = &app["readinessProbe"]["httpGet"]["port"];
    ensure!(*probe == APP_PORT, "the readiness probe is on port {probe}");
    let hook = &app["lifecycle"]["preStop"]["httpGet"];
    let header = json!([{ "name": DRAIN_TOKEN_HEADER, "value": token }]);
    ensure!(
        hook["port"] == ADMIN_PORT && hook["path"] == DRAIN_PATH && hook["httpHeaders"] == header,
        "the preStop hook is {hook}"
    );
    Ok(token.to_owned())
}

/// Where Kubernetes mounts a pod's ServiceAccount token.
const SERVICE_ACCOUNT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The empty volume the injector mounts there in the sidecar.
const NO_TOKEN_VOLUME: &str = "ringway-sidecar-no-token";

/// The names of the volumes `container` mounts at `path`.
fn mounts_at<'a>(container: &'a Value, path: &str) -> Vec<&'a str> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == path)
        .filter_map(|m| m["name"].as_str())
        .collect()
}

/// The drain token in `sidecar`'s environment.
fn drain_token(sidecar: &Value) -> anyhow::Result<&str> {
    sidecar["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == DRAIN_TOKEN_ENV)
        .and_then(|e| e["value"].as_str())
        .with_context(|| format!("the sidecar has no {DRAIN_TOKEN_ENV}"))
}

/// The container named `name` in the list at `pointer` of `pod`.
fn named<'a>(pod: &'a Value, pointer: &str, name: &str) -> anyhow::Result<&'a Value> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no container {name} in {pointer}"))
}

fn name_of(pod: &Value) -> &str {
    pod.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

/// Pods created directly (not the ReplicaSet's): one opted in is created
/// with the injector's warning about its grace period shown to kubectl;
/// one without the annotation is stored as it came; one annotated with a
/// port it does not declare is refused, in the injector's words.
fn other_pods(kubectl: &Kubectl, scratch: &Scratch) -> anyhow::Result<()> {
    let pod = |name: &str, annotations: Value| {
        // Not the Deployment's label, or its ReplicaSet would adopt them.
        let mut pod = app_pod("direct", annotations);
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        pod["metadata"]["name"] = json!(name);
        scratch.write(&format!("{name}.json"), &pod.to_string())
    };
    let create = |file: &Path| {
        kubectl.output(
            &["create", "--namespace", &kubectl.namespace, "-f"],
            Some(file),
        )
    };

    let single = create(&pod("single", json!({ SIDECAR: APP_PORT_NAME }))?)?;
    let said = String::from_utf8_lossy(&single.stderr);
    let warning = "Warning: terminationGracePeriodSeconds 30 leaves the sidecar's drain 23 s of its 30 s window";
    ensure!(
        single.status.success() && said.contains(warning),
        "an opted-in pod: want it created with {warning:?}; kubectl said: {}",
        said.trim()
    );
    named(
        &kubectl.must_get("pod", "single")?,
        "/spec/initContainers",
        CONTAINER,
    )?;

    let plain = create(&pod("plain", json!({}))?)?;
    ensure!(
        plain.status.success(),
        "the pod without the annotation was refused: {}",
        String::from_utf8_lossy(&plain.stderr).trim()
    );
    let stored = kubectl.must_get("pod", "plain")?;
    let app = named(&stored, "/spec/containers", "app")?;
    ensure!(
        stored.pointer("/spec/initContainers").is_none()
            && app["ports"][0]["name"] == APP_PORT_NAME
            && app["readinessProbe"]["httpGet"]["port"] == APP_PORT_NAME
            && app.get("lifecycle").is_none(),
        "the pod without the annotation was changed: {}",
        stored["spec"]
    );

    let refused = create(&pod("no-such-port", json!({ SIDECAR: "grpc" }))?)?;
    let said = String::from_utf8_lossy(&refused.stderr);
    let expected = [
        format!("admission webhook \"{WEBHOOK}\" denied the request"),
        "no container of the pod declares a containerPort \"grpc\"".to_owned(),
    ];
    if refused.status.success() || !expected.iter().all(|e| said.contains(e.as_str())) {
        bail!(
            "a pod annotated with a port it lacks: want it refused with {expected:?}; kubectl said: {}",
            said.trim()
        );
    }
    Ok(())
}

/// One of the Deployment's pods stops, its sidecar a real process on this
/// machine (the test plays the kubelet: [`kubelet`]): `ringway-dataplane
/// sidecar` with the pod's own arguments, control files and drain token,
/// in front of `ringway-chat`, with [`CLIENTS`] clients. The pod is made
/// to look running (its IP 127.0.0.1), then deleted, held Terminating by
/// the test's finalizer (an unscheduled pod's deletion has no grace
/// period), and its preStop hook called. The leader paces the drain at the
/// workload's whole budget over the control port (the sidecar counts it
/// paced by the operator), the hook is answered once every client got its
/// 1001, and the leader reports the drain in events on the Deployment and
/// in its counter.
///
/// Needs the control port (`127.0.0.1:15091`) free: the leader dials the
/// pod's IP, here 127.0.0.1, at the port every injected sidecar serves.
/// Runs last: the ReplicaSet replaces the deleted pod, and the injector
/// reviews the new one.
fn drain_paced(
    kubectl: &Kubectl,
    operator: &mut Operator,
    scratch: &Scratch,
    log: &Path,
) -> anyhow::Result<()> {
    kubelet::ensure_control_port_free()?;
    let pod = kubectl
        .json(&["get", "pods", "--selector", &format!("app={APP}")])?
        .pointer("/items/0")
        .cloned()
        .context("the Deployment has no pod")?;
    let name = name_of(&pod).to_owned();
    let spec = named(&pod, "/spec/initContainers", CONTAINER)?;
    let token = drain_token(spec)?.to_owned();
    eventually(operator, "the sidecars' control Secret", || {
        kubectl.must_get("secret", CONTROL_SECRET).map(drop)
    })?;
    kubelet::write_control_files(kubectl, scratch)?;
    let args = kubelet::sidecar_args(spec, &scratch.0)?;

    let runtime = ringway_e2e::process::runtime(Some(2))?;
    let (_app, sidecar) = runtime.block_on(start_pod(&args, &token))?;
    let metric = |line: &str| {
        let metrics = runtime.block_on(sidecar.get("/metrics", ""));
        let family = line.split(['{', ' ']).next().unwrap_or(line);
        let found: Vec<&str> = metrics.lines().filter(|l| l.starts_with(family)).collect();
        ensure!(
            found.contains(&line),
            "the sidecar's /metrics has {found:?}; want {line:?}"
        );
        Ok(())
    };
    eventually(operator, "the sidecar to serve its control port", || {
        metric("ringway_sidecar_control_serving 1")
    })?;
    let clients = runtime.block_on(connect(sidecar.client))?;

    let held = HeldPod::hold(kubectl, &name)?;
    held.running("127.0.0.1")?;
    held.delete()?;
    // The kubelet runs the preStop hook as the pod starts terminating.
    let admin = sidecar.admin;
    let pre_stop = runtime.spawn(async move { pre_stop_with_token(admin, &token).await });
    let stored = kubectl.must_get("pod", &name)?;
    ensure!(
        stored.pointer("/metadata/deletionTimestamp").is_some()
            && stored["metadata"]["finalizers"] == json!([kubelet::FINALIZER]),
        "pod {name} is not held Terminating by the test's finalizer: {}",
        stored["metadata"]
    );
    eventually(
        operator,
        "the sidecar's drain to be paced by the operator",
        || metric("ringway_sidecar_drains_total{paced_by=\"operator\"} 1"),
    )?;

    let answer = runtime.block_on(pre_stop)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("drained\n"),
        "the preStop hook was answered: {answer:?}"
    );
    let closes = runtime.block_on(closes(clients))?;
    let span = closes_paced(&closes)?;
    println!("{CLIENTS} clients closed over {span:.1?} at the leader's pace of {BUDGET}/s");

    drain_reported(kubectl, operator, &name)?;
    outcomes_counted(
        log,
        "ringway_operator_sidecar_drains_total",
        &[("paced", 1), ("drained", 1)],
        "the pacer",
    )
}

/// `ringway-chat` as the pod's application and `ringway-dataplane sidecar`
/// in front of it with `args` and the pod's drain `token`.
async fn start_pod(args: &[String], token: &str) -> anyhow::Result<(EchoProcess, SidecarProcess)> {
    let binaries = Binaries::beside(env!("CARGO_BIN_EXE_ringway-echo"))?;
    let chat = Path::new(env!("CARGO_BIN_EXE_ringway-chat"));
    let app = EchoProcess::start(chat, APP, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let sidecar =
        SidecarProcess::start_with_token(&binaries.dataplane, app.address.port(), args, token)
            .await?;
    Ok((app, sidecar))
}

/// How a client's connection ended: its close code and reason, and when.
type Close = (u16, String, Instant);

/// Connects [`CLIENTS`] chat clients through the sidecar at `address`,
/// each in a room of its own and past its welcome; each reads until its
/// connection ends.
async fn connect(address: SocketAddr) -> anyhow::Result<Vec<JoinHandle<Close>>> {
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let url = format!("ws://{address}/chat?room=drain{i}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("client {i} connecting through the sidecar"))?;
        let welcome = timeout(DEADLINE, ws.next()).await;
        ensure!(
            matches!(welcome, Ok(Some(Ok(Message::Text(_))))),
            "client {i} got no welcome: {welcome:?}"
        );
        clients.push(tokio::spawn(async move {
            while let Some(message) = ws.next().await {
                if let Ok(Message::Close(frame)) = message {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return (code, reason, Instant::now());
                }
            }
            (1006, String::new(), Instant::now())
        }));
    }
    Ok(clients)
}

/// How each client's connection ended, within [`DEADLINE`].
async fn closes(clients: Vec<JoinHandle<Close>>) -> anyhow::Result<Vec<Close>> {
    let ended = timeout(DEADLINE, futures_util::future::join_all(clients))
        .await
        .context("the clients' connections did not all end")?;
    Ok(ended.into_iter().collect::<Result<_, _>>()?)
}

/// Every client got 1001 with the reconnect hint, and the closes went at
/// the leader's pace: about `(CLIENTS - 1) / BUDGET` seconds from the first
/// to the last, not all at once and not spread over the drain's window
/// (30 s) as the sidecar's own pacing would. Returns that span.
fn closes_paced(closes: &[Close]) -> anyhow::Result<Duration> {
    for (code, reason, _) in closes {
        ensure!(
            *code == 1001 && reason.starts_with("pod stopping; retry-after-ms="),
            "a client got {code} {reason:?}; want 1001 with the reconnect hint"
        );
    }
    let times = closes.iter().map(|c| c.2);
    let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
        bail!("no client was connected");
    };
    let span = last - first;
    let paced = Duration::from_secs_f64((CLIENTS - 1) as f64 / f64::from(BUDGET));
    ensure!(
        span >= paced.mul_f64(0.8) && span <= paced * 4,
        "the {CLIENTS} closes took {span:?}; at the leader's pace of {BUDGET}/s they take about {paced:?}"
    );
    Ok(span)
}

/// The leader's events on the Deployment (by its uid), read as
/// `kubectl describe` does: the drain of pod `pod` paced at the whole
/// budget (it drains alone), then done.
fn drain_reported(kubectl: &Kubectl, operator: &mut Operator, pod: &str) -> anyhow::Result<()> {
    let uid = kubectl
        .must_get("deployment", APP)?
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("the Deployment has no uid")?;
    let wanted = [
        (
            "SidecarDrainPaced",
            format!(
                "pod {pod}: draining {CLIENTS} client(s) at {BUDGET}/s, its share of the \
                 workload's budget of {BUDGET}/s with 1 pod(s) draining"
            ),
        ),
        (
            "SidecarDrained",
            format!("pod {pod}: all {CLIENTS} client(s) drained in "),
        ),
    ];
    eventually(operator, "the drain's events on the Deployment", || {
        let events = kubectl.json(&["get", "events.v1.events.k8s.io"])?;
        let on_deployment: Vec<(&str, &str)> = events
            .pointer("/items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| {
                e["regarding"]["kind"] == "Deployment"
                    && e["regarding"]["name"] == APP
                    && e["regarding"]["uid"] == uid.as_str()
            })
            .map(|e| {
                let text = |field: &str| e[field].as_str().unwrap_or_default();
                (text("reason"), text("note"))
            })
            .collect();
        for (reason, note) in &wanted {
            ensure!(
                on_deployment
                    .iter()
                    .any(|(r, n)| r == reason && n.starts_with(note.as_str())),
                "no event {reason} {note:?} on the Deployment; it has {on_deployment:?}"
            );
        }
        Ok(())
    })
}
