//! What a user sees of a gateway once the operator acts: the children
//! `examples/gateway-minimal.yaml` becomes, its status, its NetworkPolicy
//! when asked for, and a canary.

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::{
    kubectl::Kubectl,
    operator::{Operator, eventually},
    repo_file,
};

/// Applies `examples/gateway-minimal.yaml` in the kubectl's namespace and
/// waits for the operator to make its children and status; returns the
/// gateway's name. An error leaves the cluster as it was for
/// [`Kubectl::dump`].
pub fn gateway_children(kubectl: &Kubectl, operator: &mut Operator) -> anyhow::Result<String> {
    let example = repo_file("examples/gateway-minimal.yaml");
    let applied = kubectl
        .run(
            &[
                "apply",
                "--namespace",
                &kubectl.namespace,
                "--output=json",
                "-f",
            ],
            Some(&example),
        )
        .context("applying the example gateway")?;
    let applied: Value = serde_json::from_str(&applied).context("kubectl apply: not JSON")?;
    // The example's one object; its name is the prefix of every child.
    let gateway = applied
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("kubectl apply did not print the gateway")?;
    let shards = kubectl
        .get("websocketgateways.ringway.dev", &gateway)?
        .context("the gateway is gone")?
        .pointer("/spec/shards")
        .and_then(Value::as_i64)
        .context("the gateway has no spec.shards (the CRD defaults it)")?;

    eventually(operator, "StatefulSet <gateway>-a", || {
        let sts = kubectl.must_get("statefulset", &format!("{gateway}-a"))?;
        let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64);
        ensure!(
            replicas == Some(shards),
            "replicas {replicas:?}, not spec.shards = {shards}"
        );
        check_security_context(&sts)
    })?;
    eventually(operator, "the client and peer Services", || {
        kubectl.must_get("service", &gateway)?;
        let peer = kubectl.must_get("service", &format!("{gateway}-peer"))?;
        let cluster_ip = peer.pointer("/spec/clusterIP").and_then(Value::as_str);
        ensure!(
            cluster_ip == Some("None"),
            "the peer Service is not headless: clusterIP {cluster_ip:?}"
        );
        Ok(())
    })?;
    eventually(operator, "the PodDisruptionBudget", || {
        kubectl.must_get("poddisruptionbudget", &gateway).map(drop)
    })?;
    eventually(operator, "the control-channel Secrets", || {
        let control = kubectl.must_get("secret", &format!("{gateway}-control"))?;
        for key in ["ca.crt", "tls.crt", "tls.key", "token"] {
            let value = control.pointer("/data").and_then(|data| data.get(key));
            ensure!(
                value.and_then(Value::as_str).is_some_and(|v| !v.is_empty()),
                "Secret {gateway}-control has no {key}"
            );
        }
        kubectl
            .must_get("secret", &format!("{gateway}-control-ca"))
            .map(drop)
    })?;
    eventually(operator, "the gateway's status", || {
        let gw = kubectl.must_get("websocketgateways.ringway.dev", &gateway)?;
        let generation = gw.pointer("/metadata/generation").and_then(Value::as_i64);
        let observed = gw
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        ensure!(
            observed.is_some() && observed == generation,
            "status.observedGeneration {observed:?}, metadata.generation {generation:?}"
        );
        ensure!(
            condition(&gw, "Ready").is_some(),
            "no Ready condition in {}",
            gw.pointer("/status").unwrap_or(&Value::Null)
        );
        Ok(())
    })?;
    hook_waits(kubectl, &gateway)?;

    Ok(gateway)
}

