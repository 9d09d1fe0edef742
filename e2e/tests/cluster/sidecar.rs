//! The sidecar injector called by a real API server: the operator serves
//! its webhook on loopback, reached by a MutatingWebhookConfiguration's
//! `url` (`https://localhost:<port>`, hence `--webhook-dns-name localhost`)
//! with no caBundle until the operator sets it, `failurePolicy: Fail` (a
//! webhook that cannot answer fails the test instead of admitting pods
//! unchanged) and the chart's match condition. A Deployment's pods, made
//! by the ReplicaSet controller (they never run: there need be no kubelet),
//! are stored with their sidecar; a pod without the annotation is stored
//! unchanged, and one annotated with a port it lacks is refused.

use std::{net::TcpListener, path::Path};

use anyhow::{Context, bail, ensure};
use ringway_crds::annotations::SIDECAR;
use ringway_dataplane_api::sidecar::{
    ADMIN_PORT, CONTAINER, DRAIN_PATH, DRAIN_TOKEN_ENV, DRAIN_TOKEN_HEADER, LISTEN_PORT,
};
use serde_json::{Value, json};

use super::{
    chart::Scratch,
    judge_run,
    kubectl::{Kubectl, fresh_name, keep_for_a_look},
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
        .and_then(|()| reviews_counted(&log));
    judge_run(operator, &log, steps, kubectl, "the operator")
}

/// The operator's counters: the Deployment's pods and the direct opted-in
/// pod injected, the bad one denied. Each injected pod is reviewed a second
/// time and left unchanged: the API server reinvokes its own ServiceAccount
/// plugin after a webhook's change, that plugin mounts the token into the
/// new sidecar too, and that change reinvokes this `IfNeeded` webhook. No
/// other review: the match condition kept the plain pod away.
fn reviews_counted(log: &Path) -> anyhow::Result<()> {
    const COUNTER: &str = "ringway_operator_sidecar_injections_total";
    let (status, metrics) = http_get(health_address(log)?, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    let mut counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{COUNTER}{{")))
        .collect();
    counted.sort_unstable();
    let injected = REPLICAS + 1;
    let mut wanted = [
        ("injected", injected),
        ("unchanged", injected),
        ("denied", 1),
    ]
    .map(|(outcome, count)| format!("{COUNTER}{{outcome=\"{outcome}\"}} {count}"));
    wanted.sort_unstable();
    ensure!(
        counted == wanted,
        "the injector counted {counted:?}; want {wanted:?}"
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
    let deployment = opted_in_deployment(APP, REPLICAS);
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
    let token = sidecar["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == DRAIN_TOKEN_ENV)
        .and_then(|e| e["value"].as_str())
        .with_context(|| format!("the sidecar has no {DRAIN_TOKEN_ENV}"))?;

    let app = named(pod, "/spec/containers", "app")?;
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
