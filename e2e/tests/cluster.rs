//! The operator against a real cluster: the CRD, the `ringway-operator`
//! binary watching a fresh namespace, and `examples/gateway-minimal.yaml`.
//! It checks what `kubectl` shows a user: the children the gateway becomes,
//! its status, and a canary slot once the image changes under
//! `ringway.dev/rollout: canary`.
//!
//! Runs only when `RINGWAY_E2E_KUBECONFIG` names a kubeconfig; otherwise it
//! says so and passes. The data-plane image (`RINGWAY_E2E_IMAGE`) need not
//! be pullable: nothing here waits for pods to become ready. The namespace
//! `ringway-e2e-<random>` is deleted at the end, on failure too (set
//! `RINGWAY_E2E_KEEP_NAMESPACE=1` to keep it for a look). The CRD is
//! applied and left installed.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

const SKIPPED: &str = "skipped: no cluster (set RINGWAY_E2E_KUBECONFIG to run the cluster tests)";

/// The data-plane image when `RINGWAY_E2E_IMAGE` is not set.
const DEFAULT_IMAGE: &str = "ghcr.io/ringway-dev/ringway-dataplane:0.1.0";
/// The image the canary step switches to, unless `RINGWAY_E2E_CANARY_IMAGE`
/// says otherwise.
const DEFAULT_CANARY_IMAGE: &str = "ghcr.io/ringway-dev/ringway-dataplane:0.1.0-canary";
/// How long the operator may take to make each expectation true.
const DEADLINE: Duration = Duration::from_secs(60);
/// Between two looks at the cluster.
const POLL_EVERY: Duration = Duration::from_secs(1);

#[test]
fn a_gateway_becomes_its_children_and_a_canary() -> anyhow::Result<()> {
    let Some(kubeconfig) = std::env::var_os("RINGWAY_E2E_KUBECONFIG").filter(|k| !k.is_empty())
    else {
        println!("{SKIPPED}");
        return Ok(());
    };
    let image = env_or("RINGWAY_E2E_IMAGE", DEFAULT_IMAGE);
    let canary_image = env_or("RINGWAY_E2E_CANARY_IMAGE", DEFAULT_CANARY_IMAGE);
    ensure!(
        image != canary_image,
        "RINGWAY_E2E_IMAGE and RINGWAY_E2E_CANARY_IMAGE must differ"
    );
    let operator_bin = operator_binary()?;

    let kubectl = Kubectl {
        kubeconfig: kubeconfig.clone(),
        namespace: format!("ringway-e2e-{:08x}", fastrand::u32(..)),
    };
    kubectl
        .run(
            &["apply", "--server-side", "--force-conflicts", "-f"],
            Some(&repo_file("crds/websocketgateway.yaml")),
        )
        .context("applying the CRD")?;
    kubectl.run(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/websocketgateways.ringway.dev",
        ],
        None,
    )?;
    // Dropped in reverse order: the operator stops before its namespace goes.
    let _namespace = kubectl.create_namespace()?;
    let mut operator = Operator::start(&operator_bin, &kubeconfig, &kubectl.namespace, &image)?;

    let result = gateway_steps(&kubectl, &mut operator, &canary_image);
    if result.is_err() {
        kubectl.dump();
    }
    result
}

/// Everything after the operator started; an error leaves the cluster as
/// it was for [`Kubectl::dump`].
fn gateway_steps(
    kubectl: &Kubectl,
    operator: &mut Operator,
    canary_image: &str,
) -> anyhow::Result<()> {
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

    // A canary: the annotation first, then the new image.
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
    let patch = serde_json::json!({ "spec": { "image": canary_image } }).to_string();
    kubectl.run(
        &[
            "patch",
            "--namespace",
            &kubectl.namespace,
            &format!("websocketgateways.ringway.dev/{gateway}"),
            "--type=merge",
            "--patch",
            &patch,
        ],
        None,
    )?;
    eventually(operator, "the canary's StatefulSet <gateway>-b", || {
        let sts = kubectl.must_get("statefulset", &format!("{gateway}-b"))?;
        check_security_context(&sts)
    })?;
    eventually(operator, "status.canary.phase", || {
        let gw = kubectl.must_get("websocketgateways.ringway.dev", &gateway)?;
        let phase = gw.pointer("/status/canary/phase").and_then(Value::as_str);
        ensure!(
            phase.is_some_and(|p| !p.is_empty()),
            "no canary phase in {}",
            gw.pointer("/status").unwrap_or(&Value::Null)
        );
        Ok(())
    })?;
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

/// Retries `check` until it passes or [`DEADLINE`] runs out; fails at once
/// if the operator exits.
fn eventually(
    operator: &mut Operator,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let outcome = check();
        match outcome {
            Ok(()) => {
                println!("ok: {what} after {:.1?}", started.elapsed());
                return Ok(());
            }
            Err(e) if started.elapsed() >= DEADLINE => {
                return Err(e.context(format!("waited {DEADLINE:?} for {what}")));
            }
            Err(_) => {}
        }
        operator
            .ensure_running()
            .with_context(|| format!("waiting for {what}"))?;
        std::thread::sleep(POLL_EVERY);
    }
}

