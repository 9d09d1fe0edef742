//! `ringway-load idle`: many connections that only read. It measures what
//! holding them costs a proxy (the script reads the proxy's memory while
//! they are open) and how the server lets them go: with `--until-closed` it
//! waits for the server to close them all, as a drain does, and reports the
//! close codes and how many closes came in each second, the number a
//! drain's rate cap bounds.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::CLOSE_TIMEOUT;
use super::connect::{ConnectArgs, Connector, Ws, connect_all};
use super::latency::lock;
use super::report::{self, Report, Tally, describe_counts, round1};
use crate::limits::check_connection_budget;

/// Read buffer per connection: idle connections read only pings and closes.
const READ_BUFFER_BYTES: usize = 4096;

/// How often a long wait reports on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

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

    let connector = Arc::new(Connector::new(&args.connect, READ_BUFFER_BYTES)?);
    let established = connect_all(connector, args.connections, args.connect.ramp).await;
    let opened = established.connections.len();
    let failures = established.failures.counts();
    let connected_line = format!(
        "idle: {opened} of {} connections open ({} failed: {}) to {} in {:.1} s",
        args.connections,
        established.failures.total(),
        describe_counts(&failures),
        args.connect.url,
        established.elapsed.as_secs_f64()
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
    let open = Arc::new(AtomicU64::new(opened as u64));
    let closes = Arc::new(Closes::default());
    let (stop, stopped) = watch::channel(false);
    let mut holders = JoinSet::new();
    for connected in established.connections {
        holders.spawn(hold_connection(
            connected.ws,
            stopped.clone(),
            open.clone(),
            closes.clone(),
        ));
    }

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
    let held = held_from.elapsed();
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

    let mut lines = vec![
        connected_line,
        format!(
            "held {:.1} s: {still_open} still open, {closed} closed by the server ({})",
            held.as_secs_f64(),
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
    let json = json!({
        "mode": "idle",
        "url": args.connect.url,
        "connections": args.connections,
        "opened": opened,
        "failed": established.failures.total(),
        "failures": failures,
        "connect_seconds": round1(established.elapsed.as_secs_f64()),
        "until_closed": args.until_closed,
        "held_seconds": round1(held.as_secs_f64()),
        "still_open": still_open,
        "closed": closed,
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
    Ok(Report {
        lines,
        json,
        problem: (opened == 0).then(|| format!("no connection opened to {}", args.connect.url)),
    })
}

/// Reads one connection until the server closes it or the run stops.
/// Reading is what answers the server's pings: tungstenite queues each pong
/// and sends it on the next read.
async fn hold_connection(
    mut ws: Ws,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicU64>,
    closes: Arc<Closes>,
) {
    let mut closed_by_server = false;
    loop {
        tokio::select! {
            item = ws.next() => match item {
                Some(Ok(Message::Close(frame))) => {
                    closes.record(report::close_code(frame.as_ref()));
                    closed_by_server = true;
                    open.fetch_sub(1, Ordering::Relaxed);
                    // Keep reading: tungstenite answers the close, and the
                    // stream ends when the server closes the socket.
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if !closed_by_server {
                        closes.record(format!("no close frame: {}", short_error(&e)));
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
                None => {
                    if !closed_by_server {
                        closes.record("no close frame: socket closed".to_owned());
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    if !closed_by_server {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while ws.next().await.is_some() {}
        })
        .await;
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
