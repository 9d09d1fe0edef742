//! One proxied connection after the upgrade: the two directions relayed
//! frame-aware in one task, the gateway's own pings, timeouts and closes
//! slotted in at frame and message boundaries.
//!
//! Both directions live in one hand-written future, [`Relay`], polled as
//! one task with all state local to it: each wake-up does what the
//! sockets, the drain control and one timer allow now (bounded, then it
//! yields), and leaves its waker with each. A direction whose destination
//! cannot take more holds its unwritten bytes in `pending` and stops
//! reading its source until they are written: that is the backpressure,
//! and the only per-connection buffer, which is empty (unallocated)
//! whenever the connection is idle.
//!
//! Close codes the gateway sends (docs/closing.md has the full table):
//! 1001 pod stopping or idle, 1012 key moved, 1011 no pong in time or a
//! broken or vanished backend, 1002 protocol error, 1009 too big, 1008 slow
//! consumer, 1013 shed at the gateway's send-queue ceiling.
//!
//! A client whose direction has bytes pending is *stalled*: its socket's
//! send buffer is full. While it is, it holds a charge against the
//! process's [`SendQueues`] ceiling, and the heartbeat does not judge it
//! (its ping may be waiting behind the data): `slowConsumerSeconds` does.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::time::{Instant, Sleep, sleep_until};

use crate::{
    frame::{
        ControlFrame, Direction, FrameScanner, Limits, Opcode, ProtocolError, Scan, encode_close,
        encode_control,
    },
    io::{Io, with_scratch},
    metrics::Metrics,
    registry::{ConnControl, DrainCause},
    send_queues::{SendQueues, Stall, charge},
};

/// The code the client gets when the backend breaks RFC 6455 or goes away
/// without a close frame. 1014 (Bad Gateway: "acting as a gateway, received
/// an invalid response") says it best, and browsers take it, but
/// tungstenite 0.30 and gorilla/websocket refuse to receive it: tungstenite
/// hands its user a 1002 "Protocol violation" instead and answers 1002.
/// Every client takes 1011 (an unexpected condition), with the reason.
pub const BACKEND_FAILED: u16 = 1011;

/// The code of a connection shed at the send-queue ceiling: 1013, try
/// again later (the gateway is overloaded, not the client at fault).
pub const SHED: u16 = 1013;

/// Limits and timers of relayed connections.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Largest frame payload.
    pub max_frame: u64,
    /// Largest message.
    pub max_message: u64,
    /// Time between the gateway's pings to the client.
    pub heartbeat_interval: Duration,
    /// Time the client has to answer a ping.
    pub heartbeat_timeout: Duration,
    /// Close after this long without data; `None` never.
    pub idle_timeout: Option<Duration>,
    /// Close a client that takes no data for this long.
    pub slow_consumer: Duration,
    /// Time to wait for the answers to a close frame.
    pub close_timeout: Duration,
    /// Upper bound of the reconnect hint in drain close reasons.
    pub reconnect_jitter_ms: u32,
}

/// What every relay of the process shares.
#[derive(Clone)]
pub struct Relays {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The ceiling on what stalled clients hold.
    pub queues: Arc<SendQueues>,
}

/// How a connection ended, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The close code of the close handshake, if there was one.
    pub code: Option<u16>,
    /// `client` or `backend` (who closed first), or the gateway's reason.
    pub reason: &'static str,
}

impl Outcome {
    /// Whether the gateway gave up on a client that takes no data (a slow
    /// consumer, or one shed at the memory ceiling): its socket is reset,
    /// not closed, so that the kernel drops what was queued for it at once
    /// instead of holding it for a peer that does not read, and the client
    /// learns at once that it was cut.
    pub fn abandons_client(&self) -> bool {
        matches!(self.reason, "slow_consumer" | "send_queue_full")
    }
}

/// One direction of the relay.
struct Dir {
    scanner: FrameScanner,
    /// An incomplete frame header or control frame, waiting for more bytes.
    carry: Vec<u8>,
    /// Bytes the destination has not taken yet.
    pending: Vec<u8>,
    /// When `pending` became non-empty.
    pending_since: Option<Instant>,
    /// The source ended (or, for the client, broke the protocol): nothing
    /// more to read.
    eof: bool,
    /// The source broke the protocol: its bytes can no longer be followed
    /// as frames, so it is not read again. Unlike `eof`, the source is
    /// still there and is sent a close frame.
    broken: bool,
    /// The destination was half-closed.
    shut: bool,
    /// Frames from the source are no longer forwarded (after the gateway
    /// sent its own close the other way).
    discard: bool,
    /// Counts reads, to sample the latency histogram.
    reads: u8,
}

