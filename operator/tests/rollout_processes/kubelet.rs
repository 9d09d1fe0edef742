//! The StatefulSet controller and the kubelet, for pods that are real
//! `ringway-dataplane` processes: every pod the operator's StatefulSets
//! want runs as a process on its own 127.x.y.z address (its pod IP), from
//! the pod template as the operator rendered it (its args and env, and its
//! ConfigMap and Secret volumes written to files, with the mount paths and
//! the `0.0.0.0` bind addresses rewritten for a process on loopback). A
//! pod is Ready in the fake API while its readiness probe answers 200; a
//! process that exits by itself is started again in its pod and counted in
//! its `restartCount` (`restartPolicy: Always`); a pod the StatefulSet no
//! longer wants is Terminating and gets SIGTERM, and is removed once its
//! process exits (killed after its grace period).
//!
//! Every image runs the one `ringway-dataplane` binary of this build.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Container, PodSpec, Secret, Volume},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use ringway_e2e::fleet::{TempDir, loopback_ip};
use ringway_operator::steer::Steer;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::Instant,
};

use crate::support::{NS, WantedPod, World};

/// How long a readiness probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One pod's process and what the fake API shows of it.
struct PodProcess {
    /// Its labels, with the `controller-revision-hash` it runs.
    labels: Value,
    uid: String,
    ip: Ipv4Addr,
    /// Where clients connect (the container port `client`).
    client: SocketAddr,
    /// Where its readiness probe asks, and the path.
    probe: (SocketAddr, String),
    ready: bool,
    /// Set once it got SIGTERM: when it is killed if still running.
    kill_at: Option<Instant>,
    grace: Duration,
    /// The container's name and image, for its status.
    container: (String, String),
    restarts: u32,
    launch: Launch,
    child: Child,
}

/// How a pod's process is started, and started again.
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self, binary: &Path) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new(binary)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))
    }
}

/// The pods of every StatefulSet in the fake API, as processes.
pub struct Kubelet {
    binary: PathBuf,
    dir: TempDir,
    pods: BTreeMap<String, PodProcess>,
    /// Processes started so far (for unique uids and directories).
    started: u32,
}

