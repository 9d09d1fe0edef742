//! Every path of the close protocol, driven as the relay drives it but
//! without sockets or a clock: each test sets the wire, tells the machine
//! what happened and checks the close frames each endpoint gets, in order,
//! and how the connection ends.

use std::time::{Duration, Instant};

use super::*;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Between two messages, nothing pending.
const IDLE: Flow = Flow {
    ended: false,
    shut: false,
    at_frame_boundary: true,
    at_message_boundary: true,
    pending: false,
};

/// Between two frames of a fragmented message.
const MID_MESSAGE: Flow = Flow {
    at_message_boundary: false,
    ..IDLE
};

/// Inside a frame.
const MID_FRAME: Flow = Flow {
    at_frame_boundary: false,
    ..MID_MESSAGE
};

/// What the relay did for the close protocol.
#[derive(Debug, PartialEq, Eq)]
enum Did {
    Send(Side, u16, String),
    Stop(Side),
    Finish(Option<u16>, &'static str),
}

fn send(to: Side, code: u16, reason: &str) -> Did {
    Did::Send(to, code, reason.into())
}

/// A connection's close protocol, the wire it sees and the time.
struct Conn {
    close: CloseProtocol,
    wire: Wire,
    start: Instant,
    now: Instant,
}

impl Conn {
    fn new() -> Self {
        let start = Instant::now();
        Self {
            close: CloseProtocol::new(),
            wire: Wire {
                from_client: IDLE,
                from_backend: IDLE,
            },
            start,
            now: start,
        }
    }

    /// Moves the time to `after` the start.
    fn at(&mut self, after: Duration) -> &mut Self {
        self.now = self.start + after;
        self
    }

    fn tell(&mut self, event: Event) -> Option<Outcome> {
        self.close
            .handle(event, &self.wire, self.now, CLOSE_TIMEOUT)
    }

    fn close_frame(&mut self, from: Side, code: u16) {
        assert_eq!(
            self.tell(Event::CloseFrame {
                from,
                code: Some(code)
            }),
            None
        );
    }

    /// Everything the machine asks now, done as the relay does it (every
    /// frame written at once): until it asks nothing more or the end.
    fn step(&mut self) -> Vec<Did> {
        let mut did = Vec::new();
        while let Some(action) = self.close.poll(&self.wire, self.now) {
            did.push(match action {
                Action::SendClose { to, code, reason } => send(to, code, reason),
                Action::StopForwarding { to } => Did::Stop(to),
                Action::Finish(o) => {
                    did.push(Did::Finish(o.code, o.reason));
                    break;
                }
            });
        }
        did
    }

    fn end(&self, end: End) -> Outcome {
        self.close.end(end)
    }

