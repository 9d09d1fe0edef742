//! `ringway-load idle`: many connections that only read. It measures what
//! holding them costs a proxy (the script reads the proxy's memory while
//! they are open) and how the server lets them go: with `--until-closed` it
//! waits for the server to close them all, as a drain does, and reports the
//! close codes and how many closes came in each second, the number a
//! drain's rate cap bounds.
//!
//! With `--echo-every`, each connection also sends a small message now and
//! then and expects it back from the echo backend, to show that a drain
//! loses no message the backend had time to answer before the close: a
//! message still unanswered when its connection ends counts as `lost` when
//! it was sent at least `--echo-grace` before the end, and as
//! `in_flight_at_close` when later (the close handshake may cut those);
//! `--echo-one-in` makes only a sample of the connections send.
//!
//! Each connection is held, and so reads and answers the server's pings,
//! from the moment it opens: a ramp of many thousand connections may take
//! longer than the server's heartbeat timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::CLOSE_TIMEOUT;
use super::connect::{ConnectArgs, Connector, Ws, connect_each};
use super::latency::lock;
use super::report::{self, Report, Tally, describe_counts, round1};
use crate::limits::check_connection_budget;

/// Read buffer per connection, allocated for every connection: idle
/// connections read only pings, closes and short echoes, and a million of
/// them on one machine (`e2e/bench/million.sh`) must hold little memory
/// each. A larger frame still arrives, in several reads.
const READ_BUFFER_BYTES: usize = 256;

/// How often a long wait reports on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long one echo message may take to leave before the connection stops
/// sending: a server that does not read must not keep its reader from
/// seeing the stop (or a close).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How many lost messages the report names.
const LOST_EXAMPLES: usize = 5;

/// Open connections, hold them, and see how the server closes them.
#[derive(Clone, Debug, clap::Args)]
pub struct IdleArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Connections to open.
    #[arg(long)]
    pub connections: usize,

    /// Seconds to hold the connections once open; with --until-closed, the
    /// longest to wait for the server to close them.
    #[arg(long, default_value_t = 30.0)]
    pub hold: f64,

    /// Wait for the server to close every connection (a drain) instead of
    /// closing them after --hold; report close codes and closes per second.
    #[arg(long)]
    pub until_closed: bool,

    /// Seconds between the small messages each connection sends while it is
    /// held and expects echoed back (0: none, the connections only read);
    /// the first goes at a random moment within the first period, so that
    /// sends spread evenly.
    #[arg(long, default_value_t = 0.0)]
    pub echo_every: f64,

    /// With --echo-every, only one connection in this many sends (those
    /// whose number is a multiple of it): a sample of a large run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub echo_one_in: u64,

    /// A message still unechoed when its connection ends counts as lost when
    /// it was sent at least this many seconds before the end (the close
    /// frame, or the socket closing), and as in flight at the close when
    /// later.
    #[arg(long, default_value_t = 0.5)]
    pub echo_grace: f64,
}

/// Closes the server made, as they happened.
#[derive(Debug, Default)]
struct Closes {
    events: Mutex<Vec<(Instant, String)>>,
}

impl Closes {
    fn record(&self, reason: String) {
        lock(&self.events).push((Instant::now(), reason));
    }
}

/// What every held connection reports to, shared by their tasks.
#[derive(Debug)]
struct Held {
    /// Connections open now.
    open: AtomicU64,
    /// Closes the server made.
    closes: Closes,
    /// The echo messages' outcome.
    echoes: Echoes,
    /// The server's pings, each answered with a pong.
    pings: AtomicU64,
}

/// What the connections' echo messages came to (`--echo-every`), counted
/// as it happens by every connection's task.
#[derive(Debug)]
struct Echoes {
    /// Time between one connection's messages; zero when they send none.
    every: Duration,
    /// How long before its connection's end an unechoed message must have
    /// been sent to count as lost.
    grace: Duration,
    /// Only connections whose number is a multiple of this send.
    one_in: u64,
    sent: AtomicU64,
    echoed: AtomicU64,
    lost: AtomicU64,
    in_flight_at_close: AtomicU64,
    lost_examples: Mutex<Vec<String>>,
}

