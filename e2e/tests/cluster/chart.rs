//! The install path: `helm install` of `charts/ringway` through
//! `e2e/cluster/helm_install.py` (Helm's library from helm-sdkpy), the
//! release's removal, and running `ringway-operator` as the chart's
//! ServiceAccount, with a kubeconfig that holds that account's token.

use std::{
    ffi::OsString,
    fs::{DirBuilder, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use super::{
    DEADLINE,
    kubectl::{Kubectl, fresh_name, keep_for_a_look, output_within},
    repo_file,
};

/// How to get what the chart tests need besides kubectl.
const HELM_SDKPY_INSTALL: &str = "pip install --ignore-requires-python helm-sdkpy==0.1.32";

fn driver() -> PathBuf {
    repo_file("e2e/cluster/helm_install.py")
}

/// Runs the driver with `args`; fails with what it said.
fn run_driver(args: &[OsString]) -> anyhow::Result<String> {
    let mut command = Command::new("python3");
    command.arg(driver()).args(args);
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = match output_within(command, DEADLINE) {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "python3 is not installed; the chart tests need it with helm-sdkpy: install \
             Python 3, then `{HELM_SDKPY_INSTALL}`"
        ),
        Err(e) => return Err(e).with_context(|| format!("helm_install.py {shown}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(
        output.status.success(),
        "helm_install.py {shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    println!("{stdout}");
    Ok(stdout)
}

/// Fails, saying how to fix it, unless python3 and helm-sdkpy are usable.
pub fn ensure_helm_sdkpy() -> anyhow::Result<()> {
    run_driver(&["check".into()])
        .map(drop)
        .with_context(|| format!("the chart tests need helm-sdkpy: `{HELM_SDKPY_INSTALL}`"))
}

/// What a `helm install` sets over the chart's defaults.
#[derive(Default)]
pub struct Install<'a> {
    /// `--set KEY=VALUE` pairs (VALUE read as JSON when it is JSON).
    pub set: &'a [&'a str],
    /// Values as a JSON object, under the `set` pairs.
    pub values: Option<Value>,
    /// Adopt objects that exist without Helm's ownership labels.
    pub take_ownership: bool,
}

/// A Helm release of the chart; uninstalled when dropped (its namespaced
/// objects go with the namespace anyway; this removes the cluster-scoped
/// ones: the ClusterRole and its binding).
pub struct Release<'a> {
    kubectl: &'a Kubectl,
    /// The release's name, also the prefix of its objects' names.
    pub name: String,
}

impl<'a> Release<'a> {
    /// `helm install <fresh name> charts/ringway` into the kubectl's
    /// namespace. The guard is returned only on success; a failed install
    /// is cleaned up before the error returns.
    pub fn install(kubectl: &'a Kubectl, install: Install<'_>) -> anyhow::Result<Self> {
        let release = Self {
            kubectl,
            name: fresh_name(),
        };
        let mut args: Vec<OsString> = vec![
            "install".into(),
            kubectl.kubeconfig.clone(),
            (&kubectl.namespace).into(),
            (&release.name).into(),
        ];
        for pair in install.set {
            args.extend(["--set".into(), pair.into()]);
        }
        if let Some(values) = &install.values {
            args.extend(["--values".into(), values.to_string().into()]);
        }
        if install.take_ownership {
            args.push("--take-ownership".into());
        }
        run_driver(&args)?;
        Ok(release)
    }

    /// The chart's operator Deployment.
    pub fn deployment(&self) -> anyhow::Result<Value> {
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=operator",
            self.name
        );
        let list = self
            .kubectl
            .json(&["get", "deployments", "--selector", &selector])?;
        match list.pointer("/items").and_then(Value::as_array) {
            Some(items) if items.len() == 1 => Ok(items[0].clone()),
            _ => bail!("expected one Deployment labelled {selector}, found {list}"),
        }
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if keep_for_a_look() {
            eprintln!("keeping release {} (RINGWAY_E2E_KEEP_NAMESPACE)", self.name);
            return;
        }
        let kubectl = self.kubectl;
        let args: [OsString; 4] = [
            "uninstall".into(),
            kubectl.kubeconfig.clone(),
            (&kubectl.namespace).into(),
            (&self.name).into(),
        ];
        if let Err(e) = run_driver(&args) {
            eprintln!("{e:#}");
        }
        // An install that failed half-way may have left cluster-scoped
        // objects without a release to uninstall.
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let deleted = kubectl.run(
            &[
                "delete",
                "clusterrole,clusterrolebinding",
                "--selector",
                &selector,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        if let Err(e) = deleted {
            eprintln!(
                "could not delete release {}'s cluster roles: {e:#}",
                self.name
            );
        }
    }
}

/// A kubeconfig for the cluster of `view` (what `kubectl config view --raw
/// --minify --flatten -o json` prints: the current context's cluster, its
/// CA embedded), with `token` as its only user, named `user`.
pub fn token_kubeconfig(view: &Value, user: &str, token: &str) -> anyhow::Result<Value> {
    let current = view
        .get("current-context")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .context("the kubeconfig has no current-context")?;
    let named = |list: &str, name: &str, field: &str| {
        view.get(list)
            .and_then(Value::as_array)
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|i| i.get(field))
            .cloned()
            .with_context(|| format!("the kubeconfig has no {list} entry named {name:?}"))
    };
    let context = named("contexts", current, "context")?;
    let cluster_name = context
        .get("cluster")
        .and_then(Value::as_str)
        .with_context(|| format!("context {current:?} names no cluster"))?;
    let cluster = named("clusters", cluster_name, "cluster")?;
    ensure!(
        cluster
            .get("server")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        "cluster {cluster_name:?} has no server"
    );
    ensure!(!token.trim().is_empty(), "the token is empty");
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": cluster_name, "cluster": cluster }],
        "users": [{ "name": user, "user": { "token": token.trim() } }],
        "contexts": [{
            "name": "ringway-e2e",
            "context": { "cluster": cluster_name, "user": user },
        }],
        "current-context": "ringway-e2e",
    }))
}

