//! The listener and each connection's life before the relay: accept, cap,
//! TLS, upgrade request, routing, backend upgrade; and the process's
//! shutdown: stop accepting, drain, wait.

use std::{
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::{Instant, timeout, timeout_at},
};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::{
    Error,
    config::{Config, KeySourceKind, MissingKey, secs},
    drain,
    handshake::{self, BackendFailure, MAX_HEADERS, Refusal, parse_request, upgrade_backend},
    io::{ClientStream, split_tcp, split_tls},
    metrics::{Metrics, RouteLabel},
    registry::{ConnControl, DrainCause, Registry},
    relay::{RelaySettings, relay},
    routing::{Backend, KeyHash, KeySource, RouteEntry, RouteTable, hash_key},
};

/// How the process stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: stop accepting, drain at the configured pace, then exit.
    Graceful,
    /// SIGINT: close everything at once (1001), then exit.
    Fast,
}

/// State shared by the listener, every connection and the admin port.
pub struct Shared {
    config: Config,
    table: ArcSwap<RouteTable>,
    /// The process's metrics.
    pub metrics: Metrics,
    pub(crate) registry: Arc<Registry>,
    relay: RelaySettings,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    ready: AtomicBool,
    draining: AtomicBool,
    drain_requested: Notify,
}

impl Shared {
    /// Accepting connections and not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.registry.len()
    }

    /// Starts a graceful drain, as SIGTERM does.
    pub(crate) fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// Resolves once a drain has started and every connection has ended.
    pub(crate) async fn wait_drained(&self) {
        while !(self.draining.load(Ordering::SeqCst) && self.registry.is_empty()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A bound data plane, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
}

impl Server {
    /// Binds the client and admin ports and builds the routing table.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let table = build_table(&config)?;
        let tls = config
            .listener
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let listener = bind_listener(config.listener.address, config.listener.reuse_port)?;
        let admin = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.address)
                    .await
                    .map_err(|e| Error::Bind(a.address, e))?,
            ),
            None => None,
        };
        let c = &config.connections;
        let relay = RelaySettings {
            max_frame: c.max_frame_bytes,
            max_message: c.max_message_bytes,
            heartbeat_interval: secs(c.heartbeat.interval_seconds),
            heartbeat_timeout: secs(c.heartbeat.timeout_seconds),
            idle_timeout: (c.idle_timeout_seconds > 0.0).then(|| secs(c.idle_timeout_seconds)),
            slow_consumer: secs(c.slow_consumer_seconds),
            close_timeout: secs(config.drain.close_timeout_seconds),
            reconnect_jitter_ms: config.drain.reconnect_jitter_ms,
        };
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(c.max_connections)),
            table: ArcSwap::from_pointee(table),
            metrics: Metrics::new(),
            registry: Arc::default(),
            relay,
            tls,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_requested: Notify::new(),
            config,
        });
        Ok(Self {
            shared,
            listener,
            admin,
        })
    }

    /// The client port's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listener.address)
    }

    /// The admin port's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The state shared with connections (metrics, counts).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` resolves (or `POST /drain`), then drains.
    pub async fn run(self, shutdown: impl Future<Output = Shutdown>) -> Result<(), Error> {
        let Self {
            shared,
            listener,
            admin,
        } = self;
        let admin_task = admin.map(|a| tokio::spawn(crate::admin::serve(a, Arc::clone(&shared))));
        shared.ready.store(true, Ordering::SeqCst);
        tracing::info!(address = %listener.local_addr().map_err(|e| Error::Bind(shared.config.listener.address, e))?, "accepting connections");
        tokio::pin!(shutdown);
        let (kind, cause) = loop {
            tokio::select! {
                kind = &mut shutdown => break (kind, DrainCause::Shutdown),
                () = shared.drain_requested.notified() => break (Shutdown::Graceful, DrainCause::Api),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => accept(stream, peer, &shared),
                    Err(e) => {
                        // Typically out of file descriptors: back off, let
                        // connections end, try again.
                        shared.metrics.accept_errors.inc();
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        };
        drop(listener);
        shared.draining.store(true, Ordering::SeqCst);
        let drain = &shared.config.drain;
        let victims = shared.registry.snapshot();
        tracing::info!(
            connections = victims.len(),
            ?kind,
            "stopped accepting; draining"
        );
        let close_timeout = secs(drain.close_timeout_seconds);
        match kind {
            Shutdown::Graceful => {
                drain::drain(
                    victims,
                    cause,
                    secs(drain.window_seconds),
                    drain.max_closes_per_second,
                )
                .await;
            }
            Shutdown::Fast => victims.iter().for_each(|v| v.request_drain(cause)),
        }
        let deadline = Instant::now() + close_timeout * 2 + Duration::from_secs(1);
        while !shared.registry.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = shared.registry.len();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "connections still open after the drain; dropping them"
            );
        } else {
            tracing::info!("drained");
        }
        if let Some(task) = admin_task {
            task.abort();
        }
        Ok(())
    }
}

