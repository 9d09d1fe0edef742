//! The close protocol of one relayed connection, as a state machine without
//! I/O: who closed first, the gateway's own closes (drains, timeouts,
//! protocol errors, a vanished backend) with their two close frames, and
//! how the connection ended.
//!
//! The relay tells [`CloseProtocol`] what happened ([`Event`]) together
//! with the state of its two directions ([`Wire`]: where their frames
//! stand, what ended, what is still unwritten); a connection that ends at
//! once ([`End`]) gets its [`Outcome`] from [`CloseProtocol::end`]. What
//! waits for a frame or message boundary, or for an answer, comes out of
//! [`CloseProtocol::poll`] as [`Action`]s once the wire allows it. There is
//! no clock inside: each call is given `now`, and
//! [`CloseProtocol::deadline`] says when the relay must call again (with
//! [`Event::Tick`]) even if nothing happens on the wire. It is consulted
//! only on close frames, protocol errors, ends of streams, drains and
//! timers, never per message. What each of the gateway's closes says, and
//! in which order, is in `verdict`.

use std::time::{Duration, Instant};

pub use self::verdict::BACKEND_FAILED;
use self::verdict::{Order, Verdict};
use crate::{frame::ProtocolError, registry::DrainCause};

mod verdict;

/// The code of a connection shed at the send-queue ceiling: 1013, try
/// again later (the gateway is overloaded, not the client at fault).
pub const SHED: u16 = 1013;

/// 1008, policy violation: a client that takes no data.
const SLOW_CONSUMER: u16 = 1008;

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

    /// Whether the gateway decided this end (a limit, a timer, a drain, a
    /// broken peer), rather than an endpoint's close, end of stream or
    /// failed socket. A gateway's close whose socket then failed keeps its
    /// reason, so it counts here.
    pub fn decided_by_gateway(&self) -> bool {
        !matches!(
            self.reason,
            "client" | "backend" | "client_eof" | "backend_eof" | "eof" | "reset" | "io_error"
        )
    }

    /// A connection cut by the gateway without a close handshake.
    fn cut(code: u16, reason: &'static str) -> Self {
        Self {
            code: Some(code),
            reason,
        }
    }
}

/// One end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Backend,
}

impl Side {
    /// `client` or `backend`, for labels and logs.
    pub(crate) fn name(self) -> &'static str {
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

/// What happened to the connection, as far as closing it goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    /// A close frame from `from`, with its code if it carried one.
    CloseFrame { from: Side, code: Option<u16> },
    /// `from` broke RFC 6455 or a size limit with `error`: its bytes can no
    /// longer be followed as frames. (The relay reads a client that did
    /// so no more: its [`Flow::ended`] is set.)
    ProtocolError { from: Side, error: ProtocolError },
    /// `side` ended its stream (a TCP FIN, no more bytes).
    /// `client_spoke_last`: the last frames passed on came from the client.
    Ended { side: Side, client_spoke_last: bool },
    /// The gateway drains the connection; `hint_ms` is the reconnect hint
    /// that ends the client's close reason.
    Drain { cause: DrainCause, hint_ms: u32 },
    /// The client answered the gateway's ping too late.
    HeartbeatTimeout,
    /// No data message passed either way for the idle timeout.
    IdleTimeout,
    /// The time given with the call has come: past [`CloseProtocol::deadline`]
    /// the connection is cut.
    Tick,
}

/// The ways a connection ends at once, whatever its close protocol's state.
#[derive(Clone, Copy, Debug)]
pub(crate) enum End {
    /// The client took no data for the slow-consumer time.
    SlowConsumer,
    /// The connection was shed at the send-queue ceiling.
    Shed,
    /// Both streams ended and both sides' writes were shut: nothing more
    /// can pass.
    StreamsEnded,
    /// A socket failed; `reason` is `reset` or `io_error`.
    Failed { reason: &'static str },
}

/// What the relay must do for the close protocol, once the wire allows it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action<'a> {
    /// Send `to` a close frame (masked if `to` is the backend) and forward
    /// nothing more to it.
    SendClose {
        to: Side,
        code: u16,
        reason: &'a str,
    },
    /// Forward nothing more to `to`: it can no longer take a close frame.
    StopForwarding { to: Side },
    /// Shut the client's writes (once what it was sent is flushed) and end
    /// the connection with this outcome.
    Finish(Outcome),
}

/// One direction of the relay as the close protocol sees it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flow {
    /// The source ended (or, for the client, broke the protocol).
    pub ended: bool,
    /// The destination's writes were shut.
    pub shut: bool,
    /// The source's frames stand between two frames.
    pub at_frame_boundary: bool,
    /// The source's frames stand between two messages.
    pub at_message_boundary: bool,
    /// Bytes wait for the destination.
    pub pending: bool,
}

/// The two directions of the relay at the time of a call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Wire {
    /// From the client to the backend.
    pub from_client: Flow,
    /// From the backend to the client.
    pub from_backend: Flow,
}

impl Flow {
    /// The source ended inside a frame: no frame can follow on this
    /// direction.
    fn ended_inside_frame(&self) -> bool {
        self.ended && !self.at_frame_boundary
    }
}

