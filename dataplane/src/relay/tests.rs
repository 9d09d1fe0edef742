//! The close protocol when the backend misbehaves: a relay between two raw
//! TCP peers on 127.0.0.1, each side's bytes written and read by hand, so
//! that every test asserts the exact frames each endpoint gets.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;
use crate::{frame::apply_mask, registry::Role, routing::KeyHash};

const MAX_FRAME: u64 = 1024;
const MAX_MESSAGE: u64 = 4096;
const WAIT: Duration = Duration::from_secs(5);

/// A relay under test: the test holds the client's and the backend's ends.
struct Link {
    client: TcpStream,
    backend: TcpStream,
    relay: JoinHandle<Outcome>,
    metrics: Arc<Metrics>,
}

/// Settings with timers that never fire in a test.
fn quiet_settings() -> RelaySettings {
    RelaySettings {
        max_frame: MAX_FRAME,
        max_message: MAX_MESSAGE,
        heartbeat_interval: Duration::from_secs(3600),
        heartbeat_timeout: Duration::from_secs(60),
        idle_timeout: None,
        slow_consumer: Duration::from_secs(60),
        close_timeout: Duration::from_secs(1),
        reconnect_jitter_ms: 0,
    }
}

/// The gateway's side of a client connection whose send buffer is
/// `send_buffer` bytes (`SO_SNDBUF`), and the test's side, which holds
/// only a small receive buffer, so that a test that does not read stalls
/// the relay soon.
async fn client_pair(send_buffer: usize) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let client = socket
        .connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (relayed, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&relayed)
        .set_send_buffer_size(send_buffer)
        .expect("SO_SNDBUF");
    (client, relayed)
}

impl Link {
    async fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        let queues = Arc::new(SendQueues::new(u64::MAX, &metrics));
        Self::with(quiet_settings(), metrics, queues).await
    }

    /// A link whose relay runs with `settings` and charges `queues`.
    async fn with(settings: RelaySettings, metrics: Arc<Metrics>, queues: Arc<SendQueues>) -> Self {
        let (client, relay_client) = client_pair(64 * 1024).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay_backend = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (backend, _) = listener.accept().await.expect("accept");
        let control = ConnControl::new("test".into(), KeyHash(7), Role::Edge("owner".into()));
        let relay = Relay::new(
            Io::Tcp(relay_client),
            Io::Tcp(relay_backend),
            (Vec::new(), Vec::new()),
            false,
            Arc::new(control),
            Arc::new(settings),
            Relays {
                metrics: Arc::clone(&metrics),
                queues,
            },
        );
        Self {
            client,
            backend,
            relay: tokio::spawn(relay),
            metrics,
        }
    }

    /// The protocol errors counted, as `/metrics` shows them.
    fn protocol_errors(&self) -> Vec<String> {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("ringway_protocol_errors_total{"))
            .map(str::to_owned)
            .collect()
    }

    async fn outcome(self) -> Outcome {
        drop((self.client, self.backend));
        ended(self.relay).await
    }
}

/// One frame as a peer sends it; `mask` for the client's frames.
fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], mask);
    } else {
        out.extend_from_slice(payload);
    }
    out
}

const CLIENT_MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as received: first byte, whether it was masked, and its
/// payload unmasked.
#[derive(Debug)]
struct Received {
    b0: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Received {
    /// The code and reason of a close frame.
    fn close(&self) -> (u16, String) {
        assert_eq!(self.b0, 0x88, "a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "with a code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("UTF-8 reason");
        (code, reason)
    }
}

/// The next frame from `from`, or `None` at the end of the stream.
async fn read_frame(from: &mut TcpStream) -> Option<Received> {
    tokio::time::timeout(WAIT, async {
        let mut head = [0u8; 2];
        from.read_exact(&mut head).await.ok()?;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                from.read_exact(&mut b).await.ok()?;
                usize::from(u16::from_be_bytes(b))
            }
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        if masked {
            from.read_exact(&mut mask).await.ok()?;
        }
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await.ok()?;
        if masked {
            apply_mask(&mut payload, mask);
        }
        Some(Received {
            b0: head[0],
            masked,
            payload,
        })
    })
    .await
    .expect("a frame or the end within 5 s")
}

/// Everything `from` sends until it closes.
async fn read_to_end(from: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, from.read_to_end(&mut out))
        .await
        .expect("the end within 5 s")
        .expect("read");
    out
}