impl Dir {
    fn new(direction: Direction, settings: &RelaySettings, deflate: bool) -> Self {
        let limits = Limits {
            max_frame: settings.max_frame,
            max_message: settings.max_message,
            rsv1_allowed: deflate,
        };
        Self {
            scanner: FrameScanner::new(direction, limits),
            carry: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            eof: false,
            broken: false,
            shut: false,
            discard: false,
            reads: 0,
        }
    }

    /// Sends `bytes` on: straight to the socket if nothing is waiting,
    /// otherwise (or for what the socket does not take) into `pending`.
    fn forward(&mut self, bytes: &[u8], sink: &mut Io, cx: &mut Context<'_>) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let written = if self.pending.is_empty() {
            match sink.poll_write(cx, bytes) {
                Poll::Ready(r) => r?,
                Poll::Pending => 0,
            }
        } else {
            0
        };
        if written < bytes.len() {
            if self.pending.is_empty() {
                self.pending_since = Some(Instant::now());
            }
            self.pending.extend_from_slice(&bytes[written..]);
        }
        Ok(())
    }

    /// Marks `n` pending bytes as written; frees the buffer once all are,
    /// and says how long they waited.
    fn written(&mut self, n: usize) -> Option<Duration> {
        self.pending.drain(..n);
        let mut waited = None;
        if self.pending.is_empty() {
            waited = self.pending_since.map(|since| since.elapsed());
            self.pending = Vec::new();
            self.pending_since = None;
        }
        waited
    }

    fn idle_out(&self) -> bool {
        self.pending.is_empty()
    }

    /// Its source may be read: it has not ended or broken the protocol.
    fn readable(&self) -> bool {
        !self.eof && !self.broken
    }
}

/// One end of the connection.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Side {
    /// `client` or `backend`, for labels and logs.
    fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
        }
    }

    fn eof_label(self) -> &'static str {
        match self {
            Self::Client => "client_eof",
            Self::Backend => "backend_eof",
        }
    }
}

/// What the control frames of one read asked for.
#[derive(Default)]
struct Seen {
    /// A close frame arrived: its code (or `None` without one).
    close: Option<Option<u16>>,
    /// Data frames passed.
    data: bool,
    /// Frames were passed on to the other side (data, or control frames
    /// that were forwarded).
    passed: bool,
}