/// The two waits docs/canary.md gives a hook that must not scale anything
/// down while a version still carries clients: the stable version is the
/// image it expects, and nothing is leaving (`Drained`, `NoVersionLeaving`
/// on a gateway at rest). `kubectl wait` against the real API server, as
/// the hook would run them.
fn hook_waits(kubectl: &Kubectl, gateway: &str) -> anyhow::Result<()> {
    let object = format!("websocketgateways.ringway.dev/{gateway}");
    let gw = kubectl.must_get("websocketgateways.ringway.dev", gateway)?;
    let image = gw
        .pointer("/status/stable/image")
        .and_then(Value::as_str)
        .context("no status.stable.image")?;
    let stable = format!("jsonpath={{.status.stable.image}}={image}");
    for wait_for in [stable.as_str(), "condition=Drained"] {
        let flag = format!("--for={wait_for}");
        kubectl
            .run(
                &[
                    "wait",
                    "--namespace",
                    &kubectl.namespace,
                    &object,
                    &flag,
                    "--timeout=60s",
                ],
                None,
            )
            .with_context(|| format!("kubectl wait {flag}"))?;
    }
    let gw = kubectl.must_get("websocketgateways.ringway.dev", gateway)?;
    let drained = condition(&gw, "Drained").context("no Drained condition")?;
    ensure!(
        drained.pointer("/reason").and_then(Value::as_str) == Some("NoVersionLeaving"),
        "Drained at rest: {drained}"
    );
    println!("ok: kubectl wait for the stable image and for Drained");
    Ok(())
}

/// Turns `spec.networkPolicy` on (with a scraper, as
/// `examples/gateway-full.yaml` does): the API server must accept the
/// NetworkPolicy the operator makes, one ingress rule per port by name;
/// then off: the operator deletes it.
pub fn network_policy(
    kubectl: &Kubectl,
    operator: &mut Operator,
    gateway: &str,
) -> anyhow::Result<()> {
    let scraper = json!({
        "namespaceSelector": {"kubernetes.io/metadata.name": "monitoring"},
        "podSelector": {"app.kubernetes.io/name": "prometheus"},
    });
    let enable =
        json!({ "spec": { "networkPolicy": { "enabled": true, "metricsFrom": [scraper] } } });
    patch_gateway(kubectl, gateway, &enable)?;
    eventually(operator, "NetworkPolicy <gateway>", || {
        let policy = kubectl.must_get("networkpolicy", gateway)?;
        let types = policy.pointer("/spec/policyTypes").cloned();
        ensure!(
            types == Some(json!(["Ingress"])),
            "policyTypes {types:?}, not [Ingress]"
        );
        let ports: Vec<&str> = policy
            .pointer("/spec/ingress")
            .and_then(Value::as_array)
            .context("no ingress rules")?
            .iter()
            .filter_map(|rule| rule.pointer("/ports/0/port").and_then(Value::as_str))
            .collect();
        ensure!(
            ports == ["client", "peer", "control", "admin"],
            "ingress rules for ports {ports:?}, not client, peer, control and admin"
        );
        let admin_from = policy.pointer("/spec/ingress/3/from/0").cloned();
        let expected = json!({
            "namespaceSelector": {"matchLabels": scraper["namespaceSelector"]},
            "podSelector": {"matchLabels": scraper["podSelector"]},
        });
        ensure!(
            admin_from.as_ref() == Some(&expected),
            "the admin port admits {admin_from:?}, not the scraper {expected}"
        );
        Ok(())
    })?;
    let disable = json!({ "spec": { "networkPolicy": { "enabled": false } } });
    patch_gateway(kubectl, gateway, &disable)?;
    eventually(operator, "NetworkPolicy <gateway> deleted", || {
        let left = kubectl.get("networkpolicy", gateway)?;
        ensure!(left.is_none(), "NetworkPolicy {gateway} is still there");
        Ok(())
    })
}

/// A JSON merge patch of the gateway's spec.
fn patch_gateway(kubectl: &Kubectl, gateway: &str, patch: &Value) -> anyhow::Result<()> {
    kubectl
        .run(
            &[
                "patch",
                "--namespace",
                &kubectl.namespace,
                &format!("websocketgateways.ringway.dev/{gateway}"),
                "--type=merge",
                "--patch",
                &patch.to_string(),
            ],
            None,
        )
        .map(drop)
        .with_context(|| format!("patching the gateway with {patch}"))
}