impl Wire {
    /// The backend can no longer be sent a close frame: its writes were
    /// shut, or it ended its stream.
    fn backend_gone(&self) -> bool {
        self.from_client.shut || self.from_backend.ended
    }
}

/// The close protocol of one connection. A close of the gateway's own is
/// boxed, so that an open connection holds little more than a tag.
pub(crate) struct CloseProtocol {
    phase: Phase,
    /// The connection is cut at this time whatever state it is in.
    deadline: Option<Instant>,
    /// The first close frame seen (its code) or end of stream, and whose.
    first_close: Option<(Option<u16>, &'static str)>,
}

enum Phase {
    Open,
    /// A close frame from one endpoint was relayed; the endpoints finish.
    Relayed,
    Gateway(Box<GatewayClose>),
}

/// The gateway is closing the connection itself.
struct GatewayClose {
    says: Verdict,
    /// The backend cannot take a close frame, and the relay was not yet
    /// told to stop forwarding to it.
    backend_unreachable: bool,
    to_backend_sent: bool,
    backend_done: bool,
    to_client_sent: bool,
    client_done: bool,
    /// Stop waiting for the first endpoint's answer and close the other.
    flush_deadline: Instant,
}

impl CloseProtocol {
    /// An open connection: nobody has closed.
    pub(crate) fn new() -> Self {
        Self {
            phase: Phase::Open,
            deadline: None,
            first_close: None,
        }
    }

    /// Nobody has started to close the connection.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// The gateway is closing the connection itself: close frames from the
    /// endpoints are not forwarded, each gets the gateway's.
    pub(crate) fn gateway_closing(&self) -> bool {
        matches!(self.phase, Phase::Gateway(_))
    }

    /// Takes `event` in, which happened at `now` with the relay's
    /// directions as `wire`; a close started now must be over within two
    /// `close_timeout`s. `Some` when the connection ends at once: on a
    /// [`Event::Tick`] past the deadline.
    pub(crate) fn handle(
        &mut self,
        event: Event,
        wire: &Wire,
        now: Instant,
        close_timeout: Duration,
    ) -> Option<Outcome> {
        let verdict = match event {
            Event::CloseFrame { from, code } => {
                self.on_close_frame(from, code, now, close_timeout);
                return None;
            }
            Event::ProtocolError {
                from: Side::Client,
                error,
            } => Verdict::client_protocol_error(error),
            Event::ProtocolError {
                from: Side::Backend,
                error,
            } => Verdict::backend_protocol_error(error),
            Event::Ended {
                side,
                client_spoke_last,
            } => {
                self.first_close.get_or_insert((None, side.eof_label()));
                // After a close frame either way the TCP close ends (or
                // fails) the handshake, and a close of the gateway's own is
                // already under way. A backend that closes right after the
                // client spoke may be failing the connection because of it
                // (RFC 6455 lets it skip the close frame, e.g. on invalid
                // UTF-8, which the gateway does not check), and only it
                // knows the code: its TCP close is passed on as it is.
                if side == Side::Client || !self.is_open() || client_spoke_last {
                    return None;
                }
                Verdict::backend_gone()
            }
            Event::Drain { cause, hint_ms } => Verdict::drain(cause, hint_ms),
            Event::HeartbeatTimeout => Verdict::heartbeat_timeout(),
            Event::IdleTimeout => Verdict::idle_timeout(),
            Event::Tick => {
                return self
                    .deadline
                    .is_some_and(|at| now >= at)
                    .then(|| self.outcome_or("close_timeout"));
            }
        };
        self.begin_close(verdict, wire, now, close_timeout);
        None
    }

    /// How the connection ended when it ends at once (`end`).
    pub(crate) fn end(&self, end: End) -> Outcome {
        match end {
            // The client takes no data: a close frame would not reach it
            // either. Both sides are cut.
            End::SlowConsumer => Outcome::cut(SLOW_CONSUMER, "slow_consumer"),
            End::Shed => Outcome::cut(SHED, "send_queue_full"),
            End::StreamsEnded => self.outcome_or("eof"),
            End::Failed { reason } => match &self.phase {
                Phase::Gateway(g) => g.outcome(),
                _ => Outcome {
                    code: self.first_close.and_then(|(code, _)| code),
                    reason,
                },
            },
        }
    }

