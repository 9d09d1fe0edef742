//! `ringway-load throughput`: closed-loop saturation. Every connection keeps
//! a window of messages in flight and sends the next one as soon as an echo
//! comes back, so the run goes as fast as the slowest stage lets it; the
//! result is messages echoed per second, and the total a script divides a
//! proxy's CPU time by.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::DRAIN_TIMEOUT;
use super::connect::{ConnectArgs, Ws, open_for_run};
use super::latency::close_all;
use super::report::{self, Report, Tally, describe_counts, round1};
use crate::limits::check_connection_budget;
use crate::stamp::{self, Clock};

/// Messages echoed per second with a fixed window in flight.
#[derive(Clone, Debug, clap::Args)]
pub struct ThroughputArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Connections to open.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// Messages each connection keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub window: usize,

    /// Message size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Seconds of measurement, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of sending before measuring.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
}

/// What every connection's sender and receiver add to.
#[derive(Debug)]
struct Shared {
    measure_from: Instant,
    end: Instant,
    /// Echoes received in the measured window.
    echoed: AtomicU64,
    /// Messages sent and echoes received over the whole run, warmup and
    /// drain included: what a proxy's CPU time over the run is divided by.
    sent_total: AtomicU64,
    echoed_total: AtomicU64,
    errors: Tally,
    server_closes: Tally,
    closing: AtomicBool,
}

/// Runs the throughput measurement and reports it.
pub async fn run(args: ThroughputArgs) -> anyhow::Result<Report> {
    check_connection_budget(args.connections)?;
    let size = super::message_size(args.size)?;
    let warmup = super::seconds("warmup", args.warmup)?;
    let duration = super::seconds("duration", args.duration)?;
    ensure!(!duration.is_zero(), "--duration must be more than 0");
    ensure!(args.window > 0, "--window must be more than 0");
    ensure!(args.connections > 0, "--connections must be more than 0");

    let established = open_for_run(
        &args.connect,
        args.connections,
        super::read_buffer_for(size, args.window),
    )
    .await?;
    let opened = established.connections.len();

    let started = Instant::now();
    let measure_from = started + warmup;
    let shared = Arc::new(Shared {
        measure_from,
        end: measure_from + duration,
        echoed: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        echoed_total: AtomicU64::new(0),
        errors: Tally::default(),
        server_closes: Tally::default(),
        closing: false.into(),
    });
    let clock = Clock::new();
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for connected in established.connections {
        let (sink, stream) = connected.ws.split();
        // Credits: one per message that may be sent; each echo returns one.
        let credits = Arc::new(Semaphore::new(args.window));
        senders.spawn(send_windowed(
            sink,
            credits.clone(),
            shared.clone(),
            clock,
            size,
        ));
        receivers.spawn(receive_echoes(stream, credits, shared.clone()));
    }
    let sinks = senders.join_all().await;
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while shared.echoed_total.load(Ordering::Relaxed) < shared.sent_total.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.closing.store(true, Ordering::Relaxed);
    close_all(sinks, &mut receivers).await;

    let echoed = shared.echoed.load(Ordering::Relaxed);
    let echoed_total = shared.echoed_total.load(Ordering::Relaxed);
    let sent_total = shared.sent_total.load(Ordering::Relaxed);
    let rate = echoed as f64 / duration.as_secs_f64();
    let failures = established.failures.counts();
    let errors = shared.errors.counts();
    let server_closes = shared.server_closes.counts();
    let lines = vec![
        format!(
            "throughput: {opened} of {} connections open ({} failed: {}) to {}, window {} of {size} B",
            args.connections,
            established.failures.total(),
            describe_counts(&failures),
            args.connect.url,
            args.window
        ),
        format!(
            "echoed: {rate:.0} msg/s ({:.1} MB/s each way), {echoed} in {:.1} s measured",
            rate * size as f64 / 1e6,
            duration.as_secs_f64()
        ),
        format!(
            "whole run: sent {sent_total}, echoed {echoed_total}, errors {} ({})",
            shared.errors.total(),
            describe_counts(&errors)
        ),
        format!("closed by the server: {}", describe_counts(&server_closes)),
    ];
    let json = json!({
        "mode": "throughput",
        "url": args.connect.url,
        "connections": args.connections,
        "opened": opened,
        "failed": established.failures.total(),
        "failures": failures,
        "window": args.window,
        "size": size,
        "warmup_seconds": warmup.as_secs_f64(),
        "duration_seconds": duration.as_secs_f64(),
        "rate": round1(rate),
        "echoed": echoed,
        "sent_total": sent_total,
        "echoed_total": echoed_total,
        "errors": shared.errors.total(),
        "error_reasons": errors,
        "server_closes": server_closes,
    });
    Ok(Report {
        lines,
        json,
        problem: None,
    })
}

/// Sends a message for every credit until the run ends, flushing only when
/// no credit is left: a window's worth leaves in a few writes.
async fn send_windowed(
    mut sink: SplitSink<Ws, Message>,
    credits: Arc<Semaphore>,
    shared: Arc<Shared>,
    clock: Clock,
    size: usize,
) -> SplitSink<Ws, Message> {
    loop {
        let credit = match tokio::time::timeout_at(shared.end.into(), credits.acquire()).await {
            Ok(Ok(credit)) => credit,
            // The run is over (or the receiver gave up and closed the credits).
            Ok(Err(_)) | Err(_) => break,
        };
        credit.forget();
        let message = Message::binary(stamp::message(size, clock.now()));
        if let Err(e) = sink.feed(message).await {
            shared.errors.add(format!("send: {e}"));
            break;
        }
        shared.sent_total.fetch_add(1, Ordering::Relaxed);
        if credits.available_permits() == 0
            && let Err(e) = sink.flush().await
        {
            shared.errors.add(format!("send: {e}"));
            break;
        }
    }
    let _ = sink.flush().await;
    sink
}

/// Counts echoes and hands a credit back for each.
async fn receive_echoes(mut stream: SplitStream<Ws>, credits: Arc<Semaphore>, shared: Arc<Shared>) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Binary(_) | Message::Text(_)) => {
                shared.echoed_total.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now >= shared.measure_from && now < shared.end {
                    shared.echoed.fetch_add(1, Ordering::Relaxed);
                }
                credits.add_permits(1);
            }
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
    // Wake a sender waiting for a credit that will never come.
    credits.close();
}
