//! `ringway-load handshakes`: the cost of a new connection. A number of
//! loops, each a client of its own, each open a connection (TCP, TLS for
//! `wss://`, the WebSocket upgrade through the proxy to a backend),
//! optionally check one echo, close it and start over, until the run ends.
//! With `--resume` a client offers the ticket of its own earlier session, as
//! a returning browser does. The result is connections opened
//! per second, how many TLS sessions resumed, and the total a script divides
//! a proxy's CPU time by: what a reconnect storm after a drain costs.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::CLOSE_TIMEOUT;
use super::connect::{ConnectArgs, Connected, Connector};
use super::probe::{check_echo, close};
use super::report::{Percentiles, Report, Tally, describe_counts, nanos_histogram, round1};

/// How long a loop waits after a failed attempt, so that a refusing server
/// is not hammered by a busy loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Connections opened, used and closed in loops.
#[derive(Clone, Debug, clap::Args)]
pub struct HandshakesArgs {
    /// Where and how to connect (--resume for TLS session resumption).
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Loops running at once, each a client with one connection at a time
    /// and its own TLS session cache.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Seconds to run; loops start no connection after that.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Send one message of this many bytes on each connection and wait for
    /// its echo before closing (0: close right after the upgrade).
    #[arg(long, default_value_t = 0)]
    pub echo_size: usize,
}

/// What every loop adds to.
#[derive(Debug)]
struct Shared {
    end: Instant,
    next_index: AtomicUsize,
    /// Upgrades that succeeded.
    opened: AtomicU64,
    /// Of those, over a resumed TLS session.
    resumed: AtomicU64,
    /// Connection attempts that failed, by reason.
    failures: Tally,
    /// Opened connections whose echo failed, by reason.
    echo_errors: Tally,
    /// What the TLS handshakes negotiated, by description.
    negotiated: Tally,
    /// Nanoseconds from the TCP connect to the upgrade's answer.
    setup: Mutex<Histogram<u64>>,
    echo: Vec<u8>,
}

/// Runs the loops and reports them.
pub async fn run(args: HandshakesArgs) -> anyhow::Result<Report> {
    let duration = super::seconds("duration", args.duration)?;
    ensure!(!duration.is_zero(), "--duration must be more than 0");
    ensure!(args.concurrency > 0, "--concurrency must be more than 0");
    ensure!(
        args.echo_size <= crate::MAX_MESSAGE_BYTES,
        "--echo-size must be at most {} bytes",
        crate::MAX_MESSAGE_BYTES
    );
    crate::limits::check_connection_budget(args.concurrency)?;
    let clients = (0..args.concurrency)
        .map(|_| Connector::new(&args.connect, super::read_buffer_for(args.echo_size, 1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        end: started + duration,
        next_index: AtomicUsize::new(0),
        opened: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        failures: Tally::default(),
        echo_errors: Tally::default(),
        negotiated: Tally::default(),
        setup: Mutex::new(nanos_histogram()),
        echo: (0..args.echo_size).map(|i| i as u8).collect(),
    });
    let mut loops = JoinSet::new();
    for client in clients {
        loops.spawn(connect_in_a_loop(client, shared.clone()));
    }
    loops.join_all().await;
    let elapsed = started.elapsed();

    let opened = shared.opened.load(Ordering::Relaxed);
    let resumed = shared.resumed.load(Ordering::Relaxed);
    let rate = opened as f64 / elapsed.as_secs_f64();
    let setup = Percentiles::of(
        &shared
            .setup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let failures = shared.failures.counts();
    let echo_errors = shared.echo_errors.counts();
    let negotiated = shared.negotiated.counts();
    let lines = vec![
        format!(
            "handshakes: {} loops to {} for {:.1} s, {}",
            args.concurrency,
            args.connect.url,
            elapsed.as_secs_f64(),
            match (args.echo_size, args.connect.resume) {
                (0, false) => "no echo, no resumption".to_owned(),
                (0, true) => "no echo, resuming TLS sessions".to_owned(),
                (n, false) => format!("one echo of {n} B each, no resumption"),
                (n, true) => format!("one echo of {n} B each, resuming TLS sessions"),
            }
        ),
        format!(
            "opened: {opened} ({rate:.0}/s), {resumed} of them resumed a TLS session; {} failed ({})",
            shared.failures.total(),
            describe_counts(&failures)
        ),
        format!("connection setup (TCP, TLS, upgrade): {}", setup.human()),
        format!(
            "echo errors: {} ({})",
            shared.echo_errors.total(),
            describe_counts(&echo_errors)
        ),
        format!("negotiated: {}", describe_counts(&negotiated)),
    ];
    let json = json!({
        "mode": "handshakes",
        "url": args.connect.url,
        "concurrency": args.concurrency,
        "resume": args.connect.resume,
        "echo_size": args.echo_size,
        "duration_seconds": round1(elapsed.as_secs_f64()),
        "opened": opened,
        "rate": round1(rate),
        "resumed": resumed,
        "failed": shared.failures.total(),
        "failures": failures,
        "echo_errors": shared.echo_errors.total(),
        "echo_error_reasons": echo_errors,
        "negotiated": negotiated,
        "setup": setup.json(),
    });
    let problem = (opened == 0).then(|| {
        format!(
            "no connection opened to {}: {}",
            args.connect.url,
            describe_counts(&failures)
        )
    });
    Ok(Report {
        lines,
        json,
        problem,
    })
}

/// Opens, uses and closes one connection after another until the run ends.
async fn connect_in_a_loop(client: Connector, shared: Arc<Shared>) {
    while Instant::now() < shared.end {
        let index = shared.next_index.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let connected = match client.connect(index).await {
            Ok(connected) => connected,
            Err(reason) => {
                shared.failures.add(reason);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Saturates at the histogram's top rather than failing.
        shared
            .setup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(nanos);
        shared.opened.fetch_add(1, Ordering::Relaxed);
        if let Some(tls) = connected.tls {
            if tls.resumed {
                shared.resumed.fetch_add(1, Ordering::Relaxed);
            }
            shared.negotiated.add(tls.describe());
        }
        use_and_close(connected, &shared).await;
    }
}

/// Checks one echo (with `--echo-size`), then closes the connection with
/// the WebSocket close handshake.
async fn use_and_close(connected: Connected, shared: &Shared) {
    let mut ws = connected.ws;
    if !shared.echo.is_empty()
        && let Err(reason) = check_echo(&mut ws, Message::binary(shared.echo.clone())).await
    {
        shared.echo_errors.add(reason);
    }
    close(&mut ws, CLOSE_TIMEOUT).await;
}