fn bind_listener(address: SocketAddr, reuse_port: bool) -> Result<TcpListener, Error> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(|e| Error::Bind(address, e))?;
    let setup = || -> std::io::Result<()> {
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(4096)
    };
    setup().map_err(|e| Error::Bind(address, e))?;
    TcpListener::from_std(socket.into()).map_err(|e| Error::Bind(address, e))
}

/// Builds the routing table from the standalone config.
pub fn build_table(config: &Config) -> Result<RouteTable, Error> {
    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let key = match r.key.source {
            KeySourceKind::Header => KeySource::Header(r.key.name.clone().unwrap_or_default()),
            KeySourceKind::Query => KeySource::Query(r.key.name.clone().unwrap_or_default()),
            KeySourceKind::Cookie => KeySource::Cookie(r.key.name.clone().unwrap_or_default()),
            KeySourceKind::PathSegment => KeySource::PathSegment(r.key.segment.unwrap_or_default()),
        };
        let mut backends = Vec::with_capacity(r.backends.len());
        for b in &r.backends {
            let address = std::net::ToSocketAddrs::to_socket_addrs(b.as_str())
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "route {}: backend {b:?} is not a host:port that resolves",
                        r.name
                    ))
                })?;
            backends.push(Backend {
                id: b.as_str().into(),
                address,
            });
        }
        routes.push(RouteEntry::new(
            &r.name,
            &r.path_prefix,
            key,
            r.missing_key,
            backends,
        ));
    }
    Ok(RouteTable::new(routes))
}

/// Takes one accepted connection: refuses it at the cap, else spawns its
/// task, with panics contained, logged and counted.
fn accept(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
        shared.metrics.handshake("over_limit");
        let refusal = Refusal::new(
            503,
            "over_limit",
            "this gateway pod is at its connection limit; retry",
        );
        let _ = stream.try_write(&refusal.response());
        return;
    };
    let shared = Arc::clone(shared);
    let span = tracing::debug_span!("conn", %peer, route = tracing::field::Empty, key_hash = tracing::field::Empty, backend = tracing::field::Empty);
    tokio::spawn(
        async move {
            let metrics_shared = Arc::clone(&shared);
            let result = AssertUnwindSafe(connection(stream, peer, shared, permit)).catch_unwind().await;
            if let Err(panic) = result {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                metrics_shared.metrics.failure("panic");
                tracing::error!(panic = %message, "connection task panicked; the connection was closed");
            }
        }
        .instrument(span),
    );
}

/// What routing decided for one request.
struct Placement {
    route: Arc<str>,
    key_hash: KeyHash,
    backend: Backend,
    request: Vec<u8>,
    ws_key: String,
    leftover: Vec<u8>,
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.config.connections;
    let metrics = &shared.metrics;
    let deadline = Instant::now() + secs(cfg.handshake_timeout_seconds);
    let mut client = match &shared.tls {
        None => ClientStream::Plain(tcp),
        Some(acceptor) => match timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                metrics.handshake("tls_error");
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.handshake("timeout");
                return;
            }
        },
    };
    let placement = match timeout_at(deadline, read_and_route(&mut client, peer, &shared)).await {
        Ok(Ok(p)) => p,
        Ok(Err(refusal)) => {
            metrics.handshake(refusal.outcome);
            tracing::debug!(
                status = refusal.status,
                outcome = refusal.outcome,
                "upgrade refused"
            );
            let _ = timeout(
                Duration::from_secs(1),
                write_all(&mut client, &refusal.response()),
            )
            .await;
            return;
        }
        Err(_) => {
            metrics.handshake("timeout");
            let refusal = Refusal::new(408, "timeout", "the upgrade request took too long");
            let _ = timeout(
                Duration::from_millis(200),
                write_all(&mut client, &refusal.response()),
            )
            .await;
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("route", &*placement.route);
    span.record("key_hash", format_args!("{:016x}", placement.key_hash.0));
    span.record("backend", &*placement.backend.id);

    let upgrade = upgrade_backend(
        placement.backend.address,
        &placement.request,
        &placement.ws_key,
        secs(cfg.backend_connect_timeout_seconds),
        secs(cfg.backend_handshake_timeout_seconds),
    )
    .await;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(failure) => {
            metrics.handshake(failure.outcome());
            tracing::debug!(?failure, "backend upgrade failed");
            let response = match failure {
                BackendFailure::Rejected { response, .. } => response,
                BackendFailure::Connect(e) => handshake::error_response(
                    502,
                    &format!("the backend refused the connection: {e}"),
                    &[],
                ),
                BackendFailure::ConnectTimeout => handshake::error_response(
                    504,
                    "the backend did not accept the connection in time",
                    &[],
                ),
                BackendFailure::HandshakeTimeout => handshake::error_response(
                    504,
                    "the backend did not answer the upgrade in time",
                    &[],
                ),
                BackendFailure::BadResponse(m) => handshake::error_response(
                    502,
                    &format!("the backend's answer was not a WebSocket upgrade: {m}"),
                    &[],
                ),
            };
            let _ = timeout(Duration::from_secs(1), write_all(&mut client, &response)).await;
            return;
        }
    };
    let close_timeout = shared.relay.close_timeout;
    if timeout(
        close_timeout,
        write_all(&mut client, &upgrade.response_head),
    )
    .await
    .is_err()
    {
        metrics.handshake("timeout");
        return;
    }
    metrics.handshake("ok");

    let control = Arc::new(ConnControl::new(
        Arc::clone(&placement.route),
        placement.key_hash,
        Arc::clone(&placement.backend.id),
    ));
    let _registered = shared.registry.register(Arc::clone(&control));
    if shared.draining.load(Ordering::SeqCst) {
        control.request_drain(DrainCause::Shutdown);
    }
    let gauge = metrics
        .connections_open
        .get_or_create(&RouteLabel {
            route: placement.route.to_string(),
        })
        .clone();
    gauge.inc();
    let mut backend = upgrade.stream;
    let (backend_rd, backend_wr) = split_tcp(&mut backend);
    let outcome = match client {
        ClientStream::Plain(mut tcp) => {
            let (client_rd, client_wr) = split_tcp(&mut tcp);
            relay(
                client_rd,
                client_wr,
                backend_rd,
                backend_wr,
                &placement.leftover,
                &upgrade.leftover,
                upgrade.deflate,
                &control,
                &shared.relay,
                metrics,
            )
            .await
        }
        ClientStream::Tls(tls) => {
            let (client_rd, client_wr) = split_tls(*tls);
            relay(
                client_rd,
                client_wr,
                backend_rd,
                backend_wr,
                &placement.leftover,
                &upgrade.leftover,
                upgrade.deflate,
                &control,
                &shared.relay,
                metrics,
            )
            .await
        }
    };
    gauge.dec();
    metrics.close(outcome.code, outcome.reason);
    tracing::debug!(code = ?outcome.code, reason = outcome.reason, "connection closed");
}

