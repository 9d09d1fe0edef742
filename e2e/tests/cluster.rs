//! The operator against a real cluster, and the install path a user takes:
//!
//! - `a_gateway_becomes_its_children_and_a_canary`: the CRD, the
//!   `ringway-operator` binary (the test's own kubeconfig) watching a fresh
//!   namespace, and `examples/gateway-minimal.yaml`: the children it
//!   becomes, its status, its NetworkPolicy while `spec.networkPolicy` is
//!   on (deleted when turned off), and a canary slot once the image
//!   changes under `ringway.dev/rollout: canary`.
//! - `the_api_server_accepts_every_example_and_refuses_every_invalid_manifest`:
//!   a server-side dry run with strict field validation of every example
//!   gateway (accepted) and every `crds/tests/invalid/` manifest (refused
//!   with its `# expect:` text, in the API server's words).
//! - `the_chart_with_its_defaults_runs_an_operator_that_needs_nothing_more`
//!   and `the_chart_without_its_crd_runs_an_operator_confined_to_its_namespace`:
//!   `helm install` of `charts/ringway` (through helm-sdkpy, by
//!   `e2e/cluster/helm_install.py`), then the operator binary as the
//!   chart's ServiceAccount (its own token, the chart's flags): the example
//!   gateway's children appear and no request of the operator is refused.
//! - `the_api_server_sends_opted_in_pods_to_the_injector`: the operator's
//!   sidecar injector called by the API server through a
//!   MutatingWebhookConfiguration whose caBundle the operator sets: a
//!   Deployment's pods are stored with their sidecar, other pods unchanged,
//!   a pod asking for a port it lacks refused; then one of the pods stops,
//!   its sidecar a real process (the test plays the kubelet), and the
//!   operator paces its drain at the workload's budget over the control
//!   port (`127.0.0.1:15091`, which must be free) and reports it in events
//!   on the Deployment.
//!
//! Each runs only when `RINGWAY_E2E_KUBECONFIG` names a kubeconfig;
//! otherwise it says so and passes. The data-plane image
//! (`RINGWAY_E2E_IMAGE`) need not be pullable: nothing here waits for pods
//! to become ready. Every test has its own namespaces
//! (`ringway-e2e-<random>`) and Helm releases, removed at the end, on
//! failure too (`RINGWAY_E2E_KEEP_NAMESPACE=1` keeps them for a look). The
//! CRD is applied and left installed.

// The crate root is this file, so its modules' files are named by path.
#[path = "cluster/chart.rs"]
mod chart;
#[path = "cluster/gateway.rs"]
mod gateway;
#[path = "cluster/kubectl.rs"]
mod kubectl;
#[path = "cluster/kubelet.rs"]
mod kubelet;
#[path = "cluster/manifests.rs"]
mod manifests;
#[path = "cluster/operator.rs"]
mod operator;
#[path = "cluster/sidecar.rs"]
mod sidecar;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use chart::{Install, Release, Scratch};
use gateway::{canary_steps, gateway_children, network_policy};
use kubectl::{Kubectl, fresh_name};
use operator::{
    Operator, eventually, health_address, http_status, operator_binary, refused_lines, wait_until,
};

const SKIPPED: &str = "skipped: no cluster (set RINGWAY_E2E_KUBECONFIG to run the cluster tests)";

/// The data-plane image when `RINGWAY_E2E_IMAGE` is not set.
const DEFAULT_IMAGE: &str = "ghcr.io/ringway-dev/ringway-dataplane:0.1.0";
/// The image the canary step switches to, unless `RINGWAY_E2E_CANARY_IMAGE`
/// says otherwise.
const DEFAULT_CANARY_IMAGE: &str = "ghcr.io/ringway-dev/ringway-dataplane:0.1.0-canary";
/// How long the operator may take to make each expectation true; also the
/// bound on each `helm install` or uninstall.
const DEADLINE: Duration = Duration::from_secs(60);
/// Between two looks at the cluster.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The kubeconfig of `RINGWAY_E2E_KUBECONFIG`; `None` (having said the
/// test is skipped) when there is none.
fn cluster() -> Option<OsString> {
    let kubeconfig = std::env::var_os("RINGWAY_E2E_KUBECONFIG").filter(|k| !k.is_empty());
    if kubeconfig.is_none() {
        println!("{SKIPPED}");
    }
    kubeconfig
}