/// Starts a canary of `gateway`: the annotation first, then the new image.
pub fn canary_steps(
    kubectl: &Kubectl,
    operator: &mut Operator,
    gateway: &str,
    canary_image: &str,
) -> anyhow::Result<()> {
    kubectl.run(
        &[
            "annotate",
            "--namespace",
            &kubectl.namespace,
            "--overwrite",
            &format!("websocketgateways.ringway.dev/{gateway}"),
            "ringway.dev/rollout=canary",
        ],
        None,
    )?;
    patch_gateway(
        kubectl,
        gateway,
        &json!({ "spec": { "image": canary_image } }),
    )?;
    eventually(operator, "the canary's StatefulSet <gateway>-b", || {
        let sts = kubectl.must_get("statefulset", &format!("{gateway}-b"))?;
        check_security_context(&sts)
    })?;
    eventually(operator, "status.canary.phase", || {
        let gw = kubectl.must_get("websocketgateways.ringway.dev", gateway)?;
        let phase = gw.pointer("/status/canary/phase").and_then(Value::as_str);
        ensure!(
            phase.is_some_and(|p| !p.is_empty()),
            "no canary phase in {}",
            gw.pointer("/status").unwrap_or(&Value::Null)
        );
        Ok(())
    })?;
    analysis_status_is_kept(kubectl, gateway)
}

/// The API server keeps the analysis's figures and an aborted canary in
/// the status as the operator writes them (a dry run: the operator's own
/// status stays as it is).
fn analysis_status_is_kept(kubectl: &Kubectl, gateway: &str) -> anyhow::Result<()> {
    let figures = json!({"connectionMinutes": 120, "upgrades": 300, "restarts": 0,
        "events": {"tooBigCloses": 60}});
    let patch = json!({"status": {
        "canary": {"analysis": {"since": "2026-12-06T12:00:00Z",
            "verdict": "worse than stable: closes with 1009", "stable": {"connectionMinutes": 900,
            "upgrades": 2000, "restarts": 0}, "canary": figures}},
        "aborted": {"revision": "0123456789abcdef", "image": "img:2",
            "reason": "closes with 1009 (message too big): canary 0.500, stable 0",
            "at": "2026-12-06T12:05:00Z"}}});
    let out = kubectl
        .run(
            &[
                "patch",
                "--namespace",
                &kubectl.namespace,
                &format!("websocketgateways.ringway.dev/{gateway}"),
                "--subresource=status",
                "--type=merge",
                "--dry-run=server",
                "--output=json",
                "--patch",
                &patch.to_string(),
            ],
            None,
        )
        .context("a dry-run status patch with the analysis and an aborted canary")?;
    let gw: Value = serde_json::from_str(&out).context("kubectl patch: not JSON")?;
    let kept = (
        gw.pointer("/status/canary/analysis/canary/events/tooBigCloses"),
        gw.pointer("/status/aborted/reason").and_then(Value::as_str),
    );
    ensure!(
        kept.0 == Some(&json!(60)) && kept.1.is_some_and(|r| r.starts_with("closes with 1009")),
        "the API server did not keep the analysis or the abort: {}",
        gw.pointer("/status").unwrap_or(&Value::Null)
    );
    Ok(())
}

/// Every container of the StatefulSet's pods runs as non-root (by its own
/// or the pod's security context) on a read-only root filesystem.
fn check_security_context(sts: &Value) -> anyhow::Result<()> {
    let pod = sts
        .pointer("/spec/template/spec")
        .context("no pod template")?;
    let pod_non_root = pod
        .pointer("/securityContext/runAsNonRoot")
        .and_then(Value::as_bool);
    let containers = pod
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .context("no containers")?;
    for container in containers {
        let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
        let non_root = container
            .pointer("/securityContext/runAsNonRoot")
            .and_then(Value::as_bool)
            .or(pod_non_root);
        ensure!(non_root == Some(true), "container {name} may run as root");
        let read_only = container
            .pointer("/securityContext/readOnlyRootFilesystem")
            .and_then(Value::as_bool);
        ensure!(
            read_only == Some(true),
            "container {name} has a writable root filesystem"
        );
    }
    Ok(())
}

/// The condition of `type_` in the object's `status.conditions`.
fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}
