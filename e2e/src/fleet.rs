//! A gateway on one machine, for the end-to-end tests of sharding: real
//! `ringway-dataplane` shard processes and `ringway-echo` backends, each
//! on its own 127.x.y.z address, a control-channel CA and certificates, and
//! the same [`ControlClient`] the operator uses to steer them.
//!
//! Every process is killed when the fleet is dropped; its files (config,
//! certificates, token) live in a temporary directory removed then too.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use ringway_control::{
    ControlClient, Options, TlsIdentity,
    pki::{Ca, SERVER_NAME, Usage},
    proto as v1,
};
use ringway_dataplane_api::sidecar;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

/// Where the binaries are: `ringway-echo` from the test's own package, and
/// `ringway-dataplane` beside it in the same target directory (built by
/// `cargo nextest run --workspace`), unless `RINGWAY_DATAPLANE_BIN` says
/// otherwise.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The data plane.
    pub dataplane: PathBuf,
    /// The echo backend.
    pub echo: PathBuf,
}

impl Binaries {
    /// From the echo binary's path (a test's `env!("CARGO_BIN_EXE_ringway-echo")`).
    pub fn beside(echo: &str) -> anyhow::Result<Self> {
        let echo = PathBuf::from(echo);
        let dataplane = match std::env::var_os("RINGWAY_DATAPLANE_BIN") {
            Some(p) => PathBuf::from(p),
            None => echo.with_file_name("ringway-dataplane"),
        };
        if !dataplane.exists() {
            bail!(
                "{} does not exist: build it first (`cargo build -p ringway-dataplane`, or run the tests with --workspace), or set RINGWAY_DATAPLANE_BIN",
                dataplane.display()
            );
        }
        Ok(Self { dataplane, echo })
    }

    /// For a test of another package, which has no
    /// `CARGO_BIN_EXE_ringway-echo`: both binaries in the target directory
    /// of the running test executable (`target/debug` for
    /// `target/debug/deps/<test>`), unless `RINGWAY_ECHO_BIN` or
    /// `RINGWAY_DATAPLANE_BIN` say otherwise. Testing one package does not
    /// build another's binaries, so a missing one says how to build it.
    pub fn in_target_dir() -> anyhow::Result<Self> {
        let echo = match std::env::var_os("RINGWAY_ECHO_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().context("the test executable's path")?;
                let deps = exe
                    .parent()
                    .context("the test executable has a directory")?;
                deps.parent().unwrap_or(deps).join("ringway-echo")
            }
        };
        if !echo.exists() {
            bail!(
                "{} does not exist: build the binaries first (`cargo build -p ringway-dataplane -p ringway-e2e`), or set RINGWAY_ECHO_BIN",
                echo.display()
            );
        }
        Self::beside(&echo.to_string_lossy())
    }
}

/// A fresh loopback address no other test of this run is likely to use:
/// 127.r.r.r with random octets.
pub fn loopback_ip() -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        fastrand::u8(1..=254),
        fastrand::u8(..),
        fastrand::u8(2..=254),
    )
}

/// A temporary directory, removed on drop unless kept.
#[derive(Debug)]
pub struct TempDir(PathBuf, bool);

impl TempDir {
    /// Creates one under the system's temp directory.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path, false))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The control channel's certificates, written to files.
pub struct Pki {
    /// The gateway's CA.
    pub ca: Ca,
    /// The CA certificate's file.
    pub ca_file: PathBuf,
    /// The pods' server certificate and key files.
    pub server: (PathBuf, PathBuf),
    /// The operator's client identity.
    pub operator: TlsIdentity,
}

impl Pki {
    /// A new CA, one server certificate for every pod, one client
    /// certificate for the operator.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        Self::write(dir, SERVER_NAME, ["ca.pem", "server.pem", "server.key"])
    }

    /// The same for the sidecars of `namespace`, in the files the injected
    /// sidecar reads from its control directory (`dir`).
    pub fn sidecars(dir: &Path, namespace: &str) -> anyhow::Result<Self> {
        Self::write(
            dir,
            &sidecar::server_name(namespace),
            [
                sidecar::CONTROL_CA_FILE,
                sidecar::CONTROL_CERT_FILE,
                sidecar::CONTROL_KEY_FILE,
            ],
        )
    }