impl Echoes {
    fn new(every: Duration, grace: Duration, one_in: u64) -> Self {
        Self {
            every,
            grace,
            one_in: one_in.max(1),
            sent: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            in_flight_at_close: AtomicU64::new(0),
            lost_examples: Mutex::new(Vec::new()),
        }
    }

    fn lose(&self, example: impl FnOnce() -> String) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        let mut examples = lock(&self.lost_examples);
        if examples.len() < LOST_EXAMPLES {
            examples.push(example());
        }
    }
}

/// One connection's echo messages: when the next one is due, and the send
/// times of those not echoed yet. Echoes come back in the order sent, so the
/// oldest outstanding message is `next_seq - outstanding.len()`. Nothing is
/// allocated until the first message goes out.
#[derive(Debug)]
struct EchoTrack {
    /// The connection's number in the run, in every payload.
    index: usize,
    /// Whether this connection sends: `--echo-every` is on and no send failed.
    sending: bool,
    next_send: Instant,
    next_seq: u64,
    outstanding: VecDeque<Instant>,
}

impl EchoTrack {
    /// The track of connection `index`, held from `start`: its first message
    /// is due at a random moment within the first period; it sends nothing
    /// when it is not in the sample.
    fn new(index: usize, echoes: &Echoes, start: Instant) -> Self {
        Self {
            index,
            sending: !echoes.every.is_zero() && (index as u64).is_multiple_of(echoes.one_in),
            next_send: start + echoes.every.mul_f64(fastrand::f64()),
            next_seq: 0,
            outstanding: VecDeque::new(),
        }
    }

    /// The next message to send, recorded as sent at `at` (the caller sends
    /// it), and the next one scheduled a period after it was due (a period
    /// from now when the connection fell a whole period behind).
    fn message(&mut self, at: Instant, echoes: &Echoes) -> Message {
        let payload = format!("{}:{}", self.index, self.next_seq);
        self.next_seq += 1;
        self.outstanding.push_back(at);
        echoes.sent.fetch_add(1, Ordering::Relaxed);
        self.next_send += echoes.every;
        if self.next_send <= at {
            self.next_send = at + echoes.every;
        }
        Message::text(payload)
    }