impl Kubelet {
    /// A kubelet that runs `binary` for every pod; its files live in a
    /// temporary directory removed on drop, as its processes are killed.
    pub fn new(binary: PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            binary,
            dir: TempDir::new("ringway-kubelet")?,
            pods: BTreeMap::new(),
            started: 0,
        })
    }

    /// One round: starts the pods the StatefulSets want, stops those they
    /// no longer want (or want at another revision), removes the exited
    /// ones, probes readiness, and writes every pod to the fake API.
    pub async fn sync<S: Steer>(&mut self, world: &World<S>) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        for sts in world.api.list("statefulsets") {
            let typed: StatefulSet =
                serde_json::from_value(sts.clone()).context("a StatefulSet")?;
            for pod in world.stateful_set_pods(sts) {
                wanted.push((pod, typed.clone()));
            }
        }
        for (name, pod) in &mut self.pods {
            let still = wanted
                .iter()
                .any(|(w, _)| w.name == *name && w.labels == pod.labels);
            if !still && pod.kill_at.is_none() {
                pod.terminate()?;
            }
        }
        self.reap(world).await?;
        for (pod, sts) in &wanted {
            if !self.pods.contains_key(&pod.name) {
                let process = self.start(world, pod, sts)?;
                self.pods.insert(pod.name.clone(), process);
            }
        }
        for (name, pod) in &mut self.pods {
            pod.ready = pod.kill_at.is_none() && probe(pod.probe.0, &pod.probe.1).await;
            world.api.put("pods", pod.object(name));
        }
        Ok(())
    }

    /// Where clients may enter, as a Service's endpoints: the client
    /// address of every Ready pod.
    pub fn ready_clients(&self) -> Vec<SocketAddr> {
        self.pods
            .values()
            .filter(|p| p.ready)
            .map(|p| p.client)
            .collect()
    }

    /// How many pods (processes) run, Terminating ones included, whose
    /// name starts with `prefix` (e.g. a slot's StatefulSet name and `-`).
    pub fn running(&self, prefix: &str) -> usize {
        self.pods.keys().filter(|n| n.starts_with(prefix)).count()
    }

    /// Kills the processes of the pods whose name starts with `prefix`
    /// (SIGKILL), as a crash would; the next [`Kubelet::sync`] starts them
    /// again in their pods.
    pub async fn crash(&mut self, prefix: &str) -> anyhow::Result<()> {
        for (name, pod) in &mut self.pods {
            if name.starts_with(prefix) {
                pod.child.kill().await?;
            }
        }
        Ok(())
    }

    /// The last lines of the log of every pod process, for a failure
    /// message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten() {
            let path = entry.map(|e| e.path().join("log")).unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            out += &format!("--- {}\n", path.display());
            for line in tail.into_iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// Starts again the processes that exited by themselves; removes the
    /// Terminating pods whose process exited, and kills those past their
    /// grace.
    async fn reap<S: Steer>(&mut self, world: &World<S>) -> anyhow::Result<()> {
        let mut gone = Vec::new();
        for (name, pod) in &mut self.pods {
            let exited = pod.child.try_wait()?.is_some();
            match pod.kill_at {
                None if exited => {
                    pod.child = pod.launch.spawn(&self.binary)?;
                    pod.restarts += 1;
                }
                Some(_) if exited => gone.push(name.clone()),
                Some(at) if Instant::now() >= at => {
                    pod.child.kill().await?;
                    gone.push(name.clone());
                }
                _ => {}
            }
        }
        for name in gone {
            self.pods.remove(&name);
            world.api.remove("pods", &name);
        }
        Ok(())
    }

    /// Starts the pod `wanted` of `sts` on a fresh loopback address.
    fn start<S: Steer>(
        &mut self,
        world: &World<S>,
        wanted: &WantedPod,
        sts: &StatefulSet,
    ) -> anyhow::Result<PodProcess> {
        self.started += 1;
        let spec = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("a StatefulSet without a pod template")?;
        let container = spec
            .containers
            .first()
            .context("a pod without containers")?;
        let ip = loopback_ip();
        let dir = self
            .dir
            .path()
            .join(format!("{}-{}", wanted.name, self.started));
        let files = Files::mount(world, &spec, container, &dir, ip)?;
        let env = container.env.iter().flatten().map(|e| {
            let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            let value = match field.map(|f| f.field_path.as_str()) {
                Some("metadata.name") => wanted.name.clone(),
                Some("status.podIP") => ip.to_string(),
                _ => e.value.clone().unwrap_or_default(),
            };
            (e.name.clone(), value)
        });
        let launch = Launch {
            args: container
                .args
                .iter()
                .flatten()
                .map(|a| files.localize(a))
                .collect(),
            env: env.collect(),
            log: dir.join("log"),
        };
        let child = launch.spawn(&self.binary)?;
        let port =
            |name: &str| named_port(container, name).map(|p| SocketAddr::new(IpAddr::V4(ip), p));
        let http = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .context("the container has no httpGet readiness probe")?;
        let probe_port = match &http.port {
            IntOrString::String(name) => port(name)?,
            IntOrString::Int(n) => SocketAddr::new(IpAddr::V4(ip), u16::try_from(*n)?),
        };
        Ok(PodProcess {
            labels: wanted.labels.clone(),
            uid: format!("pod-uid-{}", self.started),
            ip,
            client: port("client")?,
            probe: (probe_port, http.path.clone().unwrap_or_else(|| "/".into())),
            ready: false,
            kill_at: None,
            container: (
                container.name.clone(),
                container.image.clone().unwrap_or_default(),
            ),
            restarts: 0,
            launch,
            grace: Duration::from_secs(
                u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
            ),
            child,
        })
    }
}