/// The backend's side of a broken stream and what the backend must be told.
struct Violation {
    what: &'static str,
    bytes: Vec<u8>,
    /// The code and reason the backend gets, as a client would send them.
    backend: (u16, &'static str),
    /// Bytes before the bad frame that the client still gets.
    forwarded: Vec<u8>,
}

/// A violation whose bytes start at a frame boundary.
fn bad(what: &'static str, bytes: &[u8], code: u16, reason: &'static str) -> Violation {
    Violation {
        what,
        bytes: bytes.to_vec(),
        backend: (code, reason),
        forwarded: Vec::new(),
    }
}

fn violations() -> Vec<Violation> {
    let masked = frame(0x81, b"hi", Some([1, 2, 3, 4]));
    let long_ping = frame(0x89, &[0u8; 126], None);
    let fragment = frame(0x01, b"par", None);
    let restart = [fragment.clone(), vec![0x81, 0x00]].concat();
    let huge_length = [vec![0x82, 127, 0x80], vec![0; 7]].concat();
    let pieces: Vec<u8> = (0..5)
        .flat_map(|i| frame(if i == 0 { 0x02 } else { 0x00 }, &[7u8; 1000], None))
        .collect();
    let four_pieces = pieces[..4 * (1000 + 4)].to_vec();
    vec![
        bad("opcode 7", &[0x87, 0], 1002, "reserved opcode 7"),
        bad("RSV2", &[0xA1, 0], 1002, "reserved bits"),
        bad("RSV1", &[0xC1, 0], 1002, "reserved bits"),
        bad("masked", &masked, 1002, "masked server frame"),
        bad("ping, no FIN", &[0x09, 0], 1002, "fragmented control"),
        bad("long ping", &long_ping, 1002, "control too long"),
        bad("continuation", &[0x80, 0], 1002, "unexpected continuation"),
        Violation {
            forwarded: fragment,
            ..bad("restart", &restart, 1002, "expected continuation")
        },
        bad("63-bit length", &huge_length, 1002, "bad length"),
        bad("big frame", &[0x82, 126, 4, 1], 1009, "frame too big"),
        Violation {
            forwarded: four_pieces,
            ..bad("big message", &pieces, 1009, "message too big")
        },
    ]
}

#[tokio::test]
async fn a_backend_that_breaks_the_protocol_is_failed_and_the_client_told() {
    for Violation {
        what,
        bytes,
        backend: (code, reason),
        forwarded,
    } in violations()
    {
        let mut link = Link::new().await;
        link.backend.write_all(&bytes).await.expect("write");
        // The client gets what came before the bad frame, then 1011.
        let mut got = vec![0u8; forwarded.len()];
        link.client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, forwarded, "{what}");
        let to_client = read_frame(&mut link.client).await.expect("a close frame");
        assert!(!to_client.masked, "{what}");
        assert_eq!(
            to_client.close(),
            (BACKEND_FAILED, format!("backend protocol error: {reason}")),
            "{what}"
        );
        // Once the client answered, the backend is failed as a client would
        // fail it: a masked close frame with the violation's code, then the
        // end of the stream.
        let answer = close_payload(BACKEND_FAILED, "");
        let answer = frame(0x88, &answer, Some([9, 8, 7, 6]));
        link.client.write_all(&answer).await.expect("write");
        let to_backend = read_frame(&mut link.backend).await.expect("a close frame");
        assert!(to_backend.masked, "{what}: client frames are masked");
        assert_eq!(
            to_backend.close(),
            (code, format!("protocol error: {reason}")),
            "{what}"
        );
        assert!(read_frame(&mut link.backend).await.is_none(), "{what}");
        assert!(read_frame(&mut link.client).await.is_none(), "{what}");
        let label = reason
            .strip_suffix(" 7")
            .unwrap_or(reason)
            .replace(' ', "_");
        assert_eq!(
            link.protocol_errors(),
            [format!(
                "ringway_protocol_errors_total{{from=\"backend\",violation=\"{label}\"}} 1"
            )],
            "{what}"
        );
        let outcome = link.outcome().await;
        assert_eq!(
            outcome,
            Outcome {
                code: Some(BACKEND_FAILED),
                reason: "backend_protocol_error"
            },
            "{what}"
        );
    }
}