    /// Stops sending after a send that was refused: its message never left.
    fn send_failed(&mut self, echoes: &Echoes) {
        self.sending = false;
        if self.outstanding.pop_back().is_some() {
            self.next_seq -= 1;
            echoes.sent.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes a message the server sent: the echo of an outstanding message
    /// answers it, and any older one still outstanding was skipped, lost.
    /// Anything else (not ours, already settled) is ignored.
    fn received(&mut self, message: &Message, echoes: &Echoes) {
        let Message::Text(text) = message else {
            return;
        };
        let Some((index, seq)) = text.as_str().split_once(':') else {
            return;
        };
        let (Ok(index), Ok(seq)) = (index.parse::<usize>(), seq.parse::<u64>()) else {
            return;
        };
        let first = self.next_seq - self.outstanding.len() as u64;
        if index != self.index || !(first..self.next_seq).contains(&seq) {
            return;
        }
        for skipped in first..seq {
            self.outstanding.pop_front();
            echoes.lose(|| {
                format!(
                    "conn {} seq {skipped} never echoed (seq {seq} was)",
                    self.index
                )
            });
        }
        self.outstanding.pop_front();
        echoes.echoed.fetch_add(1, Ordering::Relaxed);
    }

    /// Settles the messages still outstanding when the connection ended at
    /// `at` (`how`: "close" or how it ended without one): lost when sent at
    /// least the grace before, in flight at the close when later.
    fn ended(&mut self, at: Instant, how: &str, echoes: &Echoes) {
        let index = self.index;
        let first = self.next_seq - self.outstanding.len() as u64;
        for (seq, sent) in (first..).zip(self.outstanding.drain(..)) {
            let before = at.saturating_duration_since(sent);
            if before >= echoes.grace {
                echoes.lose(|| {
                    format!(
                        "conn {index} seq {seq} sent {:.1} s before {how}",
                        before.as_secs_f64()
                    )
                });
            } else {
                echoes.in_flight_at_close.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How the closes of a run spread over time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloseTimeline {
    /// Closes in each whole second after the first close (second 0 holds
    /// the first).
    pub per_second: Vec<u64>,
    /// Seconds from the first close to the last.
    pub span_seconds: f64,
}

impl CloseTimeline {
    /// The timeline of closes that happened `offsets` after the first one.
    pub fn from_offsets(offsets: &[Duration]) -> Self {
        let mut per_second = Vec::new();
        let mut span = Duration::ZERO;
        for offset in offsets {
            let second = offset.as_secs() as usize;
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
            span = span.max(*offset);
        }
        Self {
            per_second,
            span_seconds: span.as_secs_f64(),
        }
    }

    /// The most closes in any one second.
    pub fn peak(&self) -> u64 {
        self.per_second.iter().copied().max().unwrap_or(0)
    }

    /// The most closes per second averaged over any `seconds` consecutive
    /// seconds (over all of them when there are fewer). A client sees
    /// closes late by however long it waited for a CPU, so one-second counts
    /// borrow from their neighbours on a busy machine; a few seconds'
    /// average smooths that out and still shows a server exceeding its rate.
    pub fn peak_over(&self, seconds: usize) -> f64 {
        let width = seconds.clamp(1, self.per_second.len().max(1));
        self.per_second
            .windows(width)
            .map(|w| w.iter().sum::<u64>() as f64 / width as f64)
            .fold(0.0, f64::max)
    }

    /// Closes per second from the first to the last (all of them in one
    /// second when the span is shorter than that).
    pub fn mean(&self) -> f64 {
        let total: u64 = self.per_second.iter().sum();
        total as f64 / self.span_seconds.max(1.0)
    }
}

/// Runs the idle hold and reports it.
pub async fn run(args: IdleArgs) -> anyhow::Result<Report> {
    check_connection_budget(args.connections)?;
    let hold = super::seconds("hold", args.hold)?;
    ensure!(args.connections > 0, "--connections must be more than 0");
    let held = Arc::new(Held {
        open: AtomicU64::new(0),
        closes: Closes::default(),
        echoes: Echoes::new(
            super::seconds("echo-every", args.echo_every)?,
            super::seconds("echo-grace", args.echo_grace)?,
            args.echo_one_in,
        ),
        pings: AtomicU64::new(0),
    });

    let connector = Arc::new(Connector::new(&args.connect, READ_BUFFER_BYTES)?);
    let (stop, stopped) = watch::channel(false);
    let mut holders = JoinSet::new();
    let mut opened = 0;
    let (failures, elapsed) = connect_each(
        connector,
        args.connections,
        args.connect.ramp,
        |connected| {
            opened += 1;
            held.open.fetch_add(1, Ordering::Relaxed);
            let track = EchoTrack::new(connected.index, &held.echoes, Instant::now());
            holders.spawn(hold_connection(
                connected.ws,
                stopped.clone(),
                held.clone(),
                track,
            ));
        },
    )
    .await;
    let failed = failures.total();
    let failures = failures.counts();
    // Closes that came before the last connection opened: a server that
    // dropped them, or pings that went unanswered.
    let closed_while_opening = lock(&held.closes.events).len();
    let connected_line = format!(
        "idle: {opened} of {} connections open ({failed} failed: {}) to {} in {:.1} s",
        args.connections,
        describe_counts(&failures),
        args.connect.url,
        elapsed.as_secs_f64()
    );
    // Scripts wait for this line before they measure the server.
    eprintln!(
        "{connected_line}; {} up to {:.0} s",
        if args.until_closed {
            "waiting for the server to close them,"
        } else {
            "holding them"
        },
        hold.as_secs_f64()
    );

    let held_from = Instant::now();
    let (open, closes, echoes) = (&held.open, &held.closes, &held.echoes);
    let deadline = held_from + hold;
    let mut next_progress = held_from + PROGRESS_EVERY;
    while Instant::now() < deadline && open.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(50).min(deadline - Instant::now())).await;
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "idle: {} open, {} closed by the server",
                open.load(Ordering::Relaxed),
                lock(&closes.events).len()
            );
        }
    }
    let held_for = held_from.elapsed();
    let still_open = open.load(Ordering::Relaxed);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, async {
        while holders.join_next().await.is_some() {}
    })
    .await;
    holders.abort_all();

    let events = std::mem::take(&mut *lock(&closes.events));
    let codes = Tally::default();
    for (_, reason) in &events {
        codes.add(reason.clone());
    }
    let first = events.iter().map(|(at, _)| *at).min();
    let offsets: Vec<Duration> = match first {
        Some(first) => events.iter().map(|(at, _)| *at - first).collect(),
        None => Vec::new(),
    };
    let timeline = CloseTimeline::from_offsets(&offsets);
    let codes = codes.counts();
    let closed = events.len();
    let first_close_after = first.map(|f| f.saturating_duration_since(held_from).as_secs_f64());
    let last = events.iter().map(|(at, _)| *at).max();

    let pings = held.pings.load(Ordering::Relaxed);
    let mut lines = vec![
        connected_line,
        format!(
            "held {:.1} s: {still_open} still open, {closed} closed by the server ({}), \
             {closed_while_opening} of them while the others opened; {pings} pings answered",
            held_for.as_secs_f64(),
            describe_counts(&codes)
        ),
    ];
    if closed > 0 {
        lines.push(format!(
            "closes: {closed} over {:.1} s from the first ({:.1} s after all were open), \
             peak {}/s ({:.1}/s over 5 s), mean {:.1}/s",
            timeline.span_seconds,
            first_close_after.unwrap_or_default(),
            timeline.peak(),
            timeline.peak_over(5),
            timeline.mean()
        ));
        let per_second: Vec<String> = timeline.per_second.iter().map(u64::to_string).collect();
        lines.push(format!("closes per second: {}", per_second.join(" ")));
    }
    let echo = (!echoes.every.is_zero()).then(|| {
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (sent, echoed) = (count(&echoes.sent), count(&echoes.echoed));
        let (lost, in_flight) = (count(&echoes.lost), count(&echoes.in_flight_at_close));
        let examples = std::mem::take(&mut *lock(&echoes.lost_examples));
        lines.push(format!(
            "echo: sent {sent} (one per sending connection every {:.1} s, one connection \
             in {}), echoed {echoed}, \
             lost {lost} (sent at least {:.1} s before the connection ended), \
             in flight at the close {in_flight}{}",
            echoes.every.as_secs_f64(),
            echoes.one_in,
            echoes.grace.as_secs_f64(),
            if examples.is_empty() {
                String::new()
            } else {
                format!("; lost: {}", examples.join(", "))
            }
        ));
        json!({
            "every_seconds": echoes.every.as_secs_f64(),
            "one_in": echoes.one_in,
            "grace_seconds": echoes.grace.as_secs_f64(),
            "sent": sent,
            "echoed": echoed,
            "lost": lost,
            "in_flight_at_close": in_flight,
            // Messages left unsettled by a connection whose task had to be
            // stopped: 0 unless the generator itself fell behind.
            "unsettled": sent.saturating_sub(echoed + lost + in_flight),
            "lost_examples": examples,
        })
    });
    let mut json = json!({
        "mode": "idle",
        "url": args.connect.url,
        "connections": args.connections,
        "opened": opened,
        "failed": failed,
        "failures": failures,
        "connect_seconds": round1(elapsed.as_secs_f64()),
        "until_closed": args.until_closed,
        "held_seconds": round1(held_for.as_secs_f64()),
        "still_open": still_open,
        "closed": closed,
        "closed_while_opening": closed_while_opening,
        "pings": pings,
        "close_codes": codes,
        "first_close_after_seconds": first_close_after.map(round1),
        // Wall-clock times, so that a script can line closes up with the
        // signal it sent.
        "first_close_unix_seconds": first.map(unix_seconds),
        "last_close_unix_seconds": last.map(unix_seconds),
        "close_span_seconds": round1(timeline.span_seconds),
        "peak_closes_per_second": timeline.peak(),
        "peak_closes_per_second_over_5s": round1(timeline.peak_over(5)),
        "mean_closes_per_second": round1(timeline.mean()),
        "closes_per_second": timeline.per_second,
    });
    if let Some(echo) = echo {
        json["echo"] = echo;
    }
    Ok(Report {
        lines,
        json,
        problem: (opened == 0).then(|| format!("no connection opened to {}", args.connect.url)),
    })
}

/// Reads one connection until the server closes it or the run stops, and
/// sends its echo messages when they are due (`--echo-every`). Reading is
/// what answers the server's pings: tungstenite queues each pong and sends
/// it on the next read.
async fn hold_connection(
    mut ws: Ws,
    mut stop: watch::Receiver<bool>,
    held: Arc<Held>,
    mut track: EchoTrack,
) {
    let (open, closes, echoes) = (&held.open, &held.closes, &held.echoes);
    let mut closed_by_server = false;
    // Polled only while the connection sends, so that a connection that only
    // reads holds no timer.
    let next_send = tokio::time::sleep_until(track.next_send.into());
    tokio::pin!(next_send);
    loop {
        tokio::select! {
            item = ws.next() => match item {
                Some(Ok(Message::Close(frame))) => {
                    track.ended(Instant::now(), "close", echoes);
                    closes.record(report::close_code(frame.as_ref()));
                    closed_by_server = true;
                    open.fetch_sub(1, Ordering::Relaxed);
                    // Keep reading: tungstenite answers the close, and the
                    // stream ends when the server closes the socket.
                }
                Some(Ok(Message::Ping(_))) => {
                    held.pings.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(message)) => track.received(&message, echoes),
                Some(Err(e)) => {
                    if !closed_by_server {
                        track.ended(Instant::now(), "the connection dropped", echoes);
                        closes.record(format!("no close frame: {}", short_error(&e)));
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
                None => {
                    if !closed_by_server {
                        track.ended(Instant::now(), "the socket closed", echoes);
                        closes.record("no close frame: socket closed".to_owned());
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
            () = &mut next_send, if track.sending && !closed_by_server => {
                let message = track.message(Instant::now(), echoes);
                let mut queued = false;
                let sent = tokio::time::timeout(SEND_TIMEOUT, async {
                    ws.feed(message).await?;
                    queued = true;
                    ws.flush().await
                })
                .await;
                if !queued {
                    // Refused, or stuck behind a server that does not read:
                    // it never left.
                    track.send_failed(echoes);
                } else if let Ok(Err(_)) = sent {
                    // Queued, but the connection broke: its end settles the
                    // message, and the read sees why. One still flushing
                    // when the time is up leaves with the next write.
                    track.sending = false;
                }
                next_send.as_mut().reset(track.next_send.into());
            }
            _ = stop.changed() => break,
        }
    }
    if !closed_by_server {
        // Echoes may still come before the server answers the close.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while let Some(item) = ws.next().await {
                match item {
                    Ok(Message::Close(_)) => track.ended(Instant::now(), "close", echoes),
                    Ok(message) => track.received(&message, echoes),
                    Err(_) => {}
                }
            }
        })
        .await;
        track.ended(Instant::now(), "the connection ended", echoes);
    }
}

/// `at` as seconds since the Unix epoch, to the millisecond.
fn unix_seconds(at: Instant) -> f64 {
    let ago = Instant::now().saturating_duration_since(at);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.saturating_sub(ago).as_secs_f64();
    (seconds * 1000.0).round() / 1000.0
}

/// An error as a reason to count by: without per-connection details.
fn short_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "reset without closing handshake".to_owned()
        }
        Error::Io(io) => io.kind().to_string(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echoes(every_ms: u64, grace_ms: u64) -> Echoes {
        Echoes::new(
            Duration::from_millis(every_ms),
            Duration::from_millis(grace_ms),
            1,
        )
    }

    fn counts(echoes: &Echoes) -> [u64; 4] {
        [
            &echoes.sent,
            &echoes.echoed,
            &echoes.lost,
            &echoes.in_flight_at_close,
        ]
        .map(|n| n.load(Ordering::Relaxed))
    }

    #[test]
    fn a_connection_that_does_not_echo_sends_nothing_and_allocates_nothing() {
        let start = Instant::now();
        let track = EchoTrack::new(3, &echoes(0, 500), start);
        assert!(!track.sending);
        assert_eq!(track.outstanding.capacity(), 0);
    }

    #[test]
    fn with_a_sample_only_every_nth_connection_sends() {
        let echoes = Echoes::new(Duration::from_secs(30), Duration::ZERO, 10);
        let start = Instant::now();
        let sending: Vec<usize> = (0..35)
            .filter(|&i| EchoTrack::new(i, &echoes, start).sending)
            .collect();
        assert_eq!(sending, [0, 10, 20, 30]);
    }

    #[test]
    fn messages_are_spread_over_the_first_period_then_sent_every_period() {
        let echoes = &echoes(200, 500);
        let start = Instant::now();
        let mut track = EchoTrack::new(7, echoes, start);
        assert!(track.sending);
        assert!(track.next_send >= start && track.next_send < start + echoes.every);
        let due = track.next_send;
        assert_eq!(track.message(due, echoes), Message::text("7:0"));
        assert_eq!(track.next_send, due + echoes.every);
        // Late by more than a period: the next one is a period from now.
        let late = due + Duration::from_secs(1);
        assert_eq!(track.message(late, echoes), Message::text("7:1"));
        assert_eq!(track.next_send, late + echoes.every);
        assert_eq!(counts(echoes), [2, 0, 0, 0]);
    }

    #[test]
    fn echoes_answer_messages_in_order_and_the_end_settles_the_rest() {
        let echoes = &echoes(100, 500);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut track = EchoTrack::new(1, echoes, t0);
        let sent: Vec<Message> = [0, 100, 900, 1200]
            .map(|at| track.message(t0 + ms(at), echoes))
            .into();
        track.received(&sent[0], echoes);
        // Not ours, or already answered: ignored.
        track.received(&Message::text("2:1"), echoes);
        track.received(&sent[0], echoes);
        track.received(&Message::binary(b"1:1".to_vec()), echoes);
        assert_eq!(counts(echoes), [4, 1, 0, 0]);
        // The connection ends 1.3 s in: seq 1 (1.2 s before) and seq 2
        // (0.4 s before) and seq 3 (0.1 s before) are still outstanding.
        track.ended(t0 + ms(1300), "close", echoes);
        assert_eq!(counts(echoes), [4, 1, 1, 2]);
        assert_eq!(
            *lock(&echoes.lost_examples),
            ["conn 1 seq 1 sent 1.2 s before close"]
        );
        assert!(track.outstanding.is_empty());
        track.ended(t0 + ms(5000), "close", echoes);
        assert_eq!(counts(echoes), [4, 1, 1, 2]);
    }

    #[test]
    fn a_later_echo_shows_the_earlier_messages_lost() {
        let echoes = &echoes(100, 500);
        let t0 = Instant::now();
        let mut track = EchoTrack::new(4, echoes, t0);
        let sent: Vec<Message> = (0..3).map(|_| track.message(t0, echoes)).collect();
        track.received(&sent[2], echoes);
        assert_eq!(counts(echoes), [3, 1, 2, 0]);
        assert_eq!(
            *lock(&echoes.lost_examples),
            [
                "conn 4 seq 0 never echoed (seq 2 was)",
                "conn 4 seq 1 never echoed (seq 2 was)"
            ]
        );
        // A late echo of a lost message counts no more.
        track.received(&sent[0], echoes);
        assert_eq!(counts(echoes), [3, 1, 2, 0]);
    }

    #[test]
    fn a_refused_send_is_not_counted_and_stops_sending() {
        let echoes = &echoes(100, 500);
        let t0 = Instant::now();
        let mut track = EchoTrack::new(0, echoes, t0);
        track.message(t0, echoes);
        track.message(t0, echoes);
        track.send_failed(echoes);
        assert!(!track.sending);
        assert_eq!(counts(echoes), [1, 0, 0, 0]);
        track.received(&Message::text("0:0"), echoes);
        assert_eq!(counts(echoes), [1, 1, 0, 0]);
    }

    #[test]
    fn only_a_few_lost_messages_are_named() {
        let echoes = &echoes(100, 0);
        let t0 = Instant::now();
        let mut track = EchoTrack::new(0, echoes, t0);
        for _ in 0..20 {
            track.message(t0, echoes);
        }
        track.ended(t0 + Duration::from_secs(1), "the socket closed", echoes);
        assert_eq!(counts(echoes), [20, 0, 20, 0]);
        let examples = lock(&echoes.lost_examples);
        assert_eq!(examples.len(), LOST_EXAMPLES);
        assert_eq!(
            examples[0],
            "conn 0 seq 0 sent 1.0 s before the socket closed"
        );
    }

    #[test]
    fn closes_are_counted_per_second_from_the_first() {
        let ms = Duration::from_millis;
        let timeline = CloseTimeline::from_offsets(&[
            ms(0),
            ms(400),
            ms(999),
            ms(1000),
            ms(2500),
            ms(2600),
            ms(2700),
            ms(2999),
        ]);
        assert_eq!(timeline.per_second, [3, 1, 4]);
        assert_eq!(timeline.peak(), 4);
        assert!((timeline.span_seconds - 2.999).abs() < 1e-9);
        assert!((timeline.mean() - 8.0 / 2.999).abs() < 1e-9);
    }

    #[test]
    fn a_peak_over_several_seconds_smooths_late_closes() {
        let timeline = CloseTimeline {
            per_second: vec![450, 320, 580, 450, 450, 450, 100],
            span_seconds: 6.5,
        };
        assert_eq!(timeline.peak(), 580);
        assert_eq!(timeline.peak_over(1), 580.0);
        assert_eq!(timeline.peak_over(2), 515.0);
        assert_eq!(timeline.peak_over(5), 450.0);
        // Fewer seconds than the window: the mean of them all.
        let short = CloseTimeline {
            per_second: vec![10, 20],
            span_seconds: 1.5,
        };
        assert_eq!(short.peak_over(5), 15.0);
        assert_eq!(CloseTimeline::default().peak_over(5), 0.0);
    }

    #[test]
    fn no_closes_make_an_empty_timeline() {
        let timeline = CloseTimeline::from_offsets(&[]);
        assert_eq!(timeline, CloseTimeline::default());
        assert_eq!(timeline.peak(), 0);
        assert_eq!(timeline.mean(), 0.0);
    }

    #[test]
    fn closes_within_one_second_average_over_one_second() {
        let timeline = CloseTimeline::from_offsets(&[Duration::ZERO, Duration::from_millis(10)]);
        assert_eq!(timeline.mean(), 2.0);
    }
}
