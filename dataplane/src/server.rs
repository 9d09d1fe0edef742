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
    config::{Config, MissingKey, secs},
    drain::Drainer,
    handoff::{self, PeerToken},
    handshake::{
        self, BackendFailure, BackendUpgrade, MAX_HEADERS, Refusal, parse_request, upgrade_backend,
    },
    io::Io,
    memory::{self, HighWater},
    metrics::{Metrics, RouteLabel},
    registry::{ConnControl, DrainCause, Registry, RegistryGuard, Role},
    relay::{Relay, Relays},
    routing::{Backend, KeyHash, KeySource, Seat, Shard, Version, hash_key},
    send_queues::SendQueues,
    snapshot::Running,
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

/// This pod's identity as a shard of a gateway.
pub(crate) struct ShardIdentity {
    /// The shard id the snapshots name it by.
    pub(crate) id: Arc<str>,
    /// The peer ports' shared secret.
    pub(crate) token: PeerToken,
    /// Time to reach an owner shard before falling back.
    pub(crate) connect_timeout: Duration,
}

/// State shared by the listener, every connection, the admin port and the
/// control service.
pub struct Shared {
    pub(crate) config: Config,
    /// Set when this pod is a shard of a gateway (else standalone).
    pub(crate) shard: Option<ShardIdentity>,
    /// What the pod runs on; swapped whole by a snapshot.
    pub(crate) running: ArcSwap<Running>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The ceiling on what clients that do not keep up hold.
    queues: Arc<SendQueues>,
    pub(crate) registry: Arc<Registry>,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    /// The most connections held at once lately, for memory releases.
    high_water: HighWater,
    ready: AtomicBool,
    /// The cause of the drain in progress (0: none).
    draining: AtomicU8,
    /// Told when `draining` is first set.
    drain_started: Notify,
    drain_requested: Notify,
    /// A drain RPC ran: stop taking hand-offs, stay up until stopped.
    pub(crate) peer_closed: Notify,
    /// Paces every drain of this pod.
    pub(crate) drainer: Drainer,
    /// One snapshot at a time.
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Accepting connections and not stopping; a shard also needs its
    /// first snapshot, and must not be retiring.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self.drain_cause().is_none()
            && (self.shard.is_none() || {
                let running = self.running.load();
                running.routing.epoch > 0 && !running.retiring
            })
    }

    /// The drain in progress, if any.
    /// Connections held now (each takes a permit of the connection limit
    /// from accept to close).
    fn in_use(&self) -> usize {
        self.config.connections.max_connections - self.limit.available_permits()
    }

    pub(crate) fn drain_cause(&self) -> Option<DrainCause> {
        DrainCause::from_u8(self.draining.load(Ordering::SeqCst))
    }

    /// Marks the pod as draining for `cause` (the first cause stays).
    pub(crate) fn start_draining(&self, cause: DrainCause) {
        let _ =
            self.draining
                .compare_exchange(0, cause.to_u8(), Ordering::SeqCst, Ordering::SeqCst);
        self.drain_started.notify_waiters();
    }

    /// Starts a graceful drain, as SIGTERM does.
    pub(crate) fn request_drain(&self) {
        self.drain_requested.notify_one();
    }

    /// Resolves once a drain has started and every connection has ended.
    pub(crate) async fn wait_drained(&self) {
        crate::notified_until(&self.drain_started, || self.drain_cause().is_some()).await;
        self.registry.wait_empty().await;
    }

    /// This pod's shard id (shards only).
    pub(crate) fn shard_id(&self) -> Option<&Arc<str>> {
        self.shard.as_ref().map(|s| &s.id)
    }
}

/// A bound data plane, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    peer: Option<TcpListener>,
    control: Option<(TcpListener, tonic::transport::ServerTlsConfig)>,
}