    /// The next thing the gateway's close needs done, now that the wire is
    /// as `wire` says; `None` until the wire or time moves on. Called again
    /// after each action (which changes the wire) until `None`.
    pub(crate) fn poll(&mut self, wire: &Wire, now: Instant) -> Option<Action<'_>> {
        let Phase::Gateway(g) = &mut self.phase else {
            return None;
        };
        if std::mem::take(&mut g.backend_unreachable) {
            return Some(Action::StopForwarding { to: Side::Backend });
        }
        let (client, backend) = (&wire.from_client, &wire.from_backend);
        let flushed = now >= g.flush_deadline;
        if !g.to_backend_sent && client.ended_inside_frame() {
            // The client ended inside a frame: no close frame can follow.
            g.to_backend_sent = true;
            g.backend_done = true;
        }
        let client_answered =
            g.says.order != Order::ClientFirst || g.client_done || client.ended || flushed;
        if !g.to_backend_sent
            && client_answered
            && (client.at_message_boundary
                || ((g.says.cut || client.ended) && client.at_frame_boundary))
        {
            g.to_backend_sent = true;
            return Some(Action::SendClose {
                to: Side::Backend,
                code: g.says.to_backend.code,
                reason: &g.says.to_backend.reason,
            });
        }
        if !g.to_client_sent && backend.ended_inside_frame() {
            // The backend ended inside a frame: the client cannot be sent a
            // close frame after it. Cut, once what came before is out.
            return (!backend.pending).then_some(Action::Finish(Outcome {
                code: None,
                reason: g.says.label,
            }));
        }
        let backend_answered =
            g.says.order != Order::BackendFirst || g.backend_done || backend.ended || flushed;
        let boundary = backend.at_message_boundary
            || ((g.says.cut || backend.ended || flushed) && backend.at_frame_boundary);
        let backend_closed = g.to_backend_sent || g.says.order == Order::ClientFirst;
        if !g.to_client_sent && backend_closed && backend_answered && boundary {
            g.to_client_sent = true;
            if g.says.cut && g.says.order != Order::ClientFirst {
                // After an error the client's answer is not awaited, unless
                // the backend is to get it.
                g.client_done = true;
            }
            return Some(Action::SendClose {
                to: Side::Client,
                code: g.says.code,
                reason: &g.says.reason,
            });
        }
        let client_gave_up = g.says.order == Order::ClientFirst && flushed;
        let finished = g.to_client_sent
            && g.to_backend_sent
            && (g.client_done || client.ended || client_gave_up)
            && !backend.pending
            && !client.pending;
        finished.then(|| Action::Finish(g.outcome()))
    }

    /// Whether the relay may shut `to`'s writes once its source ended and
    /// everything from it was written. The client's wait while it is owed
    /// the gateway's close frame; nothing is shut while the client is
    /// owed what a backend that ended inside a frame sent before.
    pub(crate) fn may_shut(&self, to: Side, wire: &Wire) -> bool {
        let Phase::Gateway(g) = &self.phase else {
            return true;
        };
        if g.to_client_sent {
            return true;
        }
        match to {
            Side::Client => false,
            Side::Backend => !wire.from_backend.ended_inside_frame(),
        }
    }

    /// When the relay must call again with [`Event::Tick`] if nothing
    /// happens before; `None` while the connection is open. A deadline
    /// already passed that waits for a boundary (not for time) is left out.
    pub(crate) fn deadline(&self, now: Instant) -> Option<Instant> {
        let at = self.deadline?;
        Some(match &self.phase {
            Phase::Gateway(g)
                if (!g.to_client_sent || !g.to_backend_sent) && g.flush_deadline > now =>
            {
                at.min(g.flush_deadline)
            }
            _ => at,
        })
    }

    /// A close frame arrived from `side`.
    fn on_close_frame(&mut self, side: Side, code: Option<u16>, now: Instant, timeout: Duration) {
        match &mut self.phase {
            Phase::Open => {
                self.first_close = Some((code, side.name()));
                self.phase = Phase::Relayed;
                self.deadline = Some(now + timeout * 2);
            }
            Phase::Relayed => {}
            Phase::Gateway(g) => match side {
                Side::Client => g.client_done = true,
                Side::Backend => g.backend_done = true,
            },
        }
    }

    /// Starts the gateway's own close: a close frame to each side at the
    /// next boundary, then the sockets are shut once both answered.
    fn begin_close(&mut self, says: Verdict, wire: &Wire, now: Instant, timeout: Duration) {
        match self.phase {
            Phase::Gateway(_) => return,
            // A close already under way between the endpoints finishes as it
            // is, unless the connection broke.
            Phase::Relayed if !says.cut => return,
            Phase::Open | Phase::Relayed => {}
        }
        let backend_gone = wire.backend_gone();
        self.phase = Phase::Gateway(Box::new(GatewayClose {
            says,
            // Nothing the client sends from now on has anywhere to go.
            backend_unreachable: backend_gone,
            to_backend_sent: backend_gone,
            backend_done: backend_gone,
            to_client_sent: false,
            client_done: wire.from_client.ended,
            flush_deadline: now + timeout,
        }));
        self.deadline = Some(now + timeout * 2);
    }

    /// The outcome of a connection that ends now: the gateway's close, or
    /// the first close (or end of stream) seen, or `otherwise`.
    fn outcome_or(&self, otherwise: &'static str) -> Outcome {
        match &self.phase {
            Phase::Gateway(g) => g.outcome(),
            _ => {
                let (code, reason) = self.first_close.unwrap_or((None, otherwise));
                Outcome { code, reason }
            }
        }
    }
}

impl GatewayClose {
    fn outcome(&self) -> Outcome {
        Outcome {
            code: Some(self.says.code),
            reason: self.says.label,
        }
    }
}

#[cfg(test)]
mod tests;
