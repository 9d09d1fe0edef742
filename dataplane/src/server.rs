//! The listener and each connection's life before the relay: accept, cap,
//! TLS, upgrade request, routing, backend upgrade; and the process's
//! shutdown: stop accepting, drain, wait.

use std::{
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use tokio::{
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
    io::Io,
    metrics::{Metrics, RouteLabel},
};
use crate::{
    registry::{ConnControl, DrainCause, Registry, RegistryGuard},
    relay::{Relay, RelaySettings},
    routing::{Backend, KeyHash, KeySource, RouteEntry, RouteTable, hash_key},
};
use prometheus_client::metrics::gauge::Gauge;

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
    pub metrics: Arc<Metrics>,
    pub(crate) registry: Arc<Registry>,
    relay: Arc<RelaySettings>,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    ready: AtomicBool,
    /// The cause of the drain in progress (0: none).
    draining: AtomicU8,
    drain_requested: Notify,
}

impl Shared {
    /// Accepting connections and not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.drain_cause().is_none()
    }

    /// The drain in progress, if any.
    pub(crate) fn drain_cause(&self) -> Option<DrainCause> {
        DrainCause::from_u8(self.draining.load(Ordering::SeqCst))
    }

    /// Starts a graceful drain, as SIGTERM does.
    pub(crate) fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// Resolves once a drain has started and every connection has ended.
    pub(crate) async fn wait_drained(&self) {
        while !(self.drain_cause().is_some() && self.registry.is_empty()) {
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
            metrics: Arc::new(Metrics::new()),
            registry: Arc::default(),
            relay: Arc::new(relay),
            tls,
            ready: AtomicBool::new(false),
            draining: AtomicU8::new(0),
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
        shared.draining.store(cause.to_u8(), Ordering::SeqCst);
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
    let handshake = Box::pin(establish(stream, peer, Arc::clone(&shared), permit));
    let task = ConnectionTask::Establishing { handshake };
    tokio::spawn(contained(task, Arc::clone(&shared.metrics)).instrument(span));
}

/// Runs one connection's task so that a panic in it ends that connection
/// only: caught, logged (inside the connection's span) and counted. The
/// task's guards release its registry entry, gauge and permit as it unwinds.
async fn contained(task: impl Future<Output = ()>, metrics: Arc<Metrics>) {
    if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        metrics.failure("panic");
        tracing::error!(panic = %message, "connection task panicked; the connection was closed");
    }
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

pin_project_lite::pin_project! {
    /// A client connection's task: the handshake (boxed: its buffers live
    /// only while it runs), then the relay, held inline.
    #[project = TaskProj]
    enum ConnectionTask {
        Establishing { handshake: Pin<Box<dyn Future<Output = Option<(Relay, Open)>> + Send>> },
        Relaying { #[pin] relay: Relay, open: Open },
        Done,
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                TaskProj::Establishing { handshake } => match ready!(handshake.as_mut().poll(cx)) {
                    Some((relay, open)) => self.set(Self::Relaying { relay, open }),
                    None => {
                        self.set(Self::Done);
                        return Poll::Ready(());
                    }
                },
                TaskProj::Relaying { relay, open } => {
                    let outcome = ready!(relay.poll(cx));
                    open.metrics.close(outcome.code, outcome.reason);
                    tracing::debug!(code = ?outcome.code, reason = outcome.reason, "connection closed");
                    self.set(Self::Done);
                    return Poll::Ready(());
                }
                TaskProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// An open connection's place in the books: registered for drains,
/// counted in the gauge and the connection limit, until dropped.
struct Open {
    metrics: Arc<Metrics>,
    gauge: Gauge,
    _registered: RegistryGuard,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// TLS, the upgrade request, routing and the backend's upgrade; `None`
/// when any of it failed (answered and counted).
async fn establish(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> Option<(Relay, Open)> {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.config.connections;
    let metrics = &shared.metrics;
    let deadline = Instant::now() + secs(cfg.handshake_timeout_seconds);
    let mut client = match &shared.tls {
        None => Io::Tcp(tcp),
        Some(acceptor) => match timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Io::tls(tls),
            Ok(Err(e)) => {
                metrics.handshake("tls_error");
                tracing::debug!(error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                metrics.handshake("timeout");
                return None;
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
                client.write_all(&refusal.response()),
            )
            .await;
            return None;
        }
        Err(_) => {
            metrics.handshake("timeout");
            let refusal = Refusal::new(408, "timeout", "the upgrade request took too long");
            let _ = timeout(
                Duration::from_millis(200),
                client.write_all(&refusal.response()),
            )
            .await;
            return None;
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
            let _ = timeout(Duration::from_secs(1), client.write_all(&response)).await;
            return None;
        }
    };
    // Registered before the client learns it is connected, so that a drain
    // that starts now cannot miss it.
    let control = Arc::new(ConnControl::new(
        Arc::clone(&placement.route),
        placement.key_hash,
        Arc::clone(&placement.backend.id),
    ));
    let registered = shared.registry.register(Arc::clone(&control));
    let close_timeout = shared.relay.close_timeout;
    match timeout(close_timeout, client.write_all(&upgrade.response_head)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            metrics.handshake("client_gone");
            return None;
        }
        Err(_) => {
            metrics.handshake("timeout");
            return None;
        }
    }
    metrics.handshake("ok");
    if let Some(cause) = shared.drain_cause() {
        control.request_drain(cause);
    }
    let gauge = metrics
        .connections_open
        .get_or_create(&RouteLabel {
            route: placement.route.to_string(),
        })
        .clone();
    gauge.inc();
    let relay = Relay::new(
        client,
        Io::Tcp(upgrade.stream),
        (placement.leftover, upgrade.leftover),
        upgrade.deflate,
        control,
        Arc::clone(&shared.relay),
        Arc::clone(&shared.metrics),
    );
    let open = Open {
        metrics: Arc::clone(&shared.metrics),
        gauge,
        _registered: registered,
        _permit: permit,
    };
    Some((relay, open))
}

/// Reads the upgrade request and decides route, key and backend.
async fn read_and_route(
    client: &mut Io,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Placement, Refusal> {
    let cap = shared.config.connections.max_request_header_bytes;
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read straight into `buf`: a stack array would live in the
        // connection's future across the await.
        let room = (cap - buf.len()).min(2048);
        if room == 0 {
            return Err(Refusal::new(
                431,
                "headers_too_large",
                format!("the request head is larger than {cap} bytes"),
            ));
        }
        let filled = buf.len();
        buf.resize(filled + room, 0);
        let n = client
            .read_some(&mut buf[filled..])
            .await
            .map_err(|_| Refusal::new(400, "client_gone", "connection closed"))?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(Refusal::new(
                400,
                "client_gone",
                "connection closed before the request was complete",
            ));
        }
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
            request: req.backend_request(peer, client.is_tls()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_connection_is_contained_counted_and_releases_its_slot() {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::default());
        let limit = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&limit).try_acquire_owned().expect("a permit");
        let control = Arc::new(ConnControl::new("r".into(), KeyHash(1), "b".into()));
        let guard = registry.register(control);
        let doomed = tokio::spawn(contained(
            async move {
                let _held = (guard, permit);
                panic!("a bug in one connection");
            },
            Arc::clone(&metrics),
        ));
        doomed.await.expect("the panic does not escape the task");
        assert!(registry.is_empty(), "the registry entry was released");
        assert_eq!(
            limit.available_permits(),
            1,
            "the connection-limit permit was released"
        );
        assert!(
            metrics
                .render()
                .contains("ringway_connection_failures_total{kind=\"panic\"} 1"),
            "{}",
            metrics.render()
        );
        // The process goes on: other connections' tasks still run.
        let fine = tokio::spawn(contained(async {}, Arc::clone(&metrics)));
        fine.await.expect("runs");
    }
}