impl Server {
    /// Binds the client, admin, peer and control ports and builds the
    /// routing state (standalone) or waits for the first snapshot (shard).
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let shard = match &config.shard {
            None => None,
            Some(s) if s.id.is_empty() => {
                return Err(Error::Config(
                    "shard.id: empty; set it in the config or pass --shard-id".into(),
                ));
            }
            Some(s) => Some(ShardIdentity {
                id: s.id.as_str().into(),
                token: PeerToken::load(&s.peer.token_file)?,
                connect_timeout: secs(s.peer.connect_timeout_seconds),
            }),
        };
        let running = match &shard {
            None => Running::standalone(&config)?,
            Some(_) => Running::waiting(&config),
        };
        let tls = config
            .listener
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let listener = bind_listener(config.listener.address, config.listener.reuse_port)?;
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|e| Error::Bind(address, e))
        };
        let admin = match &config.admin {
            Some(a) => Some(bind(a.address).await?),
            None => None,
        };
        let (peer, control) = match &config.shard {
            Some(s) => (
                Some(bind(s.peer.address).await?),
                Some((
                    bind(s.control.address).await?,
                    crate::control::tls_config(&s.control)?,
                )),
            ),
            None => (None, None),
        };
        let metrics = Arc::new(Metrics::new());
        let queues = Arc::new(SendQueues::new(
            config.connections.max_queued_bytes,
            &metrics,
        ));
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(config.connections.max_connections)),
            high_water: HighWater::default(),
            running: ArcSwap::from_pointee(running),
            metrics,
            queues,
            registry: Arc::default(),
            tls,
            ready: AtomicBool::new(false),
            draining: AtomicU8::new(0),
            drain_started: Notify::new(),
            drain_requested: Notify::new(),
            peer_closed: Notify::new(),
            drainer: Drainer::start(),
            apply_lock: tokio::sync::Mutex::new(()),
            shard,
            config,
        });
        Ok(Self {
            shared,
            listener,
            admin,
            peer,
            control,
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

    /// The peer port's address (shards only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The control port's address (shards only).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|(a, _)| a.local_addr().ok())
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
            mut peer,
            control,
        } = self;
        let admin_task = admin.map(|a| tokio::spawn(crate::admin::serve(a, Arc::clone(&shared))));
        let memory_task = tokio::spawn(release_memory(Arc::clone(&shared)));
        let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
        let control_task = control.map(|(listener, tls)| {
            tokio::spawn(crate::control::serve(
                listener,
                tls,
                Arc::clone(&shared),
                async move {
                    let _ = control_stopped.await;
                },
            ))
        });
        shared.ready.store(true, Ordering::SeqCst);
        tracing::info!(address = %listener.local_addr().map_err(|e| Error::Bind(shared.config.listener.address, e))?, shard = ?shared.shard_id(), "accepting connections");
        tokio::pin!(shutdown);
        let (kind, cause) = loop {
            tokio::select! {
                kind = &mut shutdown => break (kind, DrainCause::Shutdown),
                // The admin `/drain` stops the process just as SIGTERM does
                // (the kubelet's preStop hook calls it): whatever is left
                // at the window's end is closed, so the pod finishes
                // within its termination grace period.
                () = shared.drain_requested.notified() => break (Shutdown::Graceful, DrainCause::Shutdown),
                () = shared.peer_closed.notified() => {
                    tracing::info!("drained on request: no more hand-offs");
                    peer = None;
                }
                accepted = listener.accept() => accepted_or_back_off(accepted, Origin::Client, &shared).await,
                accepted = accept_from(peer.as_ref()) => accepted_or_back_off(accepted, Origin::Peer, &shared).await,
            }
        };
        drop(listener);
        drop(peer);
        shared.start_draining(cause);
        let running = shared.running.load_full();
        let victims = shared.registry.snapshot();
        tracing::info!(
            connections = victims.len(),
            ?kind,
            "stopped accepting; draining"
        );
        match kind {
            Shutdown::Graceful => {
                let policy = running.drain;
                shared
                    .drainer
                    .submit(victims, cause, policy.window, policy.max_closes_per_second)
                    .await;
                shared.drainer.idle().await;
            }
            Shutdown::Fast => victims.iter().for_each(|v| v.request_drain(cause)),
        }
        let close_timeout = running.relay.close_timeout;
        let last_close = close_timeout * 2 + Duration::from_secs(1);
        let _ = timeout(last_close, shared.registry.wait_empty()).await;
        let left = shared.registry.len();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "connections still open after the drain; dropping them"
            );
        } else {
            tracing::info!("drained");
        }
        let _ = stop_control.send(());
        if let Some(task) = control_task {
            let _ = timeout(Duration::from_secs(1), task).await;
        }
        if let Some(task) = admin_task {
            task.abort();
        }
        memory_task.abort();
        Ok(())
    }
}

/// Gives the allocator's free pages back to the system whenever many
/// connections ended since the last look ([`crate::memory`]).
async fn release_memory(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(memory::CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let in_use = shared.in_use();
        if !shared.high_water.fell_enough(in_use) {
            continue;
        }
        match tokio::task::spawn_blocking(memory::release_free_pages).await {
            Ok(Ok(arenas)) => {
                shared.metrics.memory_releases.inc();
                tracing::debug!(
                    arenas,
                    connections = in_use,
                    "gave free memory back to the system"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not give free memory back to the system")
            }
            Err(e) => tracing::warn!(error = %e, "the memory release task failed"),
        }
    }
}

/// Where a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A client, on the client port.
    Client,
    /// Another shard handing off a connection this pod owns.
    Peer,
}