    /// A CA, a server certificate naming `server_name`, written to `files`
    /// (CA certificate, server certificate, key) in `dir`, and a client
    /// certificate for the operator.
    fn write(dir: &Path, server_name: &str, files: [&str; 3]) -> anyhow::Result<Self> {
        let year = Duration::from_secs(365 * 86_400);
        let ca = Ca::generate("ringway e2e", year)?;
        let server = ca.issue("shard", Usage::Server, &[server_name], year)?;
        let client = ca.issue("operator", Usage::Client, &[], year)?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let [ca_file, cert_file, key_file] = files;
        Ok(Self {
            ca_file: write(ca_file, ca.cert_pem())?,
            server: (
                write(cert_file, &server.cert_pem)?,
                write(key_file, &server.key_pem)?,
            ),
            operator: TlsIdentity {
                ca_pem: ca.cert_pem().to_owned(),
                cert_pem: client.cert_pem,
                key_pem: client.key_pem,
                server_name: server_name.to_owned(),
            },
            ca,
        })
    }
}

/// How the fleet's shards run.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// Connections one shard takes (client and hand-off ones together).
    pub max_connections: usize,
    /// Runtime worker threads per shard.
    pub worker_threads: usize,
    /// Seconds between the shards' pings to clients (they wait 10 s for
    /// the pong).
    pub heartbeat_interval_seconds: u32,
    /// Drain settings in the snapshots (by default quick: a 0.5 s window
    /// at 10,000/s, so tests run fast; tests of pacing drain by RPC with
    /// their own).
    pub drain: v1::DrainSettings,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            max_connections: 9_900,
            worker_threads: 1,
            heartbeat_interval_seconds: 30,
            drain: v1::DrainSettings {
                window_ms: 500,
                close_timeout_ms: 2_000,
                max_closes_per_second: 10_000,
            },
        }
    }
}

/// One `ringway-dataplane` shard process.
pub struct ShardProcess {
    /// The shard id.
    pub id: String,
    /// Client port.
    pub client: SocketAddr,
    /// Peer port.
    pub peer: SocketAddr,
    /// Control port.
    pub control: SocketAddr,
    /// Admin port.
    pub admin: SocketAddr,
    child: Child,
}

impl ShardProcess {
    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process at once (`kill -9`) and reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The sum of every series of the metric `name` on the admin port's
    /// `/metrics` (e.g. a gauge over all its routes).
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let mut stream = tokio::net::TcpStream::connect(self.admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        let mut sum = 0.0;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `name{labels} value` or `name value`, not `name_suffix ...`.
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            let value = rest.rsplit(' ').next().unwrap_or_default();
            sum += value
                .parse::<f64>()
                .with_context(|| format!("{}: bad sample {line:?}", self.id))?;
        }
        Ok(sum)
    }

    /// The control address as the client dials it.
    pub fn control_address(&self) -> String {
        self.control.to_string()
    }

    /// The snapshot's entry for this shard.
    pub fn as_shard(&self) -> v1::Shard {
        v1::Shard {
            id: self.id.clone(),
            peer_address: self.peer.to_string(),
        }
    }
}

/// One backend process: `ringway-echo`, or `ringway-chat` when started by
/// [`Fleet::add_backend_with`] or [`EchoProcess::start`].
pub struct EchoProcess {
    /// Its id (the `X-Ringway-Backend` it answers with).
    pub id: String,
    /// Where it listens.
    pub address: SocketAddr,
    child: Child,
}

