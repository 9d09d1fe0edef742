//! `ringway-load latency`: open-loop round trips. A fixed total rate is
//! spread evenly over the connections (see [`super::pacer`]), each sending
//! on its own schedule whatever the echoes do, so a slow proxy shows up as
//! latency instead of as a lower rate. Each message carries its send time;
//! the echo's arrival gives the round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::connect::{ConnectArgs, Ws, open_for_run};
use super::pacer::Schedule;
use super::report::{self, Percentiles, Report, Tally, describe_counts, round1};
use super::{CLOSE_TIMEOUT, DRAIN_TIMEOUT};
use crate::limits::check_connection_budget;
use crate::stamp::{self, Clock};

/// Time between the last connection opening and the first message, so
/// that every sender starts from the same instant.
const START_DELAY: Duration = Duration::from_millis(100);

/// Round-trip latency at a fixed rate.
#[derive(Clone, Debug, clap::Args)]
pub struct LatencyArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,

    /// Messages per second in total, spread evenly over the connections.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,

    /// Message size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Seconds of measurement, after the warmup.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,

    /// Seconds of sending at the full rate before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
}

/// What every connection's sender and receiver add to.
#[derive(Debug)]
struct Shared {
    clock: Clock,
    /// Messages stamped at or after this are measured.
    measure_from: u64,
    round_trips: Mutex<Histogram<u64>>,
    /// How late each measured message left, against its schedule.
    send_lag: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    received: AtomicU64,
    sent_total: AtomicU64,
    received_total: AtomicU64,
    errors: Tally,
    server_closes: Tally,
    closing: std::sync::atomic::AtomicBool,
}

/// Runs the latency measurement and reports it.
pub async fn run(args: LatencyArgs) -> anyhow::Result<Report> {
    check_connection_budget(args.connections)?;
    let size = super::message_size(args.size)?;
    let warmup = super::seconds("warmup", args.warmup)?;
    let duration = super::seconds("duration", args.duration)?;
    ensure!(!duration.is_zero(), "--duration must be more than 0");
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be more than 0"
    );
    ensure!(args.connections > 0, "--connections must be more than 0");

    let established = open_for_run(
        &args.connect,
        args.connections,
        super::read_buffer_for(size, 2),
    )
    .await?;
    let opened = established.connections.len();

    let clock = Clock::new();
    let start = Instant::now() + START_DELAY;
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let shared = Arc::new(Shared {
        clock,
        measure_from: clock.at(measure_from),
        round_trips: Mutex::new(report::nanos_histogram()),
        send_lag: Mutex::new(report::nanos_histogram()),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        received_total: AtomicU64::new(0),
        errors: Tally::default(),
        server_closes: Tally::default(),
        closing: false.into(),
    });

    let schedule = Schedule::new(start, end, args.rate, opened);
    let mut due_senders = Vec::with_capacity(opened);
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for connected in established.connections {
        let (sink, stream) = connected.ws.split();
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        due_senders.push(due_tx);
        senders.spawn(send_when_due(sink, due_rx, shared.clone(), size));
        receivers.spawn(receive_echoes(stream, shared.clone()));
    }
    // The schedule's thread ends at `end` and drops the channels, which
    // ends the senders.
    let pacer = std::thread::Builder::new()
        .name("pacer".to_owned())
        .spawn(move || schedule.run(&due_senders))?;
    let sinks = senders.join_all().await;
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;

    // Wait for the echoes still in flight, then close every connection.
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while shared.received_total.load(Ordering::Relaxed) < shared.sent_total.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.closing.store(true, Ordering::Relaxed);
    close_all(sinks, &mut receivers).await;

    let round_trips = Percentiles::of(&lock(&shared.round_trips));
    let send_lag = Percentiles::of(&lock(&shared.send_lag));
    let sent = shared.sent.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(received);
    let errors = shared.errors.counts();
    let server_closes = shared.server_closes.counts();
    let failures = established.failures.counts();
    let send_rate = sent as f64 / duration.as_secs_f64();

    let lines = vec![
        format!(
            "latency: {opened} of {} connections open ({} failed: {}) to {} in {:.1} s",
            args.connections,
            established.failures.total(),
            describe_counts(&failures),
            args.connect.url,
            established.elapsed.as_secs_f64()
        ),
        format!(
            "load: {} msg/s of {size} B ({:.1} msg/s per connection), {:.1} s warmup + {:.1} s measured",
            args.rate,
            args.rate / opened as f64,
            warmup.as_secs_f64(),
            duration.as_secs_f64()
        ),
        format!("round trip: {}", round_trips.human()),
        format!(
            "messages: sent {sent} ({send_rate:.0}/s), received {received}, lost {lost}, errors {} ({})",
            shared.errors.total(),
            describe_counts(&errors)
        ),
        format!(
            "send lag (how late the generator sent; large means it could not keep the rate): \
             p99 {:.1} µs, max {:.1} µs",
            send_lag.p99_us, send_lag.max_us
        ),
        format!("closed by the server: {}", describe_counts(&server_closes)),
    ];
    let json = json!({
        "mode": "latency",
        "url": args.connect.url,
        "connections": args.connections,
        "opened": opened,
        "failed": established.failures.total(),
        "failures": failures,
        "connect_seconds": round1(established.elapsed.as_secs_f64()),
        "rate": args.rate,
        "size": size,
        "warmup_seconds": warmup.as_secs_f64(),
        "duration_seconds": duration.as_secs_f64(),
        "sent": sent,
        "received": received,
        "lost": lost,
        "send_rate": round1(send_rate),
        "errors": shared.errors.total(),
        "error_reasons": errors,
        "server_closes": server_closes,
        "round_trip": round_trips.json(),
        "send_lag": send_lag.json(),
    });
    Ok(Report {
        lines,
        json,
        problem: None,
    })
}

