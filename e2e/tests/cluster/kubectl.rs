//! `kubectl` with the test's kubeconfig, one namespace per value, and the
//! guard that deletes a test's namespace; plus a bounded wait for any
//! child process.

use std::{
    ffi::OsString,
    io::Read,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// `RINGWAY_E2E_KEEP_NAMESPACE=1`: leave what a test made, for a look.
pub fn keep_for_a_look() -> bool {
    std::env::var_os("RINGWAY_E2E_KEEP_NAMESPACE").is_some_and(|v| !v.is_empty())
}

/// A fresh name `ringway-e2e-<random>`, for a namespace or a release.
pub fn fresh_name() -> String {
    format!("ringway-e2e-{:08x}", fastrand::u32(..))
}

/// `kubectl` with the test's kubeconfig.
pub struct Kubectl {
    pub kubeconfig: OsString,
    /// The namespace that `get`, `must_get` and `dump` look in.
    pub namespace: String,
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

    /// Runs `kubectl <args> [file]` and returns what it did, success or not.
    pub fn output(&self, args: &[&str], file: Option<&Path>) -> anyhow::Result<Output> {
        let mut command = self.command();
        command.args(args);
        if let Some(file) = file {
            command.arg(file);
        }
        command
            .stdin(Stdio::null())
            .output()
            .context("running kubectl (is it installed?)")
    }

    /// Runs `kubectl <args> [file]`; fails with kubectl's stderr.
    pub fn run(&self, args: &[&str], file: Option<&Path>) -> anyhow::Result<String> {
        let output = self.output(args, file)?;
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

    /// `kubectl <args> --output=json` in this namespace, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["--namespace", &self.namespace, "--output=json"]);
        let out = self.run(&all, None)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {}: not JSON", all.join(" ")))
    }

    /// `kind/name` in this namespace, `None` if it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> anyhow::Result<Option<Value>> {
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
    pub fn must_get(&self, kind: &str, name: &str) -> anyhow::Result<Value> {
        self.get(kind, name)?
            .with_context(|| format!("{kind} {name} does not exist"))
    }

    /// Creates this namespace; it is deleted when the guard drops.
    pub fn create_namespace(&self) -> anyhow::Result<NamespaceGuard<'_>> {
        self.run(&["create", "namespace", &self.namespace], None)
            .with_context(|| format!("creating the test namespace {}", self.namespace))?;
        println!("namespace {}", self.namespace);
        Ok(NamespaceGuard(self))
    }

    /// Prints what the namespace holds, to see why a step failed.
    pub fn dump(&self) {
        for args in [
            &[
                "get",
                "websocketgateways.ringway.dev,deployments,statefulsets,services,poddisruptionbudgets,secrets,pods",
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

/// Deletes a test's namespace when dropped, whatever happened.
pub struct NamespaceGuard<'a>(&'a Kubectl);

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        let namespace = &self.0.namespace;
        if keep_for_a_look() {
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

/// Runs `command` to its end, or kills it once `deadline` has passed.
pub fn output_within(mut command: Command, deadline: Duration) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read both pipes while waiting, so that a chatty child cannot block.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {deadline:?}; killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}