/// The flags the chart's Deployment passes, as the test's operator takes
/// them: its metrics on a free loopback port, the test's data-plane image,
/// text logs, and `--namespace` set to `watch` when the chart watches all
/// namespaces (the test's operator must not act on other tests' gateways;
/// the ClusterRole grants the same rules in every namespace).
pub fn operator_args(chart_args: &[String], image: &str, watch: &str) -> Vec<String> {
    let flag = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
    let mut args: Vec<String> = chart_args
        .iter()
        .filter(|a| {
            !matches!(
                flag(a).as_str(),
                "--metrics-address" | "--image" | "--log-format" | "--webhook-address"
            )
        })
        .cloned()
        .collect();
    // The webhook on loopback only, on a free port, as every test's port.
    if chart_args.iter().any(|a| flag(a) == "--webhook-address") {
        args.push("--webhook-address=127.0.0.1:0".to_owned());
    }
    if !args.iter().any(|a| flag(a) == "--namespace") {
        args.push(format!("--namespace={watch}"));
    }
    args.extend([
        "--metrics-address=127.0.0.1:0".to_owned(),
        format!("--image={image}"),
        "--log-format=text".to_owned(),
    ]);
    args
}

/// A private directory for a token kubeconfig and an operator's log,
/// removed when dropped (kept with `RINGWAY_E2E_KEEP_NAMESPACE`).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(fresh_name());
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Writes `content` to `name` in the directory, readable by its owner
    /// only (a kubeconfig holds a token).
    pub fn write(&self, name: &str, content: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if keep_for_a_look() {
            eprintln!("keeping {} (RINGWAY_E2E_KEEP_NAMESPACE)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The chart's ServiceAccount's token, from the TokenRequest API.
pub fn service_account_token(kubectl: &Kubectl, account: &str) -> anyhow::Result<String> {
    let token = kubectl
        .run(
            &[
                "create",
                "token",
                account,
                "--namespace",
                &kubectl.namespace,
                "--duration=1h",
            ],
            None,
        )
        .with_context(|| format!("a token for ServiceAccount {account}"))?;
    Ok(token.trim().to_owned())
}

/// The test's kubeconfig as kubectl resolves it, certificates embedded.
pub fn current_cluster(kubectl: &Kubectl) -> anyhow::Result<Value> {
    let view = kubectl.run(
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "--output=json",
        ],
        None,
    )?;
    serde_json::from_str(&view).context("kubectl config view: not JSON")
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{operator_args, token_kubeconfig};

    fn view() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                { "name": "other", "cluster": { "server": "https://elsewhere:6443" } },
                { "name": "kind-e2e", "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": "LS0tQ0EtLS0=",
                    "tls-server-name": "kubernetes",
                } },
            ],
            "users": [{ "name": "admin", "user": {
                "client-certificate-data": "Y2VydA==",
                "client-key-data": "a2V5",
            } }],
            "contexts": [{ "name": "kind-e2e", "context": {
                "cluster": "kind-e2e", "user": "admin", "namespace": "default",
            } }],
            "current-context": "kind-e2e",
        })
    }

    #[test]
    fn the_token_kubeconfig_keeps_the_cluster_and_drops_the_admin() {
        let config = token_kubeconfig(&view(), "system:serviceaccount:ns:op", "tok.en\n")
            .expect("a kubeconfig");
        assert_eq!(
            config,
            json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{ "name": "kind-e2e", "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": "LS0tQ0EtLS0=",
                    "tls-server-name": "kubernetes",
                } }],
                "users": [{ "name": "system:serviceaccount:ns:op", "user": { "token": "tok.en" } }],
                "contexts": [{ "name": "ringway-e2e", "context": {
                    "cluster": "kind-e2e", "user": "system:serviceaccount:ns:op",
                } }],
                "current-context": "ringway-e2e",
            })
        );
        assert!(!config.to_string().contains("client-key-data"));
    }

    #[test]
    fn a_kubeconfig_without_its_cluster_is_an_error() {
        let mut broken = view();
        broken["current-context"] = json!("gone");
        let e = token_kubeconfig(&broken, "u", "t").expect_err("no such context");
        assert!(e.to_string().contains("\"gone\""), "{e}");

        let mut serverless = view();
        serverless["clusters"][1]["cluster"]
            .as_object_mut()
            .expect("an object")
            .remove("server");
        assert!(token_kubeconfig(&serverless, "u", "t").is_err());
        assert!(token_kubeconfig(&view(), "u", " \n").is_err());
    }

    /// The args `charts/ringway/templates/deployment.yaml` renders.
    fn chart_args(watch: Option<&str>) -> Vec<String> {
        let mut args = vec!["--image=ghcr.io/ringway-dev/ringway-dataplane:0.1.0".to_owned()];
        args.extend(watch.map(|ns| format!("--namespace={ns}")));
        args.extend(
            [
                "--metrics-address=0.0.0.0:8080",
                "--leader-election=true",
                "--lease-name=ringway-operator",
                "--log-format=json",
                "--log=info",
            ]
            .map(str::to_owned),
        );
        args
    }

    #[test]
    fn the_operator_keeps_the_charts_election_and_watch_flags() {
        let args = operator_args(&chart_args(Some("gw")), "img:1", "ignored");
        assert_eq!(
            args,
            [
                "--namespace=gw",
                "--leader-election=true",
                "--lease-name=ringway-operator",
                "--log=info",
                "--metrics-address=127.0.0.1:0",
                "--image=img:1",
                "--log-format=text",
            ]
        );
    }

    #[test]
    fn the_webhook_is_served_on_loopback_only() {
        let mut chart = chart_args(Some("gw"));
        chart.push("--webhook-address=0.0.0.0:9443".to_owned());
        chart.push("--webhook-configuration=x".to_owned());
        let args = operator_args(&chart, "img:1", "ignored");
        let webhook: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--webhook-address"))
            .collect();
        assert_eq!(webhook, ["--webhook-address=127.0.0.1:0"]);
        assert!(args.contains(&"--webhook-configuration=x".to_owned()));
    }

    #[test]
    fn a_chart_watching_all_namespaces_is_confined_to_the_tests() {
        let args = operator_args(&chart_args(None), "img:1", "mine");
        assert!(args.contains(&"--namespace=mine".to_owned()), "{args:?}");
        assert_eq!(
            args.iter().filter(|a| a.starts_with("--namespace")).count(),
            1
        );
    }
}