impl PodProcess {
    /// SIGTERM, as the kubelet sends when a pod is deleted; it is killed
    /// if still running after its grace period.
    fn terminate(&mut self) -> anyhow::Result<()> {
        self.kill_at = Some(Instant::now() + self.grace);
        let Some(pid) = self.child.id() else {
            return Ok(());
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// The pod as the API shows it: Running with its IP, Ready or not, its
    /// container's restarts, and Terminating once stopped.
    fn object(&self, name: &str) -> Value {
        let mut metadata =
            json!({"name": name, "namespace": NS, "uid": self.uid, "labels": self.labels});
        if self.kill_at.is_some() {
            metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let ready = if self.ready { "True" } else { "False" };
        let (container, image) = &self.container;
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "status": {"phase": "Running", "podIP": self.ip.to_string(),
                "conditions": [{"type": "Ready", "status": ready}],
                "containerStatuses": [{"name": container, "image": image, "imageID": "",
                    "ready": self.ready, "restartCount": self.restarts}]}})
    }
}

/// The files a pod's volumes mount, written under its own directory.
struct Files {
    /// Mount path → the directory standing for it.
    mounts: Vec<(String, PathBuf)>,
    ip: Ipv4Addr,
}

impl Files {
    /// Writes the ConfigMap and Secret volumes `container` mounts into
    /// `dir`; config files are [`Files::localize`]d, Secrets written as
    /// they are.
    fn mount<S: Steer>(
        world: &World<S>,
        spec: &PodSpec,
        container: &Container,
        dir: &Path,
        ip: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), dir.join(&m.name)))
            .collect();
        let files = Self { mounts, ip };
        for ((_, local), mount) in files
            .mounts
            .iter()
            .zip(container.volume_mounts.iter().flatten())
        {
            std::fs::create_dir_all(local)?;
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("no volume {}", mount.name))?;
            for (path, bytes) in files.volume_files(world, volume)? {
                std::fs::write(local.join(path), bytes)?;
            }
        }
        Ok(files)
    }

    /// The files of `volume`: (path in the volume, contents).
    fn volume_files<S: Steer>(
        &self,
        world: &World<S>,
        volume: &Volume,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        if let Some(source) = &volume.config_map {
            let object = world
                .api
                .get("configmaps", &source.name)
                .with_context(|| format!("no ConfigMap {}", source.name))?;
            let config_map: ConfigMap = serde_json::from_value(object)?;
            let data = config_map.data.unwrap_or_default();
            return Ok(data
                .into_iter()
                .map(|(key, text)| (key, self.localize(&text).into_bytes()))
                .collect());
        }
        let source = volume.secret.as_ref().with_context(|| {
            format!("volume {} is neither a ConfigMap nor a Secret", volume.name)
        })?;
        let name = source.secret_name.clone().unwrap_or_default();
        let object = world
            .api
            .get("secrets", &name)
            .with_context(|| format!("no Secret {name}"))?;
        let secret: Secret = serde_json::from_value(object)?;
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (key, text) in secret.string_data.unwrap_or_default() {
            data.insert(key, text.into_bytes());
        }
        match &source.items {
            Some(items) => items
                .iter()
                .map(|item| {
                    let bytes = data
                        .get(&item.key)
                        .with_context(|| format!("the Secret {name} has no {}", item.key))?;
                    Ok((item.path.clone(), bytes.clone()))
                })
                .collect(),
            None => Ok(data.into_iter().collect()),
        }
    }

    /// `text` for a process on loopback: mount paths made local, and
    /// addresses bound on every interface bound on the pod IP.
    fn localize(&self, text: &str) -> String {
        let text = text.replace("0.0.0.0:", &format!("{}:", self.ip));
        self.mounts.iter().fold(text, |text, (from, to)| {
            text.replace(from.as_str(), &to.display().to_string())
        })
    }
}

/// The port number of `container`'s port `name`.
fn named_port(container: &Container, name: &str) -> anyhow::Result<u16> {
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .with_context(|| format!("the container has no port {name}"))?;
    Ok(u16::try_from(port.container_port)?)
}

/// Whether `GET path` on `address` answers 200 within [`PROBE_TIMEOUT`].
async fn probe(address: SocketAddr, path: &str) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, ask).await, Ok(Ok(true)))
}