impl EchoProcess {
    /// Starts `binary` as the backend `id` on `listen` (port 0 picks one):
    /// any backend that takes `--listen`, `--id` and `--workers` and first
    /// prints a line ending in the address it listens on, as `ringway-echo`
    /// and `ringway-chat` do. Killed when dropped.
    pub async fn start(binary: &Path, id: &str, listen: SocketAddr) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args([
                "--listen",
                &listen.to_string(),
                "--id",
                id,
                "--workers",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .with_context(|| format!("{} did not say where it listens", binary.display()))??;
        let address = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("{} said {line:?}", binary.display()))?;
        Ok(Self {
            id: id.to_owned(),
            address,
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Shards, backends, certificates and the control client of one gateway.
pub struct Fleet {
    /// The shard processes, by index.
    pub shards: Vec<ShardProcess>,
    /// The backends (echo, or those of [`Fleet::add_backend_with`]), by index.
    pub backends: Vec<EchoProcess>,
    /// The control client, holding the operator's certificate.
    pub control: ControlClient,
    /// The certificates.
    pub pki: Pki,
    /// The last epoch pushed.
    pub epoch: u64,
    /// How shards started from now on run.
    pub settings: ShardSettings,
    binaries: Binaries,
    dir: TempDir,
}

/// The peer token every shard of a fleet shares.
const TOKEN: &str = "e2e-peer-token-0123456789";

impl Fleet {
    /// Starts `shards` shard processes and `backends` echo backends.
    pub async fn start(binaries: Binaries, shards: usize, backends: usize) -> anyhow::Result<Self> {
        Self::start_with(binaries, shards, backends, ShardSettings::default()).await
    }

    /// [`Fleet::start`] with shards that run by `settings`.
    pub async fn start_with(
        binaries: Binaries,
        shards: usize,
        backends: usize,
        settings: ShardSettings,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("ringway-fleet")?;
        let pki = Pki::create(dir.path())?;
        std::fs::write(dir.path().join("token"), TOKEN)?;
        let options = Options {
            rpc_timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let control = ControlClient::new(&pki.operator, options)?;
        let mut fleet = Self {
            shards: Vec::new(),
            backends: Vec::new(),
            control,
            pki,
            epoch: 0,
            settings,
            binaries,
            dir,
        };
        for _ in 0..backends {
            fleet.add_backend().await?;
        }
        for _ in 0..shards {
            fleet.add_shard().await?;
        }
        Ok(fleet)
    }

    /// Starts one more echo backend, `backend-<n>`.
    pub async fn add_backend(&mut self) -> anyhow::Result<usize> {
        let echo = self.binaries.echo.clone();
        self.add_backend_with(&echo).await
    }

    /// Starts one more backend, `backend-<n>`, from `binary`
    /// ([`EchoProcess::start`] says which binaries fit).
    pub async fn add_backend_with(&mut self, binary: &Path) -> anyhow::Result<usize> {
        let id = format!("backend-{}", self.backends.len());
        let listen = SocketAddr::new(IpAddr::V4(loopback_ip()), 0);
        let backend = EchoProcess::start(binary, &id, listen).await?;
        self.backends.push(backend);
        Ok(self.backends.len() - 1)
    }

    /// Starts one more shard, `shard-<n>`, on its own address; waits
    /// until its control port answers.
    pub async fn add_shard(&mut self) -> anyhow::Result<usize> {
        let id = format!("shard-{}", self.shards.len());
        let ip = loopback_ip();
        let at = |port: u16| SocketAddr::new(IpAddr::V4(ip), port);
        let (client, peer, control, admin) = (at(8080), at(7000), at(7443), at(9090));
        let config = format!(
            "listener: {{address: \"{client}\"}}\n\
             admin: {{address: \"{admin}\"}}\n\
             connections: {{heartbeat: {{intervalSeconds: {heartbeat}, timeoutSeconds: 10}}, maxConnections: {max}}}\n\
             drain: {{windowSeconds: 1, closeTimeoutSeconds: 2, maxClosesPerSecond: 10000, reconnectJitterMs: 100}}\n\
             runtime: {{workerThreads: {workers}}}\n\
             shard:\n  id: {id}\n  peer: {{address: \"{peer}\", tokenFile: {token}}}\n  control: {{address: \"{control}\", certFile: {cert}, keyFile: {key}, clientCaFile: {ca}}}\n",
            max = self.settings.max_connections,
            heartbeat = self.settings.heartbeat_interval_seconds,
            workers = self.settings.worker_threads,
            token = self.dir.path().join("token").display(),
            cert = self.pki.server.0.display(),
            key = self.pki.server.1.display(),
            ca = self.pki.ca_file.display(),
        );
        let path = self.dir.path().join(format!("{id}.yaml"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(self.dir.path().join(format!("{id}.log")))?;
        let child = Command::new(&self.binaries.dataplane)
            .arg("--config")
            .arg(&path)
            .env("RINGWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binaries.dataplane.display()))?;
        let shard = ShardProcess {
            id,
            client,
            peer,
            control,
            admin,
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(control).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not open its control port {control}", shard.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shards.push(shard);
        Ok(self.shards.len() - 1)
    }

    /// The directory holding the fleet's files (configs, logs, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the directory in place when the fleet is dropped.
    pub fn keep_files(&mut self) {
        self.dir.1 = true;
    }

    /// A shard's log so far (for failure messages).
    pub fn log(&self, shard: usize) -> String {
        let id = &self.shards[shard].id;
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }

    /// The next snapshot: one route `chat` (`/chat`, key: query `room`) to
    /// the given backends, the given stable and canary shards, the canary
    /// owning `basis_points` of the key space. Advances the epoch.
    pub fn snapshot(
        &mut self,
        stable: &[usize],
        canary: &[usize],
        basis_points: u32,
        backends: &[usize],
    ) -> v1::Snapshot {
        self.epoch += 1;
        let route_backends = vec![v1::RouteBackends {
            route: "chat".into(),
            backends: backends
                .iter()
                .map(|&b| v1::Backend {
                    id: self.backends[b].id.clone(),
                    address: self.backends[b].address.to_string(),
                })
                .collect(),
        }];
        let version = |version: v1::Version, slot: v1::Slot, shards: &[usize]| v1::VersionSpec {
            version: version as i32,
            slot: slot as i32,
            image: format!("ringway:{}", version.as_str_name()),
            shards: shards.iter().map(|&s| self.shards[s].as_shard()).collect(),
            backends: route_backends.clone(),
            limits: None,
        };
        let mut versions = vec![version(v1::Version::Stable, v1::Slot::A, stable)];
        if !canary.is_empty() {
            versions.push(version(v1::Version::Canary, v1::Slot::B, canary));
        }
        v1::Snapshot {
            epoch: self.epoch,
            gateway: "e2e/chat".into(),
            routes: vec![v1::Route {
                name: "chat".into(),
                path_prefix: "/chat".into(),
                key: Some(v1::KeySource {
                    source: Some(v1::key_source::Source::Query("room".into())),
                }),
                missing_key: v1::MissingKeyPolicy::Reject as i32,
            }],
            versions,
            canary_basis_points: basis_points,
            limits: None,
            drain: Some(self.settings.drain),
            retiring: Vec::new(),
        }
    }

    /// Pushes `snapshot` to the given shards (all when `None`); fails
    /// unless every one acknowledges its epoch. Returns what each drains.
    pub async fn push_to(
        &self,
        snapshot: &v1::Snapshot,
        shards: Option<&[usize]>,
    ) -> anyhow::Result<Vec<u64>> {
        let targets: Vec<usize> = match shards {
            Some(s) => s.to_vec(),
            None => (0..self.shards.len()).collect(),
        };
        let addresses: Vec<String> = targets
            .iter()
            .map(|&i| self.shards[i].control_address())
            .collect();
        let results = self.control.push(&addresses, snapshot).await;
        let mut draining = Vec::new();
        for r in results {
            match r.outcome {
                Ok(ack) if ack.epoch == snapshot.epoch => draining.push(ack.draining),
                Ok(ack) => bail!(
                    "{} acked epoch {} not {}",
                    r.address,
                    ack.epoch,
                    snapshot.epoch
                ),
                Err(e) => bail!("{e}"),
            }
        }
        Ok(draining)
    }

    /// Pushes `snapshot` to every shard.
    pub async fn push(&self, snapshot: &v1::Snapshot) -> anyhow::Result<Vec<u64>> {
        self.push_to(snapshot, None).await
    }

    /// Every shard's status, in shard order.
    pub async fn statuses(&self) -> anyhow::Result<Vec<v1::PodStatus>> {
        let mut out = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            out.push(self.control.status(&s.control_address()).await?);
        }
        Ok(out)
    }

    /// Waits until every shard in `shards` reports `/readyz` 200.
    pub async fn wait_ready(&self, shards: &[usize]) -> anyhow::Result<()> {
        for &i in shards {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let status = self
                    .control
                    .status(&self.shards[i].control_address())
                    .await?;
                if status.ready {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("{} is not ready: {status:?}", self.shards[i].id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}
