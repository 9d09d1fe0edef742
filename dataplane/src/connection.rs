//! One client connection's life before the relay, in its own task: TLS,
//! the upgrade request, routing, the hand-off to an owner shard or the
//! backend's upgrade, then the relay; a panic ends that connection only.

use std::{
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::{
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, timeout, timeout_at},
};
use tracing::Instrument;

use crate::{
    handoff,
    handshake::{
        BackendFailure, BackendUpgrade, MAX_HEADERS, Refusal, parse_request, upgrade_backend,
    },
    io::Io,
    metrics::{Metrics, RouteLabel, Tally},
    registry::{ConnControl, DrainCause, RegistryGuard, Role},
    relay::{Outcome, Relay, Relays},
    routing::{Backend, KeyHash, KeySource, MissingKey, Seat, Shard, Version, hash_key},
    running::RunningState,
    shared::Shared,
};
use prometheus_client::metrics::gauge::Gauge;

mod answer;

use self::answer::{answer, failure_response, refuse};

/// Where a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client, on the client port.
    Client,
    /// Another shard handing off a connection this pod owns.
    Peer,
}

/// Accepts on `listener`, or waits forever without one.
/// Runs an accepted connection in a task of its own, under a span that
/// names its peer, holding `permit` (its place in the connection limit)
/// until it ends.
pub(crate) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::debug_span!("conn", %peer, ?origin, route = tracing::field::Empty, key_hash = tracing::field::Empty, backend = tracing::field::Empty);
    let metrics = Arc::clone(&shared.metrics);
    let handshake = Box::pin(establish(stream, peer, origin, shared, permit));
    let task = ConnectionTask::Establishing { handshake };
    tokio::spawn(contained(task, metrics).instrument(span));
}

/// `task` with its panics contained.
fn contained<F: Future<Output = ()>>(task: F, metrics: Arc<Metrics>) -> Contained<F> {
    Contained { task, metrics }
}

pin_project_lite::pin_project! {
    /// A connection's task as spawned, so that a panic in it ends that
    /// connection only: caught, logged (inside the connection's span) and
    /// counted; the task's guards release its registry entry, gauge and
    /// permit as it unwinds. Written out rather than an `async fn` around
    /// `catch_unwind`, whose state would hold the task twice (the argument
    /// and the future made of it): 1,424 bytes a connection instead of 680,
    /// which the allocator rounds to the next size class.
    struct Contained<F> {
        #[pin]
        task: F,
        metrics: Arc<Metrics>,
    }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let task = this.task;
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                // The owner's tally counts it where the role is known: as an
                // open owned connection unwinds (`Open`'s drop).
                this.metrics.failure("panic", false);
                tracing::error!(panic = %message, "connection task panicked; the connection was closed");
                Poll::Ready(())
            }
        }
    }
}

/// A request and what routing decided for it.
struct RoutedRequest {
    /// The state it was decided on.
    running: Arc<RunningState>,
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
                    let tally = open.tally(&outcome);
                    open.metrics.close(outcome.code, outcome.reason, tally);
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
    /// This pod owns the connection (its outcomes go in the owner's tally).
    owned: bool,
    /// The version that owns its key.
    version: Version,
    gauge: Gauge,
    _registered: RegistryGuard,
    _permit: OwnedSemaphorePermit,
}

impl Open {
    /// The tally the connection's close goes in: the owner's, or as the
    /// edge's by the key's version when the gateway decided it here.
    fn tally(&self, outcome: &Outcome) -> Tally {
        if self.owned {
            Tally::Owner
        } else if outcome.decided_by_gateway() {
            Tally::EdgeDecided(self.version)
        } else {
            Tally::None
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.owned && std::thread::panicking() {
            self.metrics.owned.failure("panic");
        }
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
    let deadline = Instant::now() + shared.running.load().handshake.timeout;
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
    let routed =
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
    span.record("route", &*routed.route);
    span.record("key_hash", format_args!("{:016x}", routed.key_hash.0));

    let (upgrade, role) = match connect_upstream(&routed, &shared).await {
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
        Arc::clone(&routed.route),
        routed.key_hash,
        role,
    ));
    let registered = shared.registry.register(Arc::clone(&control));
    // A snapshot applied after this connection was routed did not see it:
    // check it against the new state here.
    let now = shared.running.load();
    if now.routing.epoch != routed.running.routing.epoch
        && crate::shared::key_moved(&control, &routed.running, &now)
    {
        control.request_drain(DrainCause::Rebalance);
    }
    // The limits of the key's version, on the owner and on an edge alike.
    let relay_settings = Arc::clone(now.relay_for(routed.version));
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
            route: routed.route.to_string(),
        })
        .clone();
    gauge.inc();
    let owned = control.is_owned();
    let relay = Relay::new(
        client,
        Io::Tcp(upgrade.stream),
        (routed.leftover, upgrade.leftover),
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
        owned,
        version: routed.version,
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
    routed: &RoutedRequest,
    shared: &Shared,
) -> Result<(BackendUpgrade, Role), Failed> {
    let limits = &routed.running.handshake;
    let metrics = &shared.metrics;
    if routed.handoff.is_empty() {
        return serve_here(routed, shared).await;
    }
    for (attempt, shard) in routed.handoff.iter().enumerate() {
        let me = match &shared.shard {
            Some(me) if me.id != shard.id => me,
            _ => return serve_here(routed, shared).await,
        };
        let mut request = handoff::preamble(&me.token, routed.client, routed.tls);
        request.extend_from_slice(&routed.raw);
        let result = upgrade_backend(
            shard.peer,
            &request,
            &routed.ws_key,
            me.connect_timeout,
            limits.backend_connect_timeout + limits.backend_handshake_timeout,
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
    routed: &RoutedRequest,
    shared: &Shared,
) -> Result<(BackendUpgrade, Role), Failed> {
    let limits = &routed.running.handshake;
    let Some(backend) = &routed.backend else {
        return Err(Failed::Refused(Refusal::new(
            503,
            "no_backend",
            format!("route {} has no backend ready", routed.route),
        )));
    };
    tracing::Span::current().record("backend", &*backend.id);
    let upgrade = upgrade_backend(
        backend.address,
        &routed.request,
        &routed.ws_key,
        limits.backend_connect_timeout,
        limits.backend_handshake_timeout,
    )
    .await;
    // Only here is this pod the key's owner facing its backend: an edge's
    // failed hand-off is the owner's to count.
    shared
        .metrics
        .owned
        .upgrade(upgrade.as_ref().err().map(BackendFailure::outcome));
    let upgrade = upgrade.map_err(Failed::Upstream)?;
    let seat = Seat {
        version: routed.version,
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
) -> Result<RoutedRequest, Refusal> {
    let cap = shared.running.load().handshake.max_request_header_bytes;
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
        // A retiring pod takes no new client, but takes hand-offs for the
        // keys it still owns (its version's keys are moving away, and it
        // owns them until they have).
        let open = match origin {
            Origin::Client => shared.is_ready(),
            Origin::Peer => shared.is_serving(),
        };
        if !open {
            return Err(Refusal::new(
                503,
                "not_ready",
                if shared.drain_cause().is_some() {
                    "this gateway pod is stopping"
                } else if shared.is_serving() {
                    "this gateway pod is retiring: connect again through the gateway's Service"
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
        if origin == Origin::Peer {
            handoff::refuse_another_versions_key(
                &running,
                shared.shard_id().map(|s| &**s),
                place.version,
            )?;
        }
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
        return Ok(RoutedRequest {
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
mod tests;