/// `kubectl` with the test's kubeconfig.
struct Kubectl {
    kubeconfig: OsString,
    /// The test's namespace.
    namespace: String,
}

impl Kubectl {
    fn command(&self) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s");
        command
    }

    /// Runs `kubectl <args> [file]`; fails with kubectl's stderr.
    fn run(&self, args: &[&str], file: Option<&Path>) -> anyhow::Result<String> {
        let mut command = self.command();
        command.args(args);
        if let Some(file) = file {
            command.arg(file);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .context("running kubectl (is it installed?)")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("kubectl printed something other than UTF-8")
    }

    /// `kind/name` in the test's namespace, `None` if it does not exist.
    fn get(&self, kind: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let out = self.run(
            &[
                "get",
                "--namespace",
                &self.namespace,
                "--ignore-not-found",
                "--output=json",
                kind,
                name,
            ],
            None,
        )?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&out)
            .map(Some)
            .with_context(|| format!("kubectl get {kind} {name}: not JSON"))
    }

    /// `kind/name`, which must exist.
    fn must_get(&self, kind: &str, name: &str) -> anyhow::Result<Value> {
        self.get(kind, name)?
            .with_context(|| format!("{kind} {name} does not exist"))
    }

    /// Creates the test's namespace; it is deleted when the guard drops.
    fn create_namespace(&self) -> anyhow::Result<NamespaceGuard<'_>> {
        self.run(&["create", "namespace", &self.namespace], None)
            .context("creating the test namespace")?;
        println!("namespace {}", self.namespace);
        Ok(NamespaceGuard(self))
    }

    /// Prints what the namespace holds, to see why a step failed.
    fn dump(&self) {
        for args in [
            &[
                "get",
                "websocketgateways.ringway.dev,statefulsets,services,poddisruptionbudgets,secrets,pods",
                "--output=wide",
            ][..],
            &["get", "websocketgateways.ringway.dev", "--output=yaml"],
            &["get", "events", "--sort-by=.lastTimestamp"],
        ] {
            let mut all = args.to_vec();
            all.extend(["--namespace", &self.namespace]);
            match self.run(&all, None) {
                Ok(out) => eprintln!("$ kubectl {}\n{out}", all.join(" ")),
                Err(e) => eprintln!("{e:#}"),
            }
        }
    }
}

/// Deletes the test's namespace when dropped, whatever happened.
struct NamespaceGuard<'a>(&'a Kubectl);

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        let namespace = &self.0.namespace;
        if std::env::var_os("RINGWAY_E2E_KEEP_NAMESPACE").is_some_and(|v| !v.is_empty()) {
            eprintln!("keeping namespace {namespace} (RINGWAY_E2E_KEEP_NAMESPACE)");
            return;
        }
        let deleted = self.0.run(
            &[
                "delete",
                "namespace",
                namespace,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
        if let Err(e) = deleted {
            eprintln!("could not delete namespace {namespace}: {e:#}");
        }
    }
}

/// The `ringway-operator` process, killed when dropped.
struct Operator(Child);

impl Operator {
    fn start(
        binary: &Path,
        kubeconfig: &OsString,
        namespace: &str,
        image: &str,
    ) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args([
                "--namespace",
                namespace,
                "--leader-election=false",
                "--image",
                image,
                "--metrics-address",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,ringway_operator=debug".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self(child))
    }

    /// Fails if the operator has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("ringway-operator exited: {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ringway-operator` beside this package's binaries in the same target
/// directory, unless `RINGWAY_OPERATOR_BIN` says otherwise.
fn operator_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("RINGWAY_OPERATOR_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_BIN_EXE_ringway-echo")).with_file_name("ringway-operator"),
    };
    ensure!(
        path.exists(),
        "{} does not exist: build it first (`cargo build -p ringway-operator`), or set RINGWAY_OPERATOR_BIN",
        path.display()
    );
    Ok(path)
}

/// A file of the repository, from its root.
fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
