//! The state of one relayed connection and what each wake-up of its task
//! does: write what waits, read and pump each side, send the gateway's
//! pings, drive the close protocol ([`CloseProtocol`]) with what happened
//! and do what it asks, and keep one timer for every deadline.
//!
//! A client whose direction has bytes pending is *stalled*: its socket's
//! send buffer is full. While it is, it holds a charge against the
//! process's [`SendQueues`] ceiling, and the heartbeat does not judge it
//! (its ping may be waiting behind the data): `slowConsumerSeconds` does.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use super::{
    close::{Action, CloseProtocol, End, Event, Outcome, Side, Wire},
    pump::{Dir, pump},
    settings::RelaySettings,
};
use crate::{
    frame::{Direction, Opcode, encode_close, encode_control},
    io::{Io, with_scratch},
    metrics::Metrics,
    registry::{ConnControl, DrainCause},
    send_queues::{SendQueues, Stall},
};

pub(super) struct Session {
    settings: Arc<RelaySettings>,
    metrics: Arc<Metrics>,
    queues: Arc<SendQueues>,
    /// What this connection is charged while it is stalled.
    queue_charge: u64,
    /// Its charge, while the client is stalled.
    stall: Option<Stall>,
    c2b: Dir,
    b2c: Dir,
    close: CloseProtocol,
    ping_due: Instant,
    /// When the unanswered ping (token `ping_seq`) was sent.
    ping_out: Option<Instant>,
    ping_seq: u64,
    last_data: Instant,
    end: Option<Outcome>,
    /// Data frames passed since `last_data` was last set.
    saw_data: bool,
    /// The last frames passed on came from the client (see
    /// [`Event::Ended`]).
    client_spoke_last: bool,
    /// The timer has our waker for its current deadline.
    timer_armed: bool,
    /// This pod owns the connection: its failures go in the owner's tally.
    owned: bool,
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
    /// A connection that starts now; it is charged `queue_charge` against
    /// `queues` while its client is stalled.
    pub(super) fn new(
        settings: Arc<RelaySettings>,
        deflate: bool,
        metrics: Arc<Metrics>,
        queues: Arc<SendQueues>,
        queue_charge: u64,
        owned: bool,
    ) -> Self {
        let now = Instant::now();
        Self {
            c2b: Dir::new(Direction::ClientToServer, &settings, deflate),
            b2c: Dir::new(Direction::ServerToClient, &settings, deflate),
            close: CloseProtocol::new(),
            ping_due: now + settings.heartbeat_interval,
            ping_out: None,
            // Random, so that the pings of a hand-off's two relays (edge
            // and owner) never carry the same token.
            ping_seq: fastrand::u64(..),
            last_data: now,
            end: None,
            saw_data: false,
            client_spoke_last: false,
            timer_armed: false,
            owned,
            settings,
            metrics,
            queues,
            queue_charge,
            stall: None,
        }
    }