    fn deadline(&self) -> Option<Duration> {
        self.close.deadline(self.now).map(|at| at - self.start)
    }
}

fn outcome(code: Option<u16>, reason: &'static str) -> Outcome {
    Outcome { code, reason }
}

const RESERVED: ProtocolError = ProtocolError::ReservedBits;

#[test]
fn client_closes_first_the_close_is_relayed_and_named_after_the_client() {
    let mut c = Conn::new();
    c.close_frame(Side::Client, 1000);
    assert!(!c.close.is_open() && !c.close.gateway_closing());
    assert_eq!(c.step(), []);
    c.at(Duration::from_millis(300))
        .close_frame(Side::Backend, 1000);
    assert_eq!(c.step(), []);
    assert_eq!(c.end(End::StreamsEnded), outcome(Some(1000), "client"));
}

#[test]
fn backend_closes_first_the_close_is_relayed_and_named_after_the_backend() {
    let mut c = Conn::new();
    c.close_frame(Side::Backend, 4000);
    assert_eq!(c.step(), []);
    c.close_frame(Side::Client, 4000);
    assert_eq!(c.step(), []);
    assert_eq!(c.end(End::StreamsEnded), outcome(Some(4000), "backend"));
}

#[test]
fn crossing_closes_are_both_relayed_and_the_first_seen_names_the_end() {
    let mut c = Conn::new();
    c.close_frame(Side::Client, 1000);
    c.close_frame(Side::Backend, 1001);
    assert_eq!(c.step(), []);
    assert_eq!(c.deadline(), Some(2 * CLOSE_TIMEOUT));
    assert_eq!(c.end(End::StreamsEnded), outcome(Some(1000), "client"));
}

#[test]
fn a_close_frame_without_a_code_ends_without_one() {
    let mut c = Conn::new();
    c.tell(Event::CloseFrame {
        from: Side::Backend,
        code: None,
    });
    assert_eq!(c.end(End::StreamsEnded), outcome(None, "backend"));
}

#[test]
fn a_relayed_close_never_answered_is_cut_after_two_close_timeouts() {
    let mut c = Conn::new();
    c.close_frame(Side::Client, 1000);
    assert_eq!(c.deadline(), Some(2 * CLOSE_TIMEOUT));
    c.at(2 * CLOSE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(c.tell(Event::Tick), None);
    c.at(2 * CLOSE_TIMEOUT);
    assert_eq!(c.tell(Event::Tick), Some(outcome(Some(1000), "client")));
}

#[test]
fn an_open_connection_has_no_close_deadline() {
    let mut c = Conn::new();
    assert!(c.close.is_open());
    assert_eq!(c.deadline(), None);
    c.at(Duration::from_secs(3600));
    assert_eq!(c.tell(Event::Tick), None);
    assert_eq!(c.step(), []);
}

#[test]
fn streams_that_end_without_close_frames_are_named_after_the_first_to_end() {
    let mut c = Conn::new();
    assert_eq!(c.end(End::StreamsEnded), outcome(None, "eof"));
    c.wire.from_client.ended = true;
    c.tell(Event::Ended {
        side: Side::Client,
        client_spoke_last: true,
    });
    c.wire.from_backend.ended = true;
    c.tell(Event::Ended {
        side: Side::Backend,
        client_spoke_last: true,
    });
    assert!(c.close.is_open());
    assert_eq!(c.end(End::StreamsEnded), outcome(None, "client_eof"));
}

#[test]
fn a_client_protocol_error_fails_the_backend_first_and_the_client_after_its_answer() {
    let mut c = Conn::new();
    // The relay reads a client that broke the protocol no more.
    c.wire.from_client.ended = true;
    c.tell(Event::ProtocolError {
        from: Side::Client,
        error: RESERVED,
    });
    assert!(c.close.gateway_closing());
    assert_eq!(
        c.step(),
        [send(Side::Backend, 1002, "protocol error: reserved bits")]
    );
    // What the backend sends until it answers reaches the client before
    // the close, which then cuts a message under way.
    c.wire.from_backend = MID_MESSAGE;
    assert_eq!(c.step(), []);
    c.close_frame(Side::Backend, 1002);
    assert_eq!(
        c.step(),
        [
            send(Side::Client, 1002, "protocol error: reserved bits"),
            Did::Finish(Some(1002), "client_protocol_error"),
        ]
    );
}

#[test]
fn a_client_message_too_big_is_failed_with_1009() {
    let mut c = Conn::new();
    c.wire.from_client = Flow {
        ended: true,
        ..MID_MESSAGE
    };
    c.tell(Event::ProtocolError {
        from: Side::Client,
        error: ProtocolError::MessageTooBig,
    });
    assert_eq!(
        c.step(),
        [send(Side::Backend, 1009, "protocol error: message too big")]
    );
    c.close_frame(Side::Backend, 1009);
    assert_eq!(
        c.step(),
        [
            send(Side::Client, 1009, "protocol error: message too big"),
            Did::Finish(Some(1009), "client_protocol_error"),
        ]
    );
}

#[test]
fn a_client_protocol_error_reaches_the_client_after_the_close_timeout_without_the_backends_answer()
{
    let mut c = Conn::new();
    c.wire.from_client.ended = true;
    c.tell(Event::ProtocolError {
        from: Side::Client,
        error: RESERVED,
    });
    assert_eq!(c.step().len(), 1);
    assert_eq!(c.deadline(), Some(CLOSE_TIMEOUT));
    c.wire.from_backend = MID_MESSAGE;
    c.at(CLOSE_TIMEOUT);
    assert_eq!(
        c.step(),
        [
            send(Side::Client, 1002, "protocol error: reserved bits"),
            Did::Finish(Some(1002), "client_protocol_error"),
        ]
    );
}

#[test]
fn a_backend_protocol_error_fails_the_client_first_and_the_backend_after_its_answer() {
    let mut c = Conn::new();
    c.wire.from_backend = MID_MESSAGE;
    c.tell(Event::ProtocolError {
        from: Side::Backend,
        error: ProtocolError::Masked,
    });
    assert_eq!(
        c.step(),
        [send(
            Side::Client,
            1011,
            "backend protocol error: masked server frame"
        )]
    );
    // The client's answers to what it had got reach the backend first.
    c.wire.from_client = MID_MESSAGE;
    assert_eq!(c.step(), []);
    c.close_frame(Side::Client, 1011);
    assert_eq!(
        c.step(),
        [
            send(Side::Backend, 1002, "protocol error: masked server frame"),
            Did::Finish(Some(1011), "backend_protocol_error"),
        ]
    );
}

#[test]
fn a_backend_protocol_error_fails_the_backend_after_the_close_timeout_without_the_clients_answer() {
    let mut c = Conn::new();
    c.tell(Event::ProtocolError {
        from: Side::Backend,
        error: ProtocolError::FrameTooBig,
    });
    assert_eq!(
        c.step(),
        [send(
            Side::Client,
            1011,
            "backend protocol error: frame too big"
        )]
    );
    c.at(CLOSE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(c.step(), []);
    c.at(CLOSE_TIMEOUT);
    assert_eq!(
        c.step(),
        [
            send(Side::Backend, 1009, "protocol error: frame too big"),
            Did::Finish(Some(1011), "backend_protocol_error"),
        ]
    );
}

#[test]
fn a_drain_closes_the_backend_first_and_the_client_with_1001_and_the_hint_at_a_message_boundary() {
    let mut c = Conn::new();
    c.tell(Event::Drain {
        cause: DrainCause::Shutdown,
        hint_ms: 1234,
    });
    assert_eq!(c.step(), [send(Side::Backend, 1001, "client going away")]);
    // Everything the backend sends until it answers reaches the client,
    // whole messages only.
    c.wire.from_backend = MID_MESSAGE;
    assert_eq!(c.step(), []);
    c.close_frame(Side::Backend, 1001);
    assert_eq!(c.step(), []);
    c.wire.from_backend = IDLE;
    assert_eq!(
        c.step(),
        [send(
            Side::Client,
            1001,
            "pod stopping; retry-after-ms=1234"
        )]
    );
    // The client's answer is awaited.
    assert_eq!(c.step(), []);
    c.close_frame(Side::Client, 1001);
    assert_eq!(c.step(), [Did::Finish(Some(1001), "drain_shutdown")]);
}

#[test]
fn a_drain_waits_for_the_clients_message_boundary() {
    let mut c = Conn::new();
    c.wire.from_client = MID_MESSAGE;
    c.tell(Event::Drain {
        cause: DrainCause::Api,
        hint_ms: 0,
    });
    assert_eq!(c.step(), []);
    c.wire.from_client = IDLE;
    assert_eq!(c.step(), [send(Side::Backend, 1001, "client going away")]);
    c.close_frame(Side::Backend, 1000);
    assert_eq!(
        c.step(),
        [send(Side::Client, 1001, "pod stopping; retry-after-ms=0")]
    );
    c.close_frame(Side::Client, 1001);
    assert_eq!(c.step(), [Did::Finish(Some(1001), "drain_api")]);
}

#[test]
fn a_rebalance_closes_with_1012_key_moved() {
    let mut c = Conn::new();
    c.tell(Event::Drain {
        cause: DrainCause::Rebalance,
        hint_ms: 42,
    });
    assert_eq!(c.step(), [send(Side::Backend, 1001, "client going away")]);
    c.close_frame(Side::Backend, 1001);
    assert_eq!(
        c.step(),
        [send(Side::Client, 1012, "key moved; retry-after-ms=42")]
    );
    c.close_frame(Side::Client, 1012);
    assert_eq!(c.step(), [Did::Finish(Some(1012), "drain_rebalance")]);
}

#[test]
fn a_drain_whose_endpoints_never_answer_is_cut_by_the_close_timeouts() {
    let mut c = Conn::new();
    c.tell(Event::Drain {
        cause: DrainCause::Shutdown,
        hint_ms: 7,
    });
    assert_eq!(c.step().len(), 1);
    // The timer waits for the backend's answer, then for the end.
    assert_eq!(c.deadline(), Some(CLOSE_TIMEOUT));
    c.wire.from_backend = MID_MESSAGE;
    c.at(CLOSE_TIMEOUT);
    assert_eq!(c.tell(Event::Tick), None);
    assert_eq!(
        c.step(),
        [send(Side::Client, 1001, "pod stopping; retry-after-ms=7")]
    );
    assert_eq!(c.deadline(), Some(2 * CLOSE_TIMEOUT));
    c.at(2 * CLOSE_TIMEOUT);
    assert_eq!(c.step(), []);
    assert_eq!(
        c.tell(Event::Tick),
        Some(outcome(Some(1001), "drain_shutdown"))
    );
}

#[test]
fn a_heartbeat_timeout_closes_both_sides_at_once_with_1011() {
    let mut c = Conn::new();
    c.wire.from_client = MID_MESSAGE;
    c.wire.from_backend = MID_MESSAGE;
    c.tell(Event::HeartbeatTimeout);
    assert_eq!(
        c.step(),
        [
            send(Side::Backend, 1001, "client going away"),
            send(Side::Client, 1011, "no pong to the gateway's ping"),
            Did::Finish(Some(1011), "heartbeat_timeout"),
        ]
    );
}

#[test]
fn an_idle_timeout_closes_both_sides_with_1001_and_waits_for_the_clients_answer() {
    let mut c = Conn::new();
    c.tell(Event::IdleTimeout);
    assert_eq!(
        c.step(),
        [
            send(Side::Backend, 1001, "client going away"),
            send(Side::Client, 1001, "idle timeout"),
        ]
    );
    c.close_frame(Side::Client, 1001);
    assert_eq!(c.step(), [Did::Finish(Some(1001), "idle_timeout")]);
}

#[test]
fn a_slow_consumer_is_cut_with_1008_and_its_socket_reset() {
    let c = Conn::new();
    let end = c.end(End::SlowConsumer);
    assert_eq!(end, outcome(Some(1008), "slow_consumer"));
    assert!(end.abandons_client());
}

#[test]
fn a_connection_shed_at_the_send_queue_ceiling_is_cut_with_1013_and_its_socket_reset() {
    let c = Conn::new();
    let end = c.end(End::Shed);
    assert_eq!(end, outcome(Some(SHED), "send_queue_full"));
    assert!(end.abandons_client());
    assert!(!outcome(Some(1000), "client").abandons_client());
}

#[test]
fn a_backend_that_goes_away_without_a_close_frame_is_reported_to_the_client_with_1011() {
    let mut c = Conn::new();
    c.wire.from_backend.ended = true;
    c.tell(Event::Ended {
        side: Side::Backend,
        client_spoke_last: false,
    });
    // The client's writes stay open for the close frame it is owed.
    assert!(!c.close.may_shut(Side::Client, &c.wire));
    assert_eq!(
        c.step(),
        [
            Did::Stop(Side::Backend),
            send(
                Side::Client,
                BACKEND_FAILED,
                "backend closed the connection without a close frame"
            ),
        ]
    );
    assert!(c.close.may_shut(Side::Client, &c.wire));
    c.close_frame(Side::Client, 1011);
    assert_eq!(c.step(), [Did::Finish(Some(1011), "backend_gone")]);
}

#[test]
fn a_backend_that_ends_right_after_the_client_spoke_is_passed_on() {
    let mut c = Conn::new();
    c.wire.from_backend.ended = true;
    c.tell(Event::Ended {
        side: Side::Backend,
        client_spoke_last: true,
    });
    assert!(c.close.is_open());
    assert_eq!(c.step(), []);
    assert_eq!(c.end(End::StreamsEnded), outcome(None, "backend_eof"));
}

#[test]
fn a_backend_that_ends_after_a_relayed_close_is_passed_on() {
    let mut c = Conn::new();
    c.close_frame(Side::Client, 1000);
    c.wire.from_backend.ended = true;
    c.tell(Event::Ended {
        side: Side::Backend,
        client_spoke_last: false,
    });
    assert!(!c.close.gateway_closing());
    assert_eq!(c.end(End::StreamsEnded), outcome(Some(1000), "client"));
}

#[test]
fn a_backend_that_ends_inside_a_frame_is_cut_once_what_it_sent_is_written() {
    let mut c = Conn::new();
    c.wire.from_backend = Flow {
        ended: true,
        pending: true,
        ..MID_FRAME
    };
    c.tell(Event::Drain {
        cause: DrainCause::Shutdown,
        hint_ms: 0,
    });
    assert_eq!(c.step(), [Did::Stop(Side::Backend)]);
    // Neither side is shut while the client is owed what came before.
    assert!(!c.close.may_shut(Side::Backend, &c.wire));
    assert!(!c.close.may_shut(Side::Client, &c.wire));
    c.wire.from_backend.pending = false;
    assert_eq!(c.step(), [Did::Finish(None, "drain_shutdown")]);
}

#[test]
fn a_client_that_ends_inside_a_frame_gets_no_close_frame_sent_to_the_backend() {
    let mut c = Conn::new();
    c.wire.from_client = Flow {
        ended: true,
        ..MID_FRAME
    };
    c.tell(Event::HeartbeatTimeout);
    assert_eq!(
        c.step(),
        [
            send(Side::Client, 1011, "no pong to the gateway's ping"),
            Did::Finish(Some(1011), "heartbeat_timeout"),
        ]
    );
}

#[test]
fn a_gateway_close_waits_until_what_it_sent_is_written() {
    let mut c = Conn::new();
    c.wire.from_client.pending = true;
    c.tell(Event::HeartbeatTimeout);
    assert_eq!(c.step().len(), 2);
    c.wire.from_client.pending = false;
    c.wire.from_backend.pending = true;
    assert_eq!(c.step(), []);
    c.wire.from_backend.pending = false;
    assert_eq!(c.step(), [Did::Finish(Some(1011), "heartbeat_timeout")]);
}

#[test]
fn a_protocol_error_takes_over_a_relayed_close_but_a_drain_does_not() {
    let mut c = Conn::new();
    c.close_frame(Side::Client, 1000);
    c.tell(Event::Drain {
        cause: DrainCause::Shutdown,
        hint_ms: 0,
    });
    assert!(!c.close.gateway_closing());
    assert_eq!(c.step(), []);
    c.at(Duration::from_millis(500)).tell(Event::ProtocolError {
        from: Side::Backend,
        error: RESERVED,
    });
    assert!(c.close.gateway_closing());
    // The close is over two close timeouts after the error, not the frame.
    assert_eq!(
        c.close.deadline(c.start + 2 * CLOSE_TIMEOUT),
        Some(c.start + Duration::from_millis(500) + 2 * CLOSE_TIMEOUT)
    );
    assert_eq!(
        c.step(),
        [send(
            Side::Client,
            1011,
            "backend protocol error: reserved bits"
        )]
    );
}

#[test]
fn a_second_reason_to_close_does_not_replace_the_first() {
    let mut c = Conn::new();
    c.tell(Event::IdleTimeout);
    c.tell(Event::HeartbeatTimeout);
    c.tell(Event::ProtocolError {
        from: Side::Client,
        error: RESERVED,
    });
    assert_eq!(
        c.step(),
        [
            send(Side::Backend, 1001, "client going away"),
            send(Side::Client, 1001, "idle timeout"),
        ]
    );
}

#[test]
fn a_close_frame_during_the_gateways_close_is_its_answer() {
    let mut c = Conn::new();
    c.tell(Event::IdleTimeout);
    c.step();
    c.close_frame(Side::Client, 1001);
    assert_eq!(c.step(), [Did::Finish(Some(1001), "idle_timeout")]);
    // The first close seen stays the gateway's.
    assert_eq!(
        c.end(End::StreamsEnded),
        outcome(Some(1001), "idle_timeout")
    );
}

#[test]
fn a_failed_socket_ends_with_the_close_code_seen_and_its_own_reason() {
    let mut c = Conn::new();
    assert_eq!(
        c.end(End::Failed { reason: "io_error" }),
        outcome(None, "io_error")
    );
    c.close_frame(Side::Backend, 1000);
    assert_eq!(
        c.end(End::Failed { reason: "reset" }),
        outcome(Some(1000), "reset")
    );
    let mut c = Conn::new();
    c.tell(Event::HeartbeatTimeout);
    assert_eq!(
        c.end(End::Failed { reason: "reset" }),
        outcome(Some(1011), "heartbeat_timeout")
    );
}

#[test]
fn a_gateway_close_started_when_the_backend_is_gone_only_stops_forwarding_to_it() {
    let mut c = Conn::new();
    // The gateway already shut the backend's writes (the client ended).
    c.wire.from_client = Flow {
        ended: true,
        shut: true,
        ..IDLE
    };
    c.tell(Event::IdleTimeout);
    assert_eq!(
        c.step(),
        [
            Did::Stop(Side::Backend),
            send(Side::Client, 1001, "idle timeout"),
            Did::Finish(Some(1001), "idle_timeout"),
        ]
    );
}

#[test]
fn only_the_gateways_own_closes_count_as_decided_by_it() {
    let mut relayed = Conn::new();
    relayed.close_frame(Side::Client, 1000);
    let mut eof = Conn::new();
    eof.wire.from_client.ended = true;
    eof.tell(Event::Ended {
        side: Side::Client,
        client_spoke_last: true,
    });
    let fresh = Conn::new();
    for by_an_endpoint in [
        relayed.end(End::StreamsEnded),
        eof.end(End::StreamsEnded),
        fresh.end(End::StreamsEnded),
        fresh.end(End::Failed { reason: "reset" }),
        fresh.end(End::Failed { reason: "io_error" }),
    ] {
        assert!(!by_an_endpoint.decided_by_gateway(), "{by_an_endpoint:?}");
    }

    let mut too_big = Conn::new();
    too_big.tell(Event::ProtocolError {
        from: Side::Client,
        error: ProtocolError::MessageTooBig,
    });
    let mut no_pong = Conn::new();
    no_pong.tell(Event::HeartbeatTimeout);
    for by_the_gateway in [
        // Its close stays its own even when a socket then fails.
        too_big.end(End::Failed { reason: "reset" }),
        no_pong.end(End::StreamsEnded),
        fresh.end(End::SlowConsumer),
        fresh.end(End::Shed),
    ] {
        assert!(by_the_gateway.decided_by_gateway(), "{by_the_gateway:?}");
    }
}
