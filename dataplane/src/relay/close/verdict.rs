//! What the gateway's own close says to each endpoint, one [`Verdict`] for
//! each reason it closes: the codes and reasons each side gets, the order
//! of the two close frames, and whether a message under way may be cut.

use crate::{frame::ProtocolError, registry::DrainCause};

/// The code the client gets when the backend breaks RFC 6455 or goes away
/// without a close frame. 1014 (Bad Gateway: "acting as a gateway, received
/// an invalid response") says it best, and browsers take it, but
/// tungstenite 0.30 and gorilla/websocket refuse to receive it: tungstenite
/// hands its user a 1002 "Protocol violation" instead and answers 1002.
/// Every client takes 1011 (an unexpected condition), with the reason.
pub const BACKEND_FAILED: u16 = 1011;

/// 1011 for a client that answered no ping in time: the gateway gave up on
/// a peer that stopped answering, an unexpected condition.
const HEARTBEAT_TIMEOUT: u16 = 1011;

/// 1001, going away: an idle connection, and what the backend is told
/// whenever the client's side ends the connection.
const GOING_AWAY: u16 = 1001;

/// What the gateway's close says to each side, and in which order.
pub(super) struct Verdict {
    /// The code the client gets.
    pub(super) code: u16,
    pub(super) reason: String,
    /// The close frame the backend gets.
    pub(super) to_backend: ToBackend,
    /// The outcome's reason.
    pub(super) label: &'static str,
    pub(super) order: Order,
    /// A message in progress may be cut (errors, timeouts).
    pub(super) cut: bool,
}

/// What the gateway's close frame to the backend says.
pub(super) struct ToBackend {
    pub(super) code: u16,
    pub(super) reason: String,
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
            code: GOING_AWAY,
            reason: "client going away".into(),
        }
    }
}

impl Verdict {
    /// Fail the client, but first let the backend answer what the client
    /// sent before the bad frame: the client gets exactly what it would
    /// have got from the backend alone.
    pub(super) fn client_protocol_error(e: ProtocolError) -> Self {
        let to_backend = ToBackend::protocol_error(e);
        Self {
            code: to_backend.code,
            reason: to_backend.reason.clone(),
            to_backend,
            label: "client_protocol_error",
            order: Order::BackendFirst,
            cut: true,
        }
    }

    /// Fail the backend as a client would (1002, 1009), and tell the
    /// client what the backend did.
    pub(super) fn backend_protocol_error(e: ProtocolError) -> Self {
        Self {
            code: BACKEND_FAILED,
            reason: format!("backend protocol error: {e}"),
            to_backend: ToBackend::protocol_error(e),
            label: "backend_protocol_error",
            order: Order::ClientFirst,
            cut: true,
        }
    }

    /// The backend closed its TCP connection without a close frame: the
    /// client is told, as for a broken backend.
    pub(super) fn backend_gone() -> Self {
        Self::together(
            BACKEND_FAILED,
            "backend closed the connection without a close frame",
            "backend_gone",
            false,
        )
    }

    /// Drains lose nothing already sent: the backend is closed first, and
    /// the client at a message boundary after the backend's answer, with
    /// the reconnect hint at the end of its reason.
    pub(super) fn drain(cause: DrainCause, hint_ms: u32) -> Self {
        Self {
            code: cause.close_code(),
            reason: format!("{}; retry-after-ms={hint_ms}", cause.reason()),
            to_backend: ToBackend::going_away(),
            label: match cause {
                DrainCause::Rebalance => "drain_rebalance",
                DrainCause::Shutdown => "drain_shutdown",
                DrainCause::Api => "drain_api",
            },
            order: Order::BackendFirst,
            cut: false,
        }
    }

    /// No pong in time: both closed at once, a message under way cut.
    pub(super) fn heartbeat_timeout() -> Self {
        Self::together(
            HEARTBEAT_TIMEOUT,
            "no pong to the gateway's ping",
            "heartbeat_timeout",
            true,
        )
    }

    /// No data for the idle timeout: both closed at message boundaries.
    pub(super) fn idle_timeout() -> Self {
        Self::together(GOING_AWAY, "idle timeout", "idle_timeout", false)
    }

    /// A close for a reason of the gateway's own: the backend is told the
    /// client is going away, the client is told `reason`, both at once.
    fn together(code: u16, reason: &str, label: &'static str, cut: bool) -> Self {
        Self {
            code,
            reason: reason.into(),
            to_backend: ToBackend::going_away(),
            label,
            order: Order::Together,
            cut,
        }
    }
}

/// The order of the gateway's two close frames. The endpoint closed first
/// may still send what it had under way; it is forwarded until the endpoint
/// answers (or `close_timeout`), so the other endpoint sees what it would
/// have seen without the gateway.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
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
