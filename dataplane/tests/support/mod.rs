//! Test harness: echo backends that say who they are, a gateway in-process
//! on 127.0.0.1:0, WebSocket clients and raw HTTP clients.
// Each test file uses a different part of the harness; tungstenite's
// handshake callback type has a large error variant we do not choose.
#![allow(dead_code, clippy::result_large_err)]

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use ringway_dataplane::{Config, Server, Shared, Shutdown, sidecar::SidecarArgs};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, accept_hdr_async,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        handshake::server::{Request, Response},
        http::HeaderValue,
    },
};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A backend that echoes every message and answers the upgrade with
/// `X-Ringway-Backend: <id>` (and the first subprotocol the client offers).
pub async fn echo_backend(id: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let id = id.to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let id = id.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    resp.headers_mut()
                        .insert("x-ringway-backend", HeaderValue::from_str(&id).expect("id"));
                    if let Some(p) = req.headers().get("sec-websocket-protocol") {
                        let first = p
                            .to_str()
                            .unwrap_or("")
                            .split(',')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_owned();
                        resp.headers_mut().insert(
                            "sec-websocket-protocol",
                            HeaderValue::from_str(&first).expect("proto"),
                        );
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shared: std::sync::Arc<Shared>,
    stop: Option<oneshot::Sender<Shutdown>>,
    pub task: JoinHandle<()>,
}

impl Gateway {
    /// Starts a gateway from YAML; `{BACKENDS}` is replaced by the list of
    /// `backends`, `{ADMIN}` by an admin block on a free port.
    pub async fn start(yaml: &str, backends: &[SocketAddr]) -> Self {
        let list = backends
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = yaml
            .replace("{BACKENDS}", &format!("[{list}]"))
            .replace("{ADMIN}", "admin: {address: 127.0.0.1:0}");
        let config = Config::from_yaml(&yaml).expect("test config is valid");
        Self::serve(Server::bind(config).await.expect("bind"))
    }

    /// Runs a bound server (standalone, shard or sidecar) in this process.
    pub fn serve(server: Server) -> Self {
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let shared = server.shared();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async move { stopped.await.unwrap_or(Shutdown::Fast) })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            admin,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// A gateway with one echo route keyed by the `room` query parameter.
    pub async fn echo(backends: &[SocketAddr], extra: &str) -> Self {
        Self::echo_with_admin(backends, "127.0.0.1:0", extra).await
    }

    /// [`Gateway::echo`] with its admin port bound on `admin`.
    pub async fn echo_with_admin(backends: &[SocketAddr], admin: &str, extra: &str) -> Self {
        let yaml = format!(
            "listener: {{address: 127.0.0.1:0}}\nadmin: {{address: \"{admin}\"}}\nroutes:\n  - name: echo\n    pathPrefix: /echo\n    key: {{source: Query, name: room}}\n    backends: {{BACKENDS}}\n{extra}"
        );
        Self::start(&yaml, backends).await
    }

    /// Stops it (SIGTERM-like or SIGINT-like) and waits until it has drained.
    pub async fn stop(mut self, how: Shutdown) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the gateway stops")
            .expect("no panic");
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// A sidecar's flags in front of the application at `app`, on free ports,
/// draining over `window` seconds at most 1,000 closes per second, without
/// a control port.
pub fn sidecar_args(app: SocketAddr, window: f64) -> SidecarArgs {
    let [listen_port, admin_port, control_port] = free_ports();
    SidecarArgs {
        app_port: app.port(),
        listen_port,
        admin_port,
        drain_window_seconds: window,
        max_closes_per_second: 1_000,
        max_connections: 100,
        termination_grace_seconds: None,
        control_tls_dir: None,
        control_port,
    }
}

/// `N` different ports that were free a moment ago (all held at once
/// while they are picked, so that no two are the same).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

/// `addr` (bound on every address) on loopback.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
}

/// The application's preStop request (`GET /drain?wait=true`), from the
/// pod's loopback.
pub fn prestop() -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ringway_dataplane_api::sidecar::DRAIN_PATH
    )
    .into_bytes()
}

/// A port that was free a moment ago, for a server that takes a port
/// number rather than port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Connects a WebSocket client; returns it with the backend id it reached.
pub async fn connect(url: &str) -> (Client, String) {
    connect_with(url, &[]).await.expect("connect")
}

pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, String), tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).expect("header"));
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let id = resp
        .headers()
        .get("x-ringway-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((ws, id))
}

/// Sends raw bytes and returns everything the server says until it closes
/// (or 5 s pass).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    try_raw(addr, request).await.expect("connect")
}

/// [`raw`], or `None` when nothing listens.
pub async fn try_raw(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A valid upgrade request for `target`.
pub fn upgrade_request(target: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// The next message that is not a ping or pong, or `None` if the stream
/// ended, within 10 s.
pub async fn next_data(ws: &mut Client) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn close_of(ws: &mut Client) -> Option<(u16, String)> {
    loop {
        match next_data(ws).await? {
            Message::Close(Some(frame)) => {
                return Some((u16::from(frame.code), frame.reason.to_string()));
            }
            Message::Close(None) => return None,
            _ => continue,
        }
    }
}