/// Scans `input` (carry first) and forwards it frame by frame; control
/// frames go through `decide`, which says whether to forward them.
fn pump(
    dir: &mut Dir,
    input: &[u8],
    sink: &mut Io,
    cx: &mut Context<'_>,
    mut decide: impl FnMut(&ControlFrame<'_>) -> bool,
) -> io::Result<Result<Seen, crate::frame::ProtocolError>> {
    let mut seen = Seen::default();
    let (mut pos, mut from) = (0, 0);
    while pos < input.len() {
        match dir.scanner.scan(&input[pos..]) {
            Scan::Data(n) => {
                seen.data = true;
                seen.passed |= !dir.discard;
                if dir.discard {
                    from = pos + n;
                }
                pos += n;
            }
            Scan::Control(frame) => {
                let len = frame.raw.len();
                if frame.opcode == Opcode::Close {
                    seen.close = Some(frame.close_code());
                }
                let keep = decide(&frame) && !dir.discard;
                seen.passed |= keep;
                if !keep {
                    dir.forward(&input[from..pos], sink, cx)?;
                    from = pos + len;
                }
                pos += len;
            }
            Scan::Incomplete => {
                dir.carry.extend_from_slice(&input[pos..]);
                break;
            }
            Scan::Error(e) => {
                dir.forward(&input[from..pos], sink, cx)?;
                return Ok(Err(e));
            }
        }
    }
    let end = pos.min(input.len());
    dir.forward(&input[from..end], sink, cx)?;
    Ok(Ok(seen))
}

/// What the gateway's close frame to the backend says.
struct ToBackend {
    code: u16,
    reason: String,
}

impl ToBackend {
    /// What a client sends a peer that broke the protocol with `e`.
    fn protocol_error(e: ProtocolError) -> Self {
        Self {
            code: e.close_code(),
            reason: format!("protocol error: {e}"),
        }
    }

    /// 1001: the client is going away (the backend need not know why).
    fn going_away() -> Self {
        Self {
            code: 1001,
            reason: "client going away".into(),
        }
    }
}

/// The gateway is closing the connection itself.
struct GatewayClose {
    /// The code the client gets.
    code: u16,
    reason: String,
    /// The close frame the backend gets.
    to_backend: ToBackend,
    label: &'static str,
    /// Which endpoint is closed first, and whether its answer is awaited.
    order: Order,
    /// A message in progress may be cut (errors, timeouts).
    cut: bool,
    to_backend_sent: bool,
    backend_done: bool,
    to_client_sent: bool,
    client_done: bool,
    /// Stop waiting for the backend's answer and close the client.
    flush_deadline: Instant,
}

/// The order of the gateway's two close frames. The endpoint closed first
/// may still send what it had under way; it is forwarded until the endpoint
/// answers (or `close_timeout`), so the other endpoint sees what it would
/// have seen without the gateway.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The backend, then the client at once (timeouts).
    Together,
    /// The backend, then the client once the backend answered (drains:
    /// nothing already sent is lost; a client's protocol error: the client
    /// gets what the backend answers first).
    BackendFirst,
    /// The client, then the backend once the client answered (a backend's
    /// protocol error: the backend gets the client's answers to what it
    /// sent before the bad frame, as a direct client would send them).
    ClientFirst,
}

enum Closing {
    Open,
    /// A close frame from one endpoint was relayed; the endpoints finish.
    Relayed,
    Gateway(Box<GatewayClose>),
}

pin_project_lite::pin_project! {
    /// One relayed connection as a future of its own: the task that holds
    /// it stores exactly these fields (about 700 bytes), so an idle
    /// connection costs little more than its sockets.
    pub(crate) struct Relay {
        session: Session,
        client: Io,
        backend: Io,
        control: Arc<ConnControl>,
        // Bytes that arrived with the handshakes (already frames).
        first: Option<Box<(Vec<u8>, Vec<u8>)>>,
        #[pin]
        timer: Sleep,
    }
}

impl Relay {
    /// A relay between `client` and `backend`, whose upgrade is done.
    pub(crate) fn new(
        client: Io,
        backend: Io,
        first: (Vec<u8>, Vec<u8>),
        deflate: bool,
        control: Arc<ConnControl>,
        settings: Arc<RelaySettings>,
        relays: Relays,
    ) -> Self {
        let now = Instant::now();
        let queue_charge = charge(client.send_buffer_size());
        let session = Session {
            c2b: Dir::new(Direction::ClientToServer, &settings, deflate),
            b2c: Dir::new(Direction::ServerToClient, &settings, deflate),
            closing: Closing::Open,
            close_deadline: None,
            ping_due: now + settings.heartbeat_interval,
            ping_out: None,
            // Random, so that the pings of a hand-off's two relays (edge
            // and owner) never carry the same token.
            ping_seq: fastrand::u64(..),
            last_data: now,
            first_close: None,
            end: None,
            saw_data: false,
            client_spoke_last: false,
            timer_armed: false,
            settings,
            metrics: relays.metrics,
            queues: relays.queues,
            queue_charge,
            stall: None,
        };
        let first = (!first.0.is_empty() || !first.1.is_empty()).then(|| Box::new(first));
        Self {
            session,
            client,
            backend,
            control,
            first,
            timer: sleep_until(now),
        }
    }
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let s = this.session;
        if let Some(first) = this.first.take() {
            let (c, b) = *first;
            let sent = s
                .on_bytes(Side::Client, &c, this.backend, cx)
                .and_then(|()| s.on_bytes(Side::Backend, &b, this.client, cx));
            if let Err(e) = sent {
                return Poll::Ready(s.io_failed(e));
            }
        }
        let outcome = ready!(s.poll(cx, this.client, this.backend, this.control, this.timer));
        if outcome.abandons_client() {
            this.client.reset_on_close();
        }
        Poll::Ready(outcome)
    }
}