/// `kubectl` for the cluster, in a fresh namespace (not yet created).
fn fresh_kubectl(kubeconfig: &OsString) -> Kubectl {
    Kubectl {
        kubeconfig: kubeconfig.clone(),
        namespace: fresh_name(),
    }
}

#[test]
fn a_gateway_becomes_its_children_and_a_canary() -> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    let image = env_or("RINGWAY_E2E_IMAGE", DEFAULT_IMAGE);
    let canary_image = env_or("RINGWAY_E2E_CANARY_IMAGE", DEFAULT_CANARY_IMAGE);
    ensure!(
        image != canary_image,
        "RINGWAY_E2E_IMAGE and RINGWAY_E2E_CANARY_IMAGE must differ"
    );
    let operator_bin = operator_binary()?;

    let kubectl = fresh_kubectl(&kubeconfig);
    install_crd(&kubectl)?;
    // Dropped in reverse order: the operator stops before its namespace goes.
    let _namespace = kubectl.create_namespace()?;
    let mut operator = Operator::start(&operator_bin, &kubeconfig, &kubectl.namespace, &image)?;

    let result = gateway_children(&kubectl, &mut operator).and_then(|gateway| {
        network_policy(&kubectl, &mut operator, &gateway)?;
        canary_steps(&kubectl, &mut operator, &gateway, &canary_image)
    });
    if result.is_err() {
        kubectl.dump();
    }
    result
}

#[test]
fn the_api_server_accepts_every_example_and_refuses_every_invalid_manifest() -> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    let kubectl = fresh_kubectl(&kubeconfig);
    install_crd(&kubectl)?;
    let _namespace = kubectl.create_namespace()?;
    let mismatches = manifests::dry_run_mismatches(&kubectl)?;
    if !mismatches.is_empty() {
        bail!(
            "{} manifest verdicts differ from what the repository expects:\n- {}",
            mismatches.len(),
            mismatches.join("\n- ")
        );
    }
    Ok(())
}

#[test]
fn the_chart_with_its_defaults_runs_an_operator_that_needs_nothing_more() -> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    let operator_bin = operator_binary()?;
    let kubectl = fresh_kubectl(&kubeconfig);
    let _namespace = kubectl.create_namespace()?;
    let release = install_with_crd(&kubectl, &[])?;
    // The chart watches all namespaces; the gateway lives in the release's.
    as_the_charts_operator(&release, &kubectl, &kubectl, &operator_bin, None)
}

/// Installs the chart with its CRD and `set`, and waits for the CRD to be
/// served.
fn install_with_crd<'a>(kubectl: &'a Kubectl, set: &'a [&'a str]) -> anyhow::Result<Release<'a>> {
    chart::ensure_helm_sdkpy()?;
    // The chart installs the CRD as a template. Other tests apply it too and
    // leave it installed, so it may exist without Helm's ownership labels,
    // which Helm refuses unless told to adopt it.
    let release = Release::install(
        kubectl,
        Install {
            take_ownership: true,
            set,
            ..Install::default()
        },
    )?;
    wait_crd_established(kubectl)?;
    Ok(release)
}

#[test]
fn the_chart_with_the_sidecar_injector_runs_an_operator_that_needs_nothing_more()
-> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    let operator_bin = operator_binary()?;
    let kubectl = fresh_kubectl(&kubeconfig);
    let _namespace = kubectl.create_namespace()?;
    let release = install_with_crd(&kubectl, &["sidecarInjector.enabled=true"])?;
    // The chart's webhook never sees the release's own namespace, so this
    // opted-in Deployment's pods start without their sidecar: the
    // operator's audit must report them.
    let scratch = Scratch::new()?;
    let deployment = sidecar::opted_in_deployment(UNINJECTED, 2);
    let file = scratch.write("deployment.json", &deployment.to_string())?;
    kubectl.run(
        &["create", "--namespace", &kubectl.namespace, "-f"],
        Some(&file),
    )?;
    // The webhook's Secret and caBundle, and the audit's lists of
    // workloads and pods and its event, all as the chart's ServiceAccount.
    as_the_charts_operator(
        &release,
        &kubectl,
        &kubectl,
        &operator_bin,
        Some(UNINJECTED),
    )
}