/// Reads the upgrade request and decides route, key and backend.
async fn read_and_route(
    client: &mut ClientStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Placement, Refusal> {
    let cap = shared.config.connections.max_request_header_bytes;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let room = (cap - buf.len()).min(chunk.len());
        if room == 0 {
            return Err(Refusal::new(
                431,
                "headers_too_large",
                format!("the request head is larger than {cap} bytes"),
            ));
        }
        let n = read_some(client, &mut chunk[..room])
            .await
            .map_err(|_| Refusal::new(400, "client_gone", "connection closed"))?;
        if n == 0 {
            return Err(Refusal::new(
                400,
                "client_gone",
                "connection closed before the request was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some(req) = parse_request(&buf, &mut headers)? else {
            continue;
        };
        if !shared.is_ready() {
            return Err(Refusal::new(
                503,
                "not_ready",
                "this gateway pod is stopping",
            ));
        }
        let table = shared.table.load();
        let route = table.route_for(req.target).ok_or_else(|| {
            Refusal::new(
                404,
                "no_route",
                format!(
                    "no route for {}",
                    req.target.split('?').next().unwrap_or("")
                ),
            )
        })?;
        let key_hash = match route.key.extract(&req.view()) {
            Some(key) => hash_key(key),
            None if route.missing_key == MissingKey::Random => KeyHash(fastrand::u64(..)),
            None => {
                return Err(Refusal::new(
                    400,
                    "missing_key",
                    format!("route {} needs a key: {}", route.name, describe(&route.key)),
                ));
            }
        };
        let backend = route.backend_for(key_hash).cloned().ok_or_else(|| {
            Refusal::new(
                503,
                "no_backend",
                format!("route {} has no backend ready", route.name),
            )
        })?;
        return Ok(Placement {
            route: Arc::clone(&route.name),
            key_hash,
            backend,
            request: req.backend_request(peer, matches!(client, ClientStream::Tls(_))),
            ws_key: req.ws_key.to_owned(),
            leftover: buf[req.head_len..].to_vec(),
        });
    }
}

fn describe(key: &KeySource) -> String {
    match key {
        KeySource::Header(n) => format!("header {n}"),
        KeySource::Query(n) => format!("query parameter {n}"),
        KeySource::Cookie(n) => format!("cookie {n}"),
        KeySource::PathSegment(i) => format!("path segment {i}"),
    }
}

async fn read_some(client: &mut ClientStream, buf: &mut [u8]) -> std::io::Result<usize> {
    match client {
        ClientStream::Plain(s) => s.read(buf).await,
        ClientStream::Tls(s) => s.read(buf).await,
    }
}

async fn write_all(client: &mut ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    async fn go<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
        s.write_all(bytes).await?;
        s.flush().await
    }
    match client {
        ClientStream::Plain(s) => go(s, bytes).await,
        ClientStream::Tls(s) => go(s.as_mut(), bytes).await,
    }
}