/// Autobahn 4.1.5 through the gateway, as `wstest -m fuzzingserver` plays
/// it: a text message, then a frame with opcode 7 written a byte at a time.
/// The backend must get the client's echo of the message and then the
/// close frame a direct client sends, 1002.
#[tokio::test]
async fn a_backend_gets_the_clients_answers_before_its_close() {
    let mut link = Link::new().await;
    let hello = frame(0x81, b"Hello, world!", None);
    link.backend.write_all(&hello).await.expect("write");
    let mut got = vec![0u8; hello.len()];
    link.client.read_exact(&mut got).await.expect("read");
    assert_eq!(got, hello);
    for byte in frame(0x87, b"Hello, world!", None) {
        link.backend.write_all(&[byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let to_client = read_frame(&mut link.client).await.expect("a close frame");
    assert_eq!(to_client.close().0, BACKEND_FAILED);
    // The client echoes what it had, then answers the close.
    let echo = frame(0x81, b"Hello, world!", Some([1, 2, 3, 4]));
    let answer = frame(0x88, &close_payload(1000, ""), Some([5, 6, 7, 8]));
    link.client.write_all(&echo).await.expect("write");
    link.client.write_all(&answer).await.expect("write");
    let first = read_frame(&mut link.backend).await.expect("the echo");
    assert_eq!(
        (first.b0, first.payload.as_slice()),
        (0x81, &b"Hello, world!"[..])
    );
    let to_backend = read_frame(&mut link.backend).await.expect("a close frame");
    assert_eq!(
        to_backend.close(),
        (1002, "protocol error: reserved opcode 7".into())
    );
    assert!(read_frame(&mut link.backend).await.is_none());
    assert!(read_frame(&mut link.client).await.is_none());
    assert_eq!(link.outcome().await.reason, "backend_protocol_error");
}

#[tokio::test]
async fn what_the_gateway_does_not_check_reaches_the_client_unchanged() {
    // Invalid UTF-8, an invalid close code and a 1-byte close payload are
    // for the client to refuse: the gateway relays them as they are.
    for bytes in [
        frame(0x81, &[0xCE, 0xBA, 0xFF], None),
        frame(0x88, &close_payload(999, "bad code"), None),
        frame(0x88, &[0x03], None),
    ] {
        let mut link = Link::new().await;
        link.backend.write_all(&bytes).await.expect("write");
        let mut got = vec![0u8; bytes.len()];
        tokio::time::timeout(WAIT, link.client.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, bytes);
    }
}

#[tokio::test]
async fn a_backend_that_goes_away_without_a_close_frame_is_reported_to_the_client() {
    let mut link = Link::new().await;
    link.client
        .write_all(&frame(0x81, b"hello", CLIENT_MASK))
        .await
        .expect("write");
    let asked = read_frame(&mut link.backend).await.expect("the message");
    assert_eq!(asked.payload, b"hello");
    link.backend
        .write_all(&frame(0x81, b"hello", None))
        .await
        .expect("write");
    // The backend answered, then closes TCP without a close frame.
    link.backend.shutdown().await.expect("shutdown");
    let echo = read_frame(&mut link.client).await.expect("the echo");
    assert_eq!((echo.b0, echo.payload), (0x81, b"hello".to_vec()));
    let close = read_frame(&mut link.client).await.expect("a close frame");
    assert_eq!(
        close.close(),
        (
            BACKEND_FAILED,
            "backend closed the connection without a close frame".into()
        )
    );
    // The gateway waits for the client's answer, then closes.
    link.client
        .write_all(&frame(0x88, &close_payload(1000, ""), CLIENT_MASK))
        .await
        .expect("write");
    assert!(read_frame(&mut link.client).await.is_none());
    // The backend is not sent anything after it went away.
    assert!(read_frame(&mut link.backend).await.is_none());
    assert_eq!(
        link.outcome().await,
        Outcome {
            code: Some(BACKEND_FAILED),
            reason: "backend_gone"
        }
    );
}

#[tokio::test]
async fn a_backend_that_dies_inside_a_frame_is_cut() {
    let mut link = Link::new().await;
    let whole = frame(0x82, &[5u8; 100], None);
    let sent = [frame(0x81, b"first", None), whole[..30].to_vec()].concat();
    link.backend.write_all(&sent).await.expect("write");
    link.backend.shutdown().await.expect("shutdown");
    // No close frame can follow half a frame: the client gets what was
    // sent, then the end of the stream.
    assert_eq!(read_to_end(&mut link.client).await, sent);
    assert_eq!(
        link.outcome().await,
        Outcome {
            code: None,
            reason: "backend_gone"
        }
    );
}

/// The client sends `frame`, the backend reads it and closes TCP at once:
/// the client must get the end of the stream and nothing else. Returns the
/// frame as the backend got it.
async fn backend_drops_after(link: &mut Link, frame: &[u8]) -> Received {
    link.client.write_all(frame).await.expect("write");
    let got = read_frame(&mut link.backend).await.expect("the frame");
    link.backend.shutdown().await.expect("shutdown");
    assert_eq!(read_to_end(&mut link.client).await, b"");
    got
}

#[tokio::test]
async fn a_backend_that_fails_the_connection_over_a_client_frame_is_passed_on() {
    // A text frame whose UTF-8 the backend refuses: RFC 6455 lets it close
    // TCP without a close frame, and only it knows why. The client sees
    // exactly that.
    let mut link = Link::new().await;
    backend_drops_after(&mut link, &frame(0x81, &[0xFF, 0xFE], CLIENT_MASK)).await;
    assert_eq!(
        link.outcome().await,
        Outcome {
            code: None,
            reason: "backend_eof"
        }
    );
}

#[tokio::test]
async fn a_backend_that_drops_after_the_clients_close_is_passed_on() {
    let mut link = Link::new().await;
    let close = backend_drops_after(&mut link, &frame(0x88, &[0x03], CLIENT_MASK)).await;
    assert_eq!(close.payload, [0x03]);
    // Counted as a close the client began, with the code it sent (none).
    assert_eq!(
        link.outcome().await,
        Outcome {
            code: None,
            reason: "client"
        }
    );
}

/// The backend writes binary frames within the limits as fast as the
/// relay takes them, until the relay is gone.
fn flood(mut backend: TcpStream) -> JoinHandle<()> {
    let message = frame(0x82, &[0x5a; 1000], None);
    tokio::spawn(async move { while backend.write_all(&message).await.is_ok() {} })
}

/// Waits until `metrics` show `n` stalled clients.
async fn until_stalled(metrics: &Metrics, n: usize) {
    let shown = format!("ringway_stalled_clients {n}\n");
    tokio::time::timeout(WAIT, async {
        while !metrics.render().contains(&shown) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the clients stall");
}

/// How `relay` ended, within [`WAIT`].
async fn ended(relay: JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(WAIT, relay)
        .await
        .expect("the relay ends")
        .expect("no panic")
}

#[tokio::test]
async fn a_client_that_takes_nothing_is_cut_as_a_slow_consumer_not_by_its_heartbeat() {
    let settings = RelaySettings {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(100),
        slow_consumer: Duration::from_millis(1500),
        ..quiet_settings()
    };
    let metrics = Arc::new(Metrics::new());
    let queues = Arc::new(SendQueues::new(u64::MAX, &metrics));
    let Link {
        client,
        backend,
        relay,
        ..
    } = Link::with(settings, Arc::clone(&metrics), queues).await;
    let started = std::time::Instant::now();
    let flooding = flood(backend);
    until_stalled(&metrics, 1).await;
    assert_eq!(
        ended(relay).await,
        Outcome {
            code: Some(1008),
            reason: "slow_consumer"
        }
    );
    // Its ping waited behind the data: the heartbeat (0.2 s) did not end it.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(metrics.render().contains("ringway_stalled_clients 0\n"));
    assert_reset(&client).await;
    flooding.abort();
}

/// The client's socket was reset (what was queued for it dropped), which
/// it sees as its pending error without reading the data before it.
async fn assert_reset(client: &TcpStream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.take_error() {
            Ok(Some(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                return;
            }
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("the client was not reset: {other:?}"),
        }
    }
}

#[tokio::test]
async fn past_the_send_queue_ceiling_the_longest_stalled_client_is_shed_with_1013() {
    let metrics = Arc::new(Metrics::new());
    // Room for one stalled client: the second to stall sheds the first.
    let (_probe, probe) = client_pair(64 * 1024).await;
    let one = crate::send_queues::charge(Io::Tcp(probe).send_buffer_size());
    let queues = Arc::new(SendQueues::new(one + one / 2, &metrics));
    let first = Link::with(quiet_settings(), Arc::clone(&metrics), Arc::clone(&queues)).await;
    let second = Link::with(quiet_settings(), Arc::clone(&metrics), Arc::clone(&queues)).await;
    let mut floods = vec![flood(first.backend)];
    until_stalled(&metrics, 1).await;
    assert_eq!(queues.used(), one);
    floods.push(flood(second.backend));
    assert_eq!(
        ended(first.relay).await,
        Outcome {
            code: Some(1013),
            reason: "send_queue_full"
        }
    );
    assert_reset(&first.client).await;
    until_stalled(&metrics, 1).await;
    assert!(!second.relay.is_finished(), "the newer stall is kept");
    assert_eq!(queues.used(), one);
    assert!(
        metrics
            .render()
            .contains("ringway_connection_failures_total{kind=\"send_queue_full\"} 1\n")
    );
    second.relay.abort();
    floods.iter().for_each(JoinHandle::abort);
    drop((first.client, second.client));
}
