//! The kubelet's part for a pod that never runs (the test's API server has
//! no nodes): its sidecar's control files from the namespace's Secret, its
//! sidecar's arguments as this machine runs them, its status as a running
//! pod's, and a finalizer of the test's own that keeps it Terminating once
//! deleted, as a pod is while its containers stop.

use std::{net::TcpListener, path::Path};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use ringway_dataplane_api::sidecar::{
    CONTAINER, CONTROL_CA_FILE, CONTROL_CERT_FILE, CONTROL_KEY_FILE, CONTROL_PORT, CONTROL_SECRET,
};
use serde_json::{Value, json};

use super::{chart::Scratch, kubectl::Kubectl};

/// The finalizer that keeps a deleted pod Terminating until the test is
/// done with it.
pub const FINALIZER: &str = "e2e.ringway.dev/terminating";

/// The flags `SidecarProcess::start` sets itself: the pod's ports, taken
/// on a machine that runs other tests.
const PORT_FLAGS: [&str; 3] = ["--app-port", "--listen-port", "--admin-port"];

/// Writes the files of the namespace's sidecar control Secret into
/// `scratch`, as the kubelet mounts them; fails if it has not all three.
pub fn write_control_files(kubectl: &Kubectl, scratch: &Scratch) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(kubectl.must_get("secret", CONTROL_SECRET)?)
        .with_context(|| format!("the Secret {CONTROL_SECRET} is not a Secret"))?;
    let data = secret.data.unwrap_or_default();
    for file in [CONTROL_CA_FILE, CONTROL_CERT_FILE, CONTROL_KEY_FILE] {
        let bytes = data
            .get(file)
            .with_context(|| format!("the Secret {CONTROL_SECRET} has no {file}"))?;
        let pem = std::str::from_utf8(&bytes.0)
            .with_context(|| format!("{file} of the Secret {CONTROL_SECRET} is not PEM text"))?;
        scratch.write(file, pem)?;
    }
    Ok(())
}

/// The arguments of an injected `sidecar` container as
/// [`SidecarProcess::start`] takes them: without the subcommand and the
/// ports it picks, the control files read from `control_dir`, the control
/// port the pod's.
///
/// [`SidecarProcess::start`]: ringway_e2e::sidecar::SidecarProcess::start
pub fn sidecar_args(sidecar: &Value, control_dir: &Path) -> anyhow::Result<Vec<String>> {
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some((&"sidecar", flags)) = args.split_first() else {
        bail!("the sidecar's args do not start with `sidecar`: {args:?}");
    };
    ensure!(
        flags.len() % 2 == 0 && flags.iter().step_by(2).all(|f| f.starts_with("--")),
        "the sidecar's args are not `--flag value` pairs: {args:?}"
    );
    let mut out = Vec::new();
    let mut control_dir_given = false;
    for pair in flags.chunks(2) {
        let (flag, value) = (pair[0], pair[1]);
        if PORT_FLAGS.contains(&flag) {
            continue;
        }
        let value = match flag {
            "--control-tls-dir" => {
                control_dir_given = true;
                control_dir.display().to_string()
            }
            _ => value.to_owned(),
        };
        out.extend([flag.to_owned(), value]);
    }
    ensure!(
        control_dir_given,
        "the sidecar is not given --control-tls-dir: {args:?}"
    );
    Ok(out)
}

/// Fails, saying so, unless the control port is free on every address:
/// the leader dials `<pod IP>:CONTROL_PORT`, and the pod's IP here is
/// 127.0.0.1.
pub fn ensure_control_port_free() -> anyhow::Result<()> {
    TcpListener::bind(("0.0.0.0", CONTROL_PORT))
        .map(drop)
        .with_context(|| {
            format!(
                "this step runs a sidecar on the control port {CONTROL_PORT} (the leader dials \
                 <pod IP>:{CONTROL_PORT}, and the pod's IP is 127.0.0.1), which something on this \
                 machine holds: free 127.0.0.1:{CONTROL_PORT}"
            )
        })
}

/// A pod held Terminating by the test's finalizer once deleted; the
/// finalizer is removed when dropped, whatever happened, so that the pod
/// and its namespace can go.
pub struct HeldPod<'a> {
    kubectl: &'a Kubectl,
    /// The pod's name.
    pub name: String,
}

impl<'a> HeldPod<'a> {
    /// Adds the finalizer to the pod `name`.
    pub fn hold(kubectl: &'a Kubectl, name: &str) -> anyhow::Result<Self> {
        let held = Self {
            kubectl,
            name: name.to_owned(),
        };
        held.patch(&json!({ "metadata": { "finalizers": [FINALIZER] } }), None)
            .with_context(|| format!("adding the finalizer {FINALIZER} to pod {name}"))?;
        Ok(held)
    }

    /// Writes the status a kubelet would once its sidecar runs: the pod's
    /// IP `ip` and the sidecar container running (what the leader needs to
    /// pace a terminating pod).
    pub fn running(&self, ip: &str) -> anyhow::Result<()> {
        let status = json!({ "status": {
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "initContainerStatuses": [{
                "name": CONTAINER,
                "image": "",
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": now() } },
            }],
        }});
        self.patch(&status, Some("status"))
            .with_context(|| format!("writing the status of pod {} as running", self.name))
    }

    /// Deletes the pod without waiting: it stays Terminating, held by the
    /// finalizer.
    pub fn delete(&self) -> anyhow::Result<()> {
        let namespace = &self.kubectl.namespace;
        self.kubectl
            .run(
                &[
                    "delete",
                    "pod",
                    &self.name,
                    "--namespace",
                    namespace,
                    "--wait=false",
                ],
                None,
            )
            .map(drop)
    }

    fn patch(&self, patch: &Value, subresource: Option<&str>) -> anyhow::Result<()> {
        let patch = patch.to_string();
        let mut args = vec![
            "patch",
            "pod",
            &self.name,
            "--namespace",
            &self.kubectl.namespace,
            "--type=merge",
            "--patch",
            &patch,
        ];
        let subresource = subresource.map(|s| format!("--subresource={s}"));
        args.extend(subresource.as_deref());
        self.kubectl.run(&args, None).map(drop)
    }
}

impl Drop for HeldPod<'_> {
    fn drop(&mut self) {
        let released = self.patch(&json!({ "metadata": { "finalizers": null } }), None);
        if let Err(e) = released {
            eprintln!(
                "could not remove the finalizer {FINALIZER} from pod {}: {e:#}",
                self.name
            );
        }
    }
}

/// Now, as the API server writes times (RFC 3339, seconds, UTC).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| "1970-01-01T00:00:00Z".to_owned(), |t| t.to_string())
}