/// Accepts on `listener`, or waits forever without one.
async fn accept_from(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accepted_or_back_off(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    origin: Origin,
    shared: &Arc<Shared>,
) {
    match accepted {
        Ok((stream, peer)) => accept(stream, peer, origin, shared),
        Err(e) => {
            // Typically out of file descriptors: back off, let
            // connections end, try again.
            shared.metrics.accept_errors.inc();
            tracing::warn!(error = %e, ?origin, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// Takes one accepted connection: refuses it at the cap, else spawns its
/// task, with panics contained, logged and counted.
fn accept(stream: TcpStream, peer: SocketAddr, origin: Origin, shared: &Arc<Shared>) {
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
    shared.high_water.note(shared.in_use());
    let shared = Arc::clone(shared);
    let span = tracing::debug_span!("conn", %peer, ?origin, route = tracing::field::Empty, key_hash = tracing::field::Empty, backend = tracing::field::Empty);
    let handshake = Box::pin(establish(stream, peer, origin, Arc::clone(&shared), permit));
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
    /// The state it was decided on.
    running: Arc<Running>,
    route: Arc<str>,
    key_hash: KeyHash,
    /// The backend, when this pod serves the connection itself.
    backend: Option<Backend>,
    /// The version that owns the key.
    version: Version,
    /// Shards to hand the connection to, in order (owner first); empty
    /// when this pod serves it. May name this pod (then it serves).
    handoff: Vec<Shard>,
    /// The request for the backend.
    request: Vec<u8>,
    /// The client's request as it came, for a hand-off.
    raw: Vec<u8>,
    client: SocketAddr,
    tls: bool,
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

/// Counts a refusal, logs it and answers it.
async fn refuse(client: &mut Io, metrics: &Metrics, refusal: &Refusal) {
    metrics.handshake(refusal.outcome);
    tracing::debug!(
        status = refusal.status,
        outcome = refusal.outcome,
        "upgrade refused"
    );
    answer(client, &refusal.response()).await;
}

/// How long a refused client may go on sending after its answer.
const LINGER: Duration = Duration::from_secs(1);
/// How much of what it sends then is read (and dropped).
const LINGER_BYTES: usize = 256 * 1024;

/// Writes `response` to the client, briefly, then closes so that the
/// client can read it: a socket closed with unread bytes (the rest of a
/// request too large to read) sends a reset, which may destroy the answer
/// in flight. So the gateway half-closes and reads what comes for a
/// bounded time and amount first, like nginx's lingering close.
async fn answer(client: &mut Io, response: &[u8]) {
    if let Ok(Ok(())) = timeout(Duration::from_secs(1), client.write_all(response)).await {
        linger(client).await;
    }
}

async fn linger(client: &mut Io) {
    let deadline = Instant::now() + LINGER;
    let shut = std::future::poll_fn(|cx| client.poll_shutdown(cx));
    if !matches!(timeout_at(deadline, shut).await, Ok(Ok(()))) {
        return;
    }
    // Only refused connections get here, and only for a second: the
    // buffer is not part of every connection's future.
    let mut sink = vec![0; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        match timeout_at(deadline, client.read_some(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// What a failed upgrade toward a backend (or an owner shard) tells the client.
fn failure_response(failure: BackendFailure) -> Vec<u8> {
    match failure {
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
        BackendFailure::HandshakeTimeout => {
            handshake::error_response(504, "the backend did not answer the upgrade in time", &[])
        }
        BackendFailure::BadResponse(m) => handshake::error_response(
            502,
            &format!("the backend's answer was not a WebSocket upgrade: {m}"),
            &[],
        ),
    }
}

/// TLS, the upgrade request, routing, then the backend's upgrade (or the
/// owner shard's, for a hand-off); `None` when any of it failed (answered
/// and counted).
async fn establish(
    tcp: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) -> Option<(Relay, Open)> {
    let _ = tcp.set_nodelay(true);
    // What a client that does not read can make the kernel hold for it.
    let _ = socket2::SockRef::from(&tcp)
        .set_send_buffer_size(shared.config.connections.send_buffer_bytes);
    let metrics = &shared.metrics;
    let deadline = Instant::now() + shared.running.load().handshake_timeout;
    let mut client = match (&shared.tls, origin) {
        (Some(acceptor), Origin::Client) => {
            match timeout_at(deadline, acceptor.accept(tcp)).await {
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
            }
        }
        _ => Io::Tcp(tcp),
    };
    let placement =
        match timeout_at(deadline, read_and_route(&mut client, peer, origin, &shared)).await {
            Ok(Ok(p)) => p,
            Ok(Err(refusal)) => {
                refuse(&mut client, metrics, &refusal).await;
                return None;
            }
            Err(_) => {
                metrics.handshake("timeout");
                let refusal = Refusal::new(408, "timeout", "the upgrade request took too long");
                answer(&mut client, &refusal.response()).await;
                return None;
            }
        };
    let span = tracing::Span::current();
    span.record("route", &*placement.route);
    span.record("key_hash", format_args!("{:016x}", placement.key_hash.0));

    let (upgrade, role) = match connect_upstream(&placement, &shared).await {
        Ok(connected) => connected,
        Err(Failed::Refused(refusal)) => {
            refuse(&mut client, metrics, &refusal).await;
            return None;
        }
        Err(Failed::Upstream(failure)) => {
            metrics.handshake(failure.outcome());
            tracing::debug!(?failure, "upgrade towards the backend failed");
            answer(&mut client, &failure_response(failure)).await;
            return None;
        }
    };
    // Registered before the client learns it is connected, so that a drain
    // that starts now cannot miss it.
    let control = Arc::new(ConnControl::new(
        Arc::clone(&placement.route),
        placement.key_hash,
        role,
    ));
    let registered = shared.registry.register(Arc::clone(&control));
    // A snapshot applied since the placement did not see this connection:
    // check it against the new state here.
    let now = shared.running.load();
    if now.routing.epoch != placement.running.routing.epoch
        && crate::control::must_move(&control, &placement.running, &now)
    {
        control.request_drain(DrainCause::Rebalance);
    }
    let relay_settings = Arc::clone(&now.relay);
    drop(now);
    match timeout(
        relay_settings.close_timeout,
        client.write_all(&upgrade.response_head),
    )
    .await
    {
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
    metrics.handshake(match control.role {
        Role::Owner(_) => "ok",
        Role::Edge(_) => "handed_off",
    });
    if let Some(cause) = shared.drain_cause() {
        control.request_drain(cause);
    }
    // Each client is counted once over the pods, where it is owned; the
    // edge that relays it to its owner counts it apart.
    let family = match control.role {
        Role::Owner(_) => &metrics.connections_open,
        Role::Edge(_) => &metrics.connections_relayed,
    };
    let gauge = family
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
        relay_settings,
        Relays {
            metrics: Arc::clone(&shared.metrics),
            queues: Arc::clone(&shared.queues),
        },
    );
    let open = Open {
        metrics: Arc::clone(&shared.metrics),
        gauge,
        _registered: registered,
        _permit: permit,
    };
    Some((relay, open))
}

/// Why a routed connection went no further.
enum Failed {
    /// The gateway itself refuses it.
    Refused(Refusal),
    /// The backend's (or an owner shard's) upgrade failed.
    Upstream(BackendFailure),
}

/// Hands the connection to its owner, or to the next shard on the ring
/// when the owner cannot be reached, or upgrades it to its backend here
/// when the ring says so (or this pod is standalone).
async fn connect_upstream(
    placement: &Placement,
    shared: &Shared,
) -> Result<(BackendUpgrade, Role), Failed> {
    let cfg = &shared.config.connections;
    let metrics = &shared.metrics;
    if placement.handoff.is_empty() {
        return serve_here(placement, shared).await;
    }
    for (attempt, shard) in placement.handoff.iter().enumerate() {
        let me = match &shared.shard {
            Some(me) if me.id != shard.id => me,
            _ => return serve_here(placement, shared).await,
        };
        let mut request = handoff::preamble(&me.token, placement.client, placement.tls);
        request.extend_from_slice(&placement.raw);
        let result = upgrade_backend(
            shard.peer,
            &request,
            &placement.ws_key,
            me.connect_timeout,
            secs(cfg.backend_connect_timeout_seconds) + secs(cfg.backend_handshake_timeout_seconds),
        )
        .await;
        match result {
            Ok(upgrade) => {
                metrics.handoff(if attempt == 0 { "ok" } else { "fallback" });
                tracing::Span::current().record("backend", format_args!("shard {}", shard.id));
                return Ok((upgrade, Role::Edge(Arc::clone(&shard.id))));
            }
            Err(BackendFailure::Connect(_) | BackendFailure::ConnectTimeout) => {
                metrics.handoff("unreachable");
                tracing::debug!(shard = %shard.id, "owner shard unreachable; trying the next one");
            }
            Err(failure) => {
                metrics.handoff("refused");
                return Err(Failed::Upstream(failure));
            }
        }
    }
    Err(Failed::Refused(Refusal::new(
        502,
        "no_shard",
        "no shard of this gateway could take the connection",
    )))
}

/// Upgrades the connection to its backend from this pod.
async fn serve_here(
    placement: &Placement,
    shared: &Shared,
) -> Result<(BackendUpgrade, Role), Failed> {
    let cfg = &shared.config.connections;
    let Some(backend) = &placement.backend else {
        return Err(Failed::Refused(Refusal::new(
            503,
            "no_backend",
            format!("route {} has no backend ready", placement.route),
        )));
    };
    tracing::Span::current().record("backend", &*backend.id);
    let upgrade = upgrade_backend(
        backend.address,
        &placement.request,
        &placement.ws_key,
        secs(cfg.backend_connect_timeout_seconds),
        secs(cfg.backend_handshake_timeout_seconds),
    )
    .await
    .map_err(Failed::Upstream)?;
    let seat = Seat {
        version: placement.version,
        owner: shared.shard_id().cloned(),
        backend: Some(Arc::clone(&backend.id)),
    };
    Ok((upgrade, Role::Owner(seat)))
}

/// Reads the upgrade request (after a hand-off's preamble) and decides
/// route, key, version, owner and backend.
async fn read_and_route(
    client: &mut Io,
    peer: SocketAddr,
    origin: Origin,
    shared: &Shared,
) -> Result<Placement, Refusal> {
    let cap = shared.config.connections.max_request_header_bytes;
    // Most requests fit the first 512 bytes; the buffer doubles as a
    // request grows, so a connection that sends a byte at a time (a
    // slowloris) holds half a kilobyte, not the largest read.
    let mut buf = Vec::new();
    let mut from = (origin == Origin::Client).then_some((peer, client.is_tls()));
    loop {
        // Read straight into `buf`: a stack array would live in the
        // connection's future across the await.
        let limit = cap
            + if from.is_none() {
                handoff::MAX_PREAMBLE
            } else {
                0
            };
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(buf.capacity().clamp(512, 2048));
        }
        let room = (limit - buf.len().min(limit)).min(buf.capacity() - buf.len());
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
        if from.is_none() {
            let token = shared
                .shard
                .as_ref()
                .map(|s| &s.token)
                .ok_or_else(|| Refusal::new(400, "peer_malformed", "not a shard"))?;
            let Some((handed, used)) = handoff::parse_preamble(&buf, token)? else {
                continue;
            };
            buf.drain(..used);
            from = Some((handed.client, handed.tls));
        }
        let Some((client_addr, tls)) = from else {
            continue;
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some(req) = parse_request(&buf, &mut headers)? else {
            continue;
        };
        if !shared.is_ready() {
            return Err(Refusal::new(
                503,
                "not_ready",
                if shared.drain_cause().is_some() {
                    "this gateway pod is stopping"
                } else {
                    "this gateway pod has no routing snapshot yet"
                },
            ));
        }
        let running = shared.running.load_full();
        let (index, route) = running.routing.table.route_for(req.target).ok_or_else(|| {
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
        let place = running.routing.place(index, key_hash);
        // One hop at most: a handed-off connection is served here, and a
        // standalone pod (no shard id) serves everything.
        let handoff = match (origin, shared.shard_id(), place.owner) {
            (Origin::Client, Some(me), Some(owner)) if owner.id != *me => running
                .routing
                .version_for(key_hash)
                .ranked(key_hash)
                .take(MAX_HANDOFF_ATTEMPTS)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let raw = if handoff.is_empty() {
            Vec::new()
        } else {
            buf[..req.head_len].to_vec()
        };
        return Ok(Placement {
            route: Arc::clone(&route.name),
            key_hash,
            backend: place.backend.cloned(),
            version: place.version,
            handoff,
            request: req.backend_request(client_addr, tls, shared.shard_id().map(|s| &**s)),
            raw,
            client: client_addr,
            tls,
            ws_key: req.ws_key.to_owned(),
            leftover: buf[req.head_len..].to_vec(),
            running,
        });
    }
}

/// Shards tried for one hand-off: the owner and two fallbacks.
const MAX_HANDOFF_ATTEMPTS: usize = 3;

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
        let control = Arc::new(ConnControl::new(
            "r".into(),
            KeyHash(1),
            Role::Edge("s".into()),
        ));
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