/// Sends one stamped message for every due time the schedule hands over,
/// until the schedule ends. A sender that falls behind catches up at once:
/// the schedule, not the echoes, sets the pace.
async fn send_when_due(
    mut sink: SplitSink<Ws, Message>,
    mut due_times: UnboundedReceiver<Instant>,
    shared: Arc<Shared>,
    size: usize,
) -> SplitSink<Ws, Message> {
    while let Some(due) = due_times.recv().await {
        let now = shared.clock.now();
        let message = Message::binary(stamp::message(size, now));
        if let Err(e) = sink.send(message).await {
            shared.errors.add(format!("send: {e}"));
            break;
        }
        shared.sent_total.fetch_add(1, Ordering::Relaxed);
        if now >= shared.measure_from {
            shared.sent.fetch_add(1, Ordering::Relaxed);
            let lag = now.saturating_sub(shared.clock.at(due)).max(1);
            let _ = lock(&shared.send_lag).record(lag);
        }
    }
    sink
}

/// Reads echoes and records the round trip of every measured one.
async fn receive_echoes(mut stream: SplitStream<Ws>, shared: Arc<Shared>) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Binary(data)) => {
                let Some(sent_at) = stamp::read(&data) else {
                    shared.errors.add("echo shorter than its stamp");
                    continue;
                };
                shared.received_total.fetch_add(1, Ordering::Relaxed);
                if sent_at >= shared.measure_from {
                    let round_trip = shared.clock.now().saturating_sub(sent_at).max(1);
                    let _ = lock(&shared.round_trips).record(round_trip);
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Message::Text(_)) => shared.errors.add("echo came back as text"),
            Ok(Message::Close(frame)) => {
                if !shared.closing.load(Ordering::Relaxed) {
                    shared.server_closes.add(report::close_code(frame.as_ref()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.errors.add(format!("receive: {e}"));
                break;
            }
        }
    }
}

/// Starts the close handshake on every connection and waits (a bounded
/// time) for the receivers to see it finish.
pub(crate) async fn close_all(sinks: Vec<SplitSink<Ws, Message>>, receivers: &mut JoinSet<()>) {
    let mut closing = JoinSet::new();
    for mut sink in sinks {
        closing.spawn(async move {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(None))).await;
            sink
        });
    }
    // Keep the sinks until the receivers finish: dropping one half early
    // does not close the socket, and the receivers need the other half.
    let sinks = closing.join_all().await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while receivers.join_next().await.is_some() {}
    })
    .await;
    receivers.abort_all();
    drop(sinks);
}

/// Locks a histogram; a poisoned lock still holds good samples.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
