//! `ringway-dataplane sidecar` as a process, as the injector runs it in a
//! pod: in front of an application port on loopback, with the drain token
//! in its environment, and its admin port asked over plain HTTP/1.1 (the
//! kubelet's probes and preStop hook).

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use ringway_dataplane_api::sidecar::{DRAIN_PATH, DRAIN_TOKEN_ENV, DRAIN_TOKEN_HEADER};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::{Instant, timeout},
};

/// The drain token the injector would write into the pod.
pub const TOKEN: &str = "5f0c6a1e9b2d4c7a8e3f1b6d2a9c4e70";

/// A free port on 127.0.0.1 (free when asked; the process binds it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// A running sidecar.
pub struct SidecarProcess {
    /// The process.
    pub child: Child,
    /// Where clients connect.
    pub client: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
    /// Its drain token.
    pub token: String,
}

impl SidecarProcess {
    /// Starts `dataplane sidecar` in front of `app_port` with `args` added
    /// (the drain window, rate, control port, ...), and waits until it is
    /// ready.
    pub async fn start(dataplane: &Path, app_port: u16, args: &[String]) -> anyhow::Result<Self> {
        Self::start_with_token(dataplane, app_port, args, TOKEN).await
    }

    /// The same with the drain token `token` (an injected pod's).
    pub async fn start_with_token(
        dataplane: &Path,
        app_port: u16,
        args: &[String],
        token: &str,
    ) -> anyhow::Result<Self> {
        let (client, admin) = (free_port()?, free_port()?);
        let child = Command::new(dataplane)
            .args(["sidecar", "--app-port", &app_port.to_string()])
            .args(["--listen-port", &client.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(args)
            .env(DRAIN_TOKEN_ENV, token)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sidecar")?;
        let sidecar = Self {
            child,
            client: SocketAddr::from(([127, 0, 0, 1], client)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            token: token.to_owned(),
        };
        let up = Instant::now();
        while !sidecar.get("/readyz", "").await.starts_with("HTTP/1.1 200") {
            if up.elapsed() > Duration::from_secs(10) {
                bail!("the sidecar did not become ready in 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(sidecar)
    }

    /// `GET path` on the admin port with `headers` (see [`get`]).
    pub async fn get(&self, path: &str, headers: &str) -> String {
        get(self.admin, path, headers).await
    }

    /// The application's preStop hook, with its drain token (see
    /// [`pre_stop_with_token`]).
    pub async fn pre_stop(&self) -> String {
        pre_stop_with_token(self.admin, &self.token).await
    }
}

/// `GET path` on the admin port `admin` with `headers` (each ending in
/// CRLF); the whole answer, or nothing when the port does not answer.
pub async fn get(admin: SocketAddr, path: &str, headers: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(admin).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(60), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The application's preStop hook on the sidecar whose admin port is
/// `admin`, started with [`TOKEN`] (see [`pre_stop_with_token`]).
pub async fn pre_stop(admin: SocketAddr) -> String {
    pre_stop_with_token(admin, TOKEN).await
}

/// The application's preStop hook on the sidecar whose admin port is
/// `admin`: drains it with `token` and answers once its clients are gone.
pub async fn pre_stop_with_token(admin: SocketAddr, token: &str) -> String {
    get(
        admin,
        DRAIN_PATH,
        &format!("{DRAIN_TOKEN_HEADER}: {token}\r\n"),
    )
    .await
}