/// The Deployment whose pods start without their sidecar.
const UNINJECTED: &str = "chat-uninjected";

#[test]
fn the_chart_without_its_crd_runs_an_operator_confined_to_its_namespace() -> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    chart::ensure_helm_sdkpy()?;
    let operator_bin = operator_binary()?;
    let operators = fresh_kubectl(&kubeconfig);
    let gateways = fresh_kubectl(&kubeconfig);
    install_crd(&operators)?;
    let _operators_namespace = operators.create_namespace()?;
    let _gateways_namespace = gateways.create_namespace()?;
    // With watchNamespaces the chart grants its rules by a Role in each
    // watched namespace and passes --namespace; the Lease stays in the
    // release's namespace.
    let release = Release::install(
        &operators,
        Install {
            set: &["crds.install=false"],
            values: Some(json!({ "watchNamespaces": [gateways.namespace] })),
            ..Install::default()
        },
    )?;
    let crd = operators.must_get("crd", "websocketgateways.ringway.dev")?;
    let owner = crd
        .pointer("/metadata/annotations/meta.helm.sh~1release-name")
        .and_then(Value::as_str);
    ensure!(
        owner != Some(release.name.as_str()),
        "crds.install=false, yet release {} took the CRD",
        release.name
    );
    as_the_charts_operator(&release, &operators, &gateways, &operator_bin, None)
}

#[test]
fn the_api_server_sends_opted_in_pods_to_the_injector() -> anyhow::Result<()> {
    let Some(kubeconfig) = cluster() else {
        return Ok(());
    };
    let operator_bin = operator_binary()?;
    let kubectl = fresh_kubectl(&kubeconfig);
    let _namespace = kubectl.create_namespace()?;
    let image = env_or("RINGWAY_E2E_IMAGE", DEFAULT_IMAGE);
    sidecar::injection(&kubectl, &operator_bin, &image)
}

/// Applies `crds/websocketgateway.yaml` and waits until it is served.
fn install_crd(kubectl: &Kubectl) -> anyhow::Result<()> {
    kubectl
        .run(
            &["apply", "--server-side", "--force-conflicts", "-f"],
            Some(&repo_file("crds/websocketgateway.yaml")),
        )
        .context("applying the CRD")?;
    wait_crd_established(kubectl)
}

fn wait_crd_established(kubectl: &Kubectl) -> anyhow::Result<()> {
    kubectl
        .run(
            &[
                "wait",
                "--for=condition=Established",
                &format!("--timeout={}s", DEADLINE.as_secs()),
                "crd/websocketgateways.ringway.dev",
            ],
            None,
        )
        .map(drop)
        .context("waiting for the CRD to be Established")
}