    /// Does everything that can be done now; `Ready` when the connection
    /// is over. Every `Pending` leaves a waker with each socket, the drain
    /// control and the timer that may need it.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Io,
        backend: &mut Io,
        control: &Arc<ConnControl>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Outcome> {
        if self.close.is_open() {
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
                self.metrics.failure("send_queue_full", self.owned);
                return Poll::Ready(self.close.end(End::Shed));
            }
            if self.close.is_open()
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
                    let client_spoke_last = self.client_spoke_last;
                    self.tell(
                        Event::Ended {
                            side,
                            client_spoke_last,
                        },
                        Instant::now(),
                    );
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
    pub(super) fn on_bytes(
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
        let gateway_closing = self.close.gateway_closing();
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
                    self.tell(Event::CloseFrame { from: side, code }, Instant::now());
                }
            }
            Err(error) => {
                self.metrics.protocol_error(side.name(), error.label());
                match side {
                    // A client that broke the protocol is read no more.
                    Side::Client => self.c2b.eof = true,
                    Side::Backend => self.b2c.broken = true,
                }
                self.tell(Event::ProtocolError { from: side, error }, Instant::now());
            }
        }
        Ok(())
    }

    /// Tells the close protocol what happened at `now`; a connection that
    /// ends of it ends here.
    fn tell(&mut self, event: Event, now: Instant) -> Option<Outcome> {
        let wire = self.wire();
        let ended = self
            .close
            .handle(event, &wire, now.into_std(), self.settings.close_timeout);
        if ended.is_some() {
            self.end = ended;
        }
        ended
    }

    /// The two directions as the close protocol sees them.
    fn wire(&self) -> Wire {
        Wire {
            from_client: self.c2b.flow(),
            from_backend: self.b2c.flow(),
        }
    }

    fn begin_drain(&mut self, cause: DrainCause) {
        self.metrics
            .drains
            .get_or_create(&crate::metrics::CauseLabel {
                cause: cause.label(),
            })
            .inc();
        let hint_ms = fastrand::u32(0..=self.settings.reconnect_jitter_ms);
        self.tell(Event::Drain { cause, hint_ms }, Instant::now());
    }

    /// Does what the close protocol asks at the boundaries reached, sends
    /// the gateway's ping when due, propagates half-closes, and decides
    /// whether the connection is over.
    fn advance(
        &mut self,
        client: &mut Io,
        backend: &mut Io,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        if self.close.gateway_closing() {
            loop {
                let wire = self.wire();
                match self.close.poll(&wire, now.into_std()) {
                    None => break,
                    Some(Action::SendClose { to, code, reason }) => {
                        let (dir, sink, mask) = match to {
                            Side::Backend => (
                                &mut self.c2b,
                                &mut *backend,
                                Some(fastrand::u32(..).to_ne_bytes()),
                            ),
                            Side::Client => (&mut self.b2c, &mut *client, None),
                        };
                        encode_close(code, reason, mask, &mut out);
                        dir.discard = true;
                        dir.forward(&out, sink, cx)?;
                        out.clear();
                    }
                    Some(Action::StopForwarding { to }) => self.toward(to).discard = true,
                    Some(Action::Finish(outcome)) => {
                        self.end = Some(outcome);
                        if !client.unflushed() {
                            let _ = client.poll_shutdown(cx);
                        }
                        return Ok(());
                    }
                }
            }
        } else if self.ping_out.is_none()
            && now >= self.ping_due
            && self.close.is_open()
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
            && self.close.may_shut(Side::Backend, &self.wire())
        {
            // TCP's shutdown never waits; TLS's may, and is retried.
            self.c2b.shut = backend.poll_shutdown(cx).is_ready();
        }
        if self.b2c.eof
            && !self.b2c.shut
            && self.b2c.pending.is_empty()
            && self.b2c.carry.is_empty()
            && self.close.may_shut(Side::Client, &self.wire())
        {
            self.b2c.shut = client.poll_shutdown(cx).is_ready();
        }
        if self.c2b.eof && self.b2c.eof && self.c2b.shut && self.b2c.shut {
            self.end = Some(self.close.end(End::StreamsEnded));
        }
        Ok(())
    }

    /// The direction whose destination is `side`.
    fn toward(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Backend => &mut self.c2b,
            Side::Client => &mut self.b2c,
        }
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
        if self.tell(Event::Tick, now).is_some() {
            self.metrics.failure("close_timeout", self.owned);
            return;
        }
        if !self.close.is_open() {
            return;
        }
        if let Some(since) = self.b2c.pending_since
            && now >= since + self.settings.slow_consumer
        {
            self.metrics.failure("slow_consumer", self.owned);
            self.end = Some(self.close.end(End::SlowConsumer));
            return;
        }
        if let Some(at) = self.ping_out
            && self.stall.is_none()
            && now >= at + self.settings.heartbeat_timeout
        {
            self.tell(Event::HeartbeatTimeout, Instant::now());
            return;
        }
        if let Some(idle) = self.settings.idle_timeout
            && now >= self.last_data + idle
        {
            self.tell(Event::IdleTimeout, Instant::now());
        }
    }

    /// The earliest time something must happen without any I/O.
    fn next_deadline(&self, now: Instant) -> Instant {
        if let Some(at) = self.close.deadline(now.into_std()) {
            return Instant::from_std(at);
        }
        let far = now + Duration::from_secs(3600);
        // A deadline already passed that waits for a frame boundary (not for
        // time) must not keep the timer firing.
        let future = |t: Instant| if t > now { t } else { far };
        let mut at = far.min(match self.ping_out {
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

    pub(super) fn io_failed(&mut self, e: io::Error) -> Outcome {
        let reason = match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
            _ => {
                self.metrics.failure("io", self.owned);
                "io_error"
            }
        };
        tracing::debug!(error = %e, "connection failed");
        self.close.end(End::Failed { reason })
    }
}