struct Session {
    settings: Arc<RelaySettings>,
    metrics: Arc<Metrics>,
    queues: Arc<SendQueues>,
    /// What this connection is charged while it is stalled.
    queue_charge: u64,
    /// Its charge, while the client is stalled.
    stall: Option<Stall>,
    c2b: Dir,
    b2c: Dir,
    closing: Closing,
    /// The connection is cut at this time whatever state it is in.
    close_deadline: Option<Instant>,
    ping_due: Instant,
    /// When the unanswered ping (token `ping_seq`) was sent.
    ping_out: Option<Instant>,
    ping_seq: u64,
    last_data: Instant,
    /// The first close frame seen, and from whom.
    first_close: Option<(Option<u16>, &'static str)>,
    end: Option<Outcome>,
    /// Data frames passed since `last_data` was last set.
    saw_data: bool,
    /// The last frames passed on came from the client. A backend that
    /// closes TCP now may be failing the connection because of them (RFC
    /// 6455 lets it skip the close frame, e.g. on invalid UTF-8, which the
    /// gateway does not check), and only it knows the code: the gateway
    /// passes its TCP close on as it is.
    client_spoke_last: bool,
    /// The timer has our waker for its current deadline.
    timer_armed: bool,
}

/// What refused more work in one wake-up of a connection.
#[derive(Default)]
struct Blocked {
    from_client: bool,
    from_backend: bool,
    to_client: bool,
    to_backend: bool,
}

impl Session {
    /// Does everything that can be done now; `Ready` when the connection
    /// is over. Every `Pending` leaves a waker with each socket, the drain
    /// control and the timer that may need it.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Io,
        backend: &mut Io,
        control: &Arc<ConnControl>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Outcome> {
        if matches!(self.closing, Closing::Open) {
            // One registration per wake-up is enough: the task's waker does
            // not change between the loop's rounds.
            control.register(cx.waker());
        }
        // A socket that said "not now" in this wake-up has our waker; asking
        // it again before we are woken would only take its lock again.
        let mut blocked = Blocked::default();
        // Bounded work per poll, so that a busy connection does not starve
        // the others on its thread.
        for _ in 0..32 {
            let now = Instant::now();
            if control.shed_requested() {
                // Stalled, so no close frame would reach the client: cut.
                self.metrics.failure("send_queue_full");
                return Poll::Ready(Outcome {
                    code: Some(SHED),
                    reason: "send_queue_full",
                });
            }
            if matches!(self.closing, Closing::Open)
                && let Some(cause) = control.drain_requested()
            {
                self.begin_drain(cause);
            }
            if let Err(e) = self.advance(client, backend, cx, now) {
                return Poll::Ready(self.io_failed(e));
            }
            if let Some(outcome) = self.end {
                return Poll::Ready(outcome);
            }
            let step = (|| -> io::Result<bool> {
                // Writing first frees `pending`, which lets the source be read.
                let mut progress = false;
                if !blocked.to_client {
                    let wrote = Self::flush(&mut self.b2c, client, cx, &self.metrics)?;
                    blocked.to_client = wrote.is_none();
                    progress |= wrote == Some(true);
                }
                if !blocked.to_backend {
                    let wrote = Self::flush(&mut self.c2b, backend, cx, &self.metrics)?;
                    blocked.to_backend = wrote.is_none();
                    progress |= wrote == Some(true);
                }
                if !blocked.from_client && self.c2b.readable() && self.c2b.idle_out() {
                    let read = self.read(Side::Client, client, backend, cx)?;
                    blocked.from_client = !read;
                    progress |= read;
                }
                if !blocked.from_backend && self.b2c.readable() && self.b2c.idle_out() {
                    let read = self.read(Side::Backend, backend, client, cx)?;
                    blocked.from_backend = !read;
                    progress |= read;
                }
                Ok(progress)
            })();
            let mut progress = match step {
                Ok(p) => p,
                Err(e) => return Poll::Ready(self.io_failed(e)),
            };
            if std::mem::take(&mut self.saw_data) {
                self.last_data = now;
            }
            self.track_stall(control, now);
            let deadline = self.next_deadline(now);
            if deadline != timer.deadline() {
                timer.as_mut().reset(deadline);
                self.timer_armed = false;
            }
            // The timer keeps our waker once polled; it needs polling again
            // only when reset or due.
            if !self.timer_armed || now >= deadline {
                if timer.as_mut().poll(cx).is_ready() {
                    self.on_timer(now);
                    progress = true;
                } else {
                    self.timer_armed = true;
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes `dir`'s pending bytes to `sink`: `Some(true)` if any went,
    /// `Some(false)` if there was nothing to write, `None` if the socket
    /// takes nothing now (it will wake the task).
    fn flush(
        dir: &mut Dir,
        sink: &mut Io,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> io::Result<Option<bool>> {
        if dir.pending.is_empty() {
            if sink.unflushed() {
                return Ok(sink.poll_flush(cx)?.is_ready().then_some(true));
            }
            return Ok(Some(false));
        }
        match sink.poll_write(cx, &dir.pending) {
            Poll::Pending => Ok(None),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                if let Some(waited) = dir.written(n) {
                    // Bytes that had to wait for their destination: how long.
                    metrics.relay_latency.observe(waited.as_secs_f64());
                }
                Ok(Some(true))
            }
        }
    }

    /// Reads what `side` sent and relays it to `sink` (the other side).
    /// `Ok(false)`: nothing to read yet (the task will be woken).
    fn read(
        &mut self,
        side: Side,
        src: &mut Io,
        sink: &mut Io,
        cx: &mut Context<'_>,
    ) -> io::Result<bool> {
        let carry = std::mem::take(&mut self.dir_mut(side).carry);
        with_scratch(|scratch| {
            scratch[..carry.len()].copy_from_slice(&carry);
            let n = match src.poll_read(cx, &mut scratch[carry.len()..]) {
                Poll::Pending => {
                    self.dir_mut(side).carry = carry;
                    return Ok(false);
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(0)) => {
                    self.dir_mut(side).eof = true;
                    self.first_close.get_or_insert((None, side.eof_label()));
                    if let Side::Backend = side {
                        self.on_backend_eof();
                    }
                    return Ok(true);
                }
                Poll::Ready(Ok(n)) => n,
            };
            let dir = self.dir_mut(side);
            dir.reads = dir.reads.wrapping_add(1);
            let sampled = dir.reads.is_multiple_of(8).then(std::time::Instant::now);
            match side {
                Side::Client => self.metrics.bytes_to_backend.inc_by(n as u64),
                Side::Backend => self.metrics.bytes_to_client.inc_by(n as u64),
            };
            self.on_bytes(side, &scratch[..carry.len() + n], sink, cx)?;
            if let Some(t0) = sampled
                && self.dir_mut(side).pending.is_empty()
            {
                self.metrics
                    .relay_latency
                    .observe(t0.elapsed().as_secs_f64());
            }
            Ok(true)
        })
    }

    /// The direction whose source is `side`.
    fn dir_mut(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.c2b,
            Side::Backend => &mut self.b2c,
        }
    }

    /// Frames that `side` sent, on their way to the other side (`sink`).
    fn on_bytes(
        &mut self,
        side: Side,
        input: &[u8],
        sink: &mut Io,
        cx: &mut Context<'_>,
    ) -> io::Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        // Only the client answers the gateway's pings.
        let ping = match side {
            Side::Client => self.ping_out.map(|_| self.ping_seq.to_be_bytes()),
            Side::Backend => None,
        };
        let gateway_closing = matches!(self.closing, Closing::Gateway(_));
        let mut our_pong = false;
        let dir = match side {
            Side::Client => &mut self.c2b,
            Side::Backend => &mut self.b2c,
        };
        let result = pump(dir, input, sink, cx, |frame| match frame.opcode {
            // The answer to the gateway's own ping stays here.
            Opcode::Pong => {
                let (payload, n) = frame.unmasked();
                let ours = n == 8 && ping.is_some_and(|t| payload[..8] == t);
                our_pong |= ours;
                !ours
            }
            // During the gateway's close each side gets the gateway's frame.
            Opcode::Close => !gateway_closing,
            _ => true,
        })?;
        let messages = u64::from(dir.scanner.take_messages());
        match side {
            Side::Client => self.metrics.messages_to_backend.inc_by(messages),
            Side::Backend => self.metrics.messages_to_client.inc_by(messages),
        };
        match result {
            Ok(seen) => {
                self.saw_data |= seen.data;
                if seen.passed {
                    self.client_spoke_last = matches!(side, Side::Client);
                }
                if our_pong {
                    self.ping_out = None;
                }
                if let Some(code) = seen.close {
                    self.on_close_frame(code, side);
                }
            }
            Err(e) => {
                self.metrics.protocol_error(side.name(), e.label());
                self.on_protocol_error(side, e);
            }
        }
        Ok(())
    }

    /// `side` broke the protocol (or a size limit) with `e`.
    fn on_protocol_error(&mut self, side: Side, e: ProtocolError) {
        match side {
            // Fail the client, but first let the backend answer what
            // the client sent before the bad frame: the client gets
            // exactly what it would have got from the backend alone.
            Side::Client => {
                self.c2b.eof = true;
                let to_backend = ToBackend::protocol_error(e);
                self.begin_close(
                    to_backend.code,
                    to_backend.reason.clone(),
                    "client_protocol_error",
                    to_backend,
                    Order::BackendFirst,
                    true,
                );
            }
            // Fail the backend as a client would (1002, 1009), and tell
            // the client what the backend did.
            Side::Backend => {
                self.b2c.broken = true;
                self.begin_close(
                    BACKEND_FAILED,
                    format!("backend protocol error: {e}"),
                    "backend_protocol_error",
                    ToBackend::protocol_error(e),
                    Order::ClientFirst,
                    true,
                );
            }
        }
    }

    /// The backend ended its side of the TCP connection. Without a close
    /// frame before it, the client is told, unless the backend may be
    /// failing the connection over what the client just sent.
    fn on_backend_eof(&mut self) {
        // After a close frame either way the TCP close ends (or fails) the
        // handshake, and a close of the gateway's own is already under way.
        if !matches!(self.closing, Closing::Open) || self.client_spoke_last {
            return;
        }
        self.begin_close(
            BACKEND_FAILED,
            "backend closed the connection without a close frame".into(),
            "backend_gone",
            ToBackend::going_away(),
            Order::Together,
            false,
        );
    }

    /// A close frame arrived from `side`.
    fn on_close_frame(&mut self, code: Option<u16>, side: Side) {
        let who = side.name();
        match &mut self.closing {
            Closing::Open => {
                self.first_close = Some((code, who));
                self.closing = Closing::Relayed;
                self.close_deadline = Some(Instant::now() + self.settings.close_timeout * 2);
            }
            Closing::Relayed => {}
            Closing::Gateway(g) => match side {
                Side::Client => g.client_done = true,
                Side::Backend => g.backend_done = true,
            },
        }
    }

    fn begin_drain(&mut self, cause: DrainCause) {
        self.metrics
            .drains
            .get_or_create(&crate::metrics::CauseLabel {
                cause: cause.label(),
            })
            .inc();
        let hint = fastrand::u32(0..=self.settings.reconnect_jitter_ms);
        let reason = format!("{}; retry-after-ms={hint}", cause.reason());
        let label = match cause {
            DrainCause::Rebalance => "drain_rebalance",
            DrainCause::Shutdown => "drain_shutdown",
            DrainCause::Api => "drain_api",
        };
        self.begin_close(
            cause.close_code(),
            reason,
            label,
            ToBackend::going_away(),
            Order::BackendFirst,
            false,
        );
    }

    /// Starts the gateway's own close: a close frame to each side at the
    /// next boundary, then the sockets are shut once both answered.
    fn begin_close(
        &mut self,
        code: u16,
        reason: String,
        label: &'static str,
        to_backend: ToBackend,
        order: Order,
        cut: bool,
    ) {
        if matches!(self.closing, Closing::Gateway(_)) {
            return;
        }
        let now = Instant::now();
        // A close already under way between the endpoints finishes as it is,
        // unless the connection broke.
        if matches!(self.closing, Closing::Relayed) && !cut {
            return;
        }
        let backend_gone = self.c2b.shut || self.b2c.eof;
        // Nothing the client sends from now on has anywhere to go.
        self.c2b.discard |= backend_gone;
        self.closing = Closing::Gateway(Box::new(GatewayClose {
            code,
            to_backend,
            reason,
            label,
            order,
            cut,
            to_backend_sent: backend_gone,
            backend_done: backend_gone,
            to_client_sent: false,
            client_done: self.c2b.eof,
            flush_deadline: now + self.settings.close_timeout,
        }));
        self.close_deadline = Some(now + self.settings.close_timeout * 2);
    }

    /// Sends what is due at the boundaries reached, propagates half-closes,
    /// and decides whether the connection is over.
    fn advance(
        &mut self,
        client: &mut Io,
        backend: &mut Io,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        if let Closing::Gateway(g) = &mut self.closing {
            if !g.to_backend_sent && self.c2b.eof && !self.c2b.scanner.at_frame_boundary() {
                // The client ended inside a frame: no close frame can follow.
                g.to_backend_sent = true;
                g.backend_done = true;
            }
            let client_answered = g.order != Order::ClientFirst
                || g.client_done
                || self.c2b.eof
                || now >= g.flush_deadline;
            if !g.to_backend_sent
                && client_answered
                && (self.c2b.scanner.at_message_boundary()
                    || ((g.cut || self.c2b.eof) && self.c2b.scanner.at_frame_boundary()))
            {
                encode_close(
                    g.to_backend.code,
                    &g.to_backend.reason,
                    Some(fastrand::u32(..).to_ne_bytes()),
                    &mut out,
                );
                self.c2b.discard = true;
                self.c2b.forward(&out, backend, cx)?;
                out.clear();
                g.to_backend_sent = true;
            }
            if !g.to_client_sent && self.b2c.eof && !self.b2c.scanner.at_frame_boundary() {
                // The backend ended inside a frame: the client cannot be sent
                // a close frame after it. Cut, once what came before is out.
                if self.b2c.pending.is_empty() {
                    self.end = Some(Outcome {
                        code: None,
                        reason: g.label,
                    });
                    if !client.unflushed() {
                        let _ = client.poll_shutdown(cx);
                    }
                }
                return Ok(());
            }
            let backend_answered = g.order != Order::BackendFirst
                || g.backend_done
                || self.b2c.eof
                || now >= g.flush_deadline;
            let boundary = self.b2c.scanner.at_message_boundary()
                || ((g.cut || self.b2c.eof || now >= g.flush_deadline)
                    && self.b2c.scanner.at_frame_boundary());
            let backend_closed = g.to_backend_sent || g.order == Order::ClientFirst;
            if !g.to_client_sent && backend_closed && backend_answered && boundary {
                encode_close(g.code, &g.reason, None, &mut out);
                self.b2c.discard = true;
                self.b2c.forward(&out, client, cx)?;
                out.clear();
                g.to_client_sent = true;
                if g.cut && g.order != Order::ClientFirst {
                    // After an error the client's answer is not awaited,
                    // unless the backend is to get it.
                    g.client_done = true;
                }
            }
            let client_gave_up = g.order == Order::ClientFirst && now >= g.flush_deadline;
            if g.to_client_sent
                && g.to_backend_sent
                && (g.client_done || self.c2b.eof || client_gave_up)
                && self.b2c.pending.is_empty()
                && self.c2b.pending.is_empty()
            {
                self.end = Some(Outcome {
                    code: Some(g.code),
                    reason: g.label,
                });
                if !client.unflushed() {
                    let _ = client.poll_shutdown(cx);
                }
                return Ok(());
            }
        } else if self.ping_out.is_none()
            && now >= self.ping_due
            && matches!(self.closing, Closing::Open)
            && self.b2c.scanner.at_frame_boundary()
        {
            self.ping_seq = self.ping_seq.wrapping_add(1);
            let token = self.ping_seq.to_be_bytes();
            encode_control(Opcode::Ping, &token, None, &mut out);
            self.b2c.forward(&out, client, cx)?;
            self.ping_out = Some(now);
            self.ping_due = now + self.settings.heartbeat_interval;
        }
        // Half-close propagation: an ended source, once everything it sent
        // was written, ends the other side's writing too.
        if self.c2b.eof
            && !self.c2b.shut
            && self.c2b.pending.is_empty()
            && self.c2b.carry.is_empty()
        {
            // TCP's shutdown never waits; TLS's may, and is retried.
            self.c2b.shut = backend.poll_shutdown(cx).is_ready();
        }
        let client_close_due = matches!(&self.closing, Closing::Gateway(g) if !g.to_client_sent);
        if self.b2c.eof
            && !self.b2c.shut
            && self.b2c.pending.is_empty()
            && self.b2c.carry.is_empty()
            && !client_close_due
        {
            self.b2c.shut = client.poll_shutdown(cx).is_ready();
        }
        if self.c2b.eof && self.b2c.eof && self.c2b.shut && self.b2c.shut {
            let (code, reason) = match &self.closing {
                Closing::Gateway(g) => (Some(g.code), g.label),
                _ => self.first_close.unwrap_or((None, "eof")),
            };
            self.end = Some(Outcome { code, reason });
        }
        Ok(())
    }

    /// Takes a charge against the send-queue ceiling when the client
    /// stalls, and gives it back when the client has caught up. A ping
    /// that waited behind the data was sent only now: its pong is due from
    /// now.
    fn track_stall(&mut self, control: &Arc<ConnControl>, now: Instant) {
        match (self.b2c.pending.is_empty(), self.stall.is_some()) {
            (false, false) => self.stall = Some(self.queues.stall(control, self.queue_charge)),
            (true, true) => {
                self.stall = None;
                if let Some(sent) = &mut self.ping_out {
                    *sent = now;
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Some(deadline) = self.close_deadline
            && now >= deadline
        {
            self.metrics.failure("close_timeout");
            let (code, reason) = match &self.closing {
                Closing::Gateway(g) => (Some(g.code), g.label),
                _ => self.first_close.unwrap_or((None, "close_timeout")),
            };
            self.end = Some(Outcome { code, reason });
            return;
        }
        if !matches!(self.closing, Closing::Open) {
            return;
        }
        if let Some(since) = self.b2c.pending_since
            && now >= since + self.settings.slow_consumer
        {
            // The client takes no data: a close frame would not reach it
            // either. Cut both sides.
            self.metrics.failure("slow_consumer");
            self.end = Some(Outcome {
                code: Some(1008),
                reason: "slow_consumer",
            });
            return;
        }
        if let Some(at) = self.ping_out
            && self.stall.is_none()
            && now >= at + self.settings.heartbeat_timeout
        {
            self.begin_close(
                1011,
                "no pong to the gateway's ping".into(),
                "heartbeat_timeout",
                ToBackend::going_away(),
                Order::Together,
                true,
            );
            return;
        }
        if let Some(idle) = self.settings.idle_timeout
            && now >= self.last_data + idle
        {
            self.begin_close(
                1001,
                "idle timeout".into(),
                "idle_timeout",
                ToBackend::going_away(),
                Order::Together,
                false,
            );
        }
    }

    /// The earliest time something must happen without any I/O.
    fn next_deadline(&self, now: Instant) -> Instant {
        let far = now + Duration::from_secs(3600);
        // A deadline already passed that waits for a frame boundary (not for
        // time) must not keep the timer firing.
        let future = |t: Instant| if t > now { t } else { far };
        let mut at = self.close_deadline.unwrap_or(far);
        match &self.closing {
            Closing::Gateway(g) if !g.to_client_sent || !g.to_backend_sent => {
                return at.min(future(g.flush_deadline));
            }
            Closing::Gateway(_) | Closing::Relayed => return at,
            Closing::Open => {}
        }
        at = at.min(match self.ping_out {
            Some(_) if self.stall.is_some() => far,
            Some(sent) => sent + self.settings.heartbeat_timeout,
            None => future(self.ping_due),
        });
        if let Some(idle) = self.settings.idle_timeout {
            at = at.min(self.last_data + idle);
        }
        if let Some(since) = self.b2c.pending_since {
            at = at.min(since + self.settings.slow_consumer);
        }
        at
    }

    fn io_failed(&mut self, e: io::Error) -> Outcome {
        let reason = match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
            _ => {
                self.metrics.failure("io");
                "io_error"
            }
        };
        tracing::debug!(error = %e, "connection failed");
        match &self.closing {
            Closing::Gateway(g) => Outcome {
                code: Some(g.code),
                reason: g.label,
            },
            _ => Outcome {
                code: self.first_close.and_then(|c| c.0),
                reason,
            },
        }
    }
}

#[cfg(test)]
mod tests;