/// Stops the release's own operator pod and runs the binary as the
/// release's ServiceAccount instead, with the flags the chart gives it;
/// then the example gateway in `gateways`' namespace must become its
/// children, with nothing refused along the way.
fn as_the_charts_operator(
    release: &Release<'_>,
    operators: &Kubectl,
    gateways: &Kubectl,
    binary: &Path,
    audited: Option<&str>,
) -> anyhow::Result<()> {
    let deployment = release.deployment()?;
    let text = |pointer: &str| {
        deployment
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the chart's Deployment has no {pointer}"))
    };
    let name = text("/metadata/name")?;
    let account = text("/spec/template/spec/serviceAccountName")?;
    let chart_args: Vec<String> = deployment
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .context("the chart's Deployment passes no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let selector = deployment
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .filter(|labels| !labels.is_empty())
        .context("the chart's Deployment has no selector")?
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");

    // Only the test's operator may act: should the chart's image pull, its
    // pod would reconcile the gateway with the same rights and hide a gap.
    // (The chart's schema does not allow replicaCount 0.)
    operators.run(
        &[
            "scale",
            "deployment",
            &name,
            "--replicas=0",
            "--namespace",
            &operators.namespace,
        ],
        None,
    )?;
    wait_until(
        "the chart's operator pods to be gone",
        || {
            let now = operators.must_get("deployment", &name)?;
            let generation = now.pointer("/metadata/generation").and_then(Value::as_i64);
            let observed = now
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            ensure!(
                observed >= generation,
                "scale not yet observed: {observed:?} < {generation:?}"
            );
            let pods = operators.json(&["get", "pods", "--selector", &selector])?;
            let left = pods
                .pointer("/items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            ensure!(left == 0, "{left} pods left");
            Ok(())
        },
        || Ok(()),
    )?;

    let user = format!("system:serviceaccount:{}:{account}", operators.namespace);
    let token = chart::service_account_token(operators, &account)?;
    let kubeconfig = chart::token_kubeconfig(&chart::current_cluster(operators)?, &user, &token)?;
    let scratch = Scratch::new()?;
    let kubeconfig = scratch.write("kubeconfig", &serde_json::to_string_pretty(&kubeconfig)?)?;
    let log = scratch.0.join("operator.log");
    let image = env_or("RINGWAY_E2E_IMAGE", DEFAULT_IMAGE);
    let args = chart::operator_args(&chart_args, &image, &gateways.namespace);
    let identity = format!("{}-e2e", release.name);
    println!(
        "ringway-operator as {user}: {} (log: {})",
        args.join(" "),
        log.display()
    );
    let mut operator = Operator::spawn(
        binary,
        kubeconfig.as_os_str(),
        &args,
        &[
            ("POD_NAME", identity.as_str()),
            ("POD_NAMESPACE", operators.namespace.as_str()),
        ],
        Some(&log),
    )?;
    let probe = text("/spec/template/spec/containers/0/readinessProbe/httpGet/path")?;
    let steps = readiness(&mut operator, &log, &probe)
        .and_then(|()| standby(binary, &kubeconfig, &args, operators, &scratch, &probe))
        .and_then(|()| gateway_children(gateways, &mut operator).map(drop))
        .and_then(|()| injector_certificate(&mut operator, operators, &chart_args))
        .and_then(|()| {
            audited.map_or(Ok(()), |name| {
                sidecar_missing(&mut operator, operators, name)
            })
        });
    let who = format!("{user} (rules missing from the chart?)");
    judge_run(operator, &log, steps, gateways, &who)
}

/// Stops `operator` once its `steps` ran: they must have passed, and its
/// `log` must show no request the API server refused `who`. On failure,
/// prints the log's end and what `namespace` holds.
fn judge_run(
    operator: Operator,
    log: &Path,
    steps: anyhow::Result<()>,
    namespace: &Kubectl,
    who: &str,
) -> anyhow::Result<()> {
    drop(operator);
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading the operator's log {}", log.display()))?;
    let refused = refused_lines(&text);
    if steps.is_ok() && refused.is_empty() {
        return Ok(());
    }
    eprintln!("the operator's log ends:\n{}", chart::log_tail(log, 40));
    namespace.dump();
    if !refused.is_empty() {
        let steps = steps
            .err()
            .map(|e| format!("\nand: {e:#}"))
            .unwrap_or_default();
        bail!(
            "the API server refused requests of {who}:\n  {}{steps}",
            refused.join("\n  ")
        );
    }
    steps
}

/// With the chart's sidecar injector on: the operator made the webhook's
/// certificate Secret and set the chart's MutatingWebhookConfiguration's
/// caBundle to its CA (the rules that allow both are the chart's).
fn injector_certificate(
    operator: &mut Operator,
    operators: &Kubectl,
    chart_args: &[String],
) -> anyhow::Result<()> {
    let value = |flag: &str| {
        chart_args
            .iter()
            .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let Some(configuration) = value("--webhook-configuration") else {
        return Ok(());
    };
    let secret = value("--webhook-secret").context("the chart passes no --webhook-secret")?;
    eventually(
        operator,
        "the webhook's caBundle to be its Secret's CA",
        || {
            let ca = operators.must_get("secret", &secret)?;
            let ca = ca
                .pointer("/data/ca.crt")
                .and_then(Value::as_str)
                .context("no ca.crt in the Secret yet")?;
            let hooks = operators.must_get("mutatingwebhookconfiguration", &configuration)?;
            let bundles: Vec<&str> = hooks
                .pointer("/webhooks")
                .and_then(Value::as_array)
                .context("no webhooks")?
                .iter()
                .map(|w| {
                    w.pointer("/clientConfig/caBundle")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                })
                .collect();
            ensure!(
                !bundles.is_empty() && bundles.iter().all(|b| *b == ca),
                "caBundles {bundles:?} are not the Secret's CA yet"
            );
            Ok(())
        },
    )
}

/// The operator's sidecar audit reported the Deployment `name`'s pods,
/// which started without their sidecar, in a Warning event on it.
fn sidecar_missing(operator: &mut Operator, kubectl: &Kubectl, name: &str) -> anyhow::Result<()> {
    eventually(operator, "the audit's SidecarMissing event", || {
        let selector = format!("reason=SidecarMissing,involvedObject.name={name}");
        let events = kubectl.json(&["get", "events", "--field-selector", &selector])?;
        let notes: Vec<&str> = events
            .pointer("/items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/message").and_then(Value::as_str))
            .collect();
        ensure!(
            notes.iter().any(|n| n.starts_with("2 pod(s) run without")),
            "no SidecarMissing event about 2 pods of {name}: {notes:?}"
        );
        Ok(())
    })
}

/// The chart's readiness probe passes on the operator that leads (it
/// runs without rivals), and so does `/readyz`.
fn readiness(operator: &mut Operator, log: &Path, probe: &str) -> anyhow::Result<()> {
    let mut address = None;
    eventually(
        operator,
        "the operator's readiness probe and /readyz",
        || {
            let at = match address {
                Some(at) => at,
                None => *address.insert(health_address(log)?),
            };
            for path in [probe, "/readyz"] {
                let status = http_status(at, path)?;
                ensure!(status == 200, "{path} answered {status}");
            }
            Ok(())
        },
    )
}

/// A second replica, standing by while the first holds the Lease, passes
/// the chart's readiness probe (its watches synced) but not `/readyz`
/// (it does not lead): a rolling update of the chart's Deployment, which
/// starts the new pod before it stops the old one, can finish.
fn standby(
    binary: &Path,
    kubeconfig: &Path,
    args: &[String],
    operators: &Kubectl,
    scratch: &Scratch,
    probe: &str,
) -> anyhow::Result<()> {
    let log = scratch.0.join("standby.log");
    let mut standby = Operator::spawn(
        binary,
        kubeconfig.as_os_str(),
        args,
        &[
            ("POD_NAME", "ringway-e2e-standby"),
            ("POD_NAMESPACE", operators.namespace.as_str()),
        ],
        Some(&log),
    )?;
    let mut address = None;
    let waited = eventually(
        &mut standby,
        "a standby replica to be ready but not lead",
        || {
            let at = match address {
                Some(at) => at,
                None => *address.insert(health_address(&log)?),
            };
            let (ready, leads) = (http_status(at, probe)?, http_status(at, "/readyz")?);
            ensure!(
                (ready, leads) == (200, 503),
                "{probe} answered {ready} and /readyz {leads}; want 200 and 503"
            );
            Ok(())
        },
    );
    if waited.is_err() {
        eprintln!("the standby's log ends:\n{}", chart::log_tail(&log, 40));
    }
    waited
}

/// A file of the repository, from its root.
fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("..")
    .join(relative)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
