//! `ringway-load steady`: one client that sends a stamped message at a
//! steady pace and prints each echo's round trip as it comes
//! (`rtt <nanoseconds>`, one line each), until its standard input closes;
//! then it waits for the echoes still in flight and reports what it sent,
//! got back and lost.
//!
//! It is the legitimate client of `ringway-load hostile`, run as a process
//! of its own so that it can be scheduled apart from the attackers (the
//! probe starts it under `chrt` when asked): on a machine whose cores are
//! shared, a client in the attackers' runtime measures the attackers' CPU,
//! not the gateway.

use std::{io::Write, time::Duration};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use super::{DRAIN_TIMEOUT, report::Report};
use crate::stamp;

/// Run one steady client.
#[derive(Clone, Debug, clap::Args)]
pub struct SteadyArgs {
    /// An echo URL, e.g. `ws://127.0.0.1:8080/echo?room=steady`.
    #[arg(long)]
    pub url: String,

    /// Milliseconds between two messages.
    #[arg(long, default_value_t = 10)]
    pub every_ms: u64,

    /// Bytes per message (at least the 8-byte stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// What a steady client sent and lost over its whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteadyEnd {
    /// Messages sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Messages whose echo never came.
    pub lost: u64,
    /// Send or receive errors (each ends the run).
    pub errors: u64,
}

impl SteadyEnd {
    /// The end as the report's JSON object carries it.
    pub fn json(&self) -> serde_json::Value {
        json!({"sent": self.sent, "received": self.received, "lost": self.lost, "errors": self.errors})
    }

    /// The end as [`SteadyEnd::json`] writes it.
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        let field = |name: &str| value.get(name)?.as_u64();
        Some(Self {
            sent: field("sent")?,
            received: field("received")?,
            lost: field("lost")?,
            errors: field("errors")?,
        })
    }
}

impl std::fmt::Display for SteadyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} echoed, {} lost, {} errors",
            self.sent, self.received, self.lost, self.errors
        )
    }
}

/// The prefix of a round-trip line on standard output.
pub const RTT_LINE: &str = "rtt ";

/// Runs until standard input closes.
pub async fn run(args: SteadyArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=60_000).contains(&args.every_ms),
        "--every-ms must be between 1 and 60000, not {}",
        args.every_ms
    );
    let size = super::message_size(args.size)?;
    // Without TCP_NODELAY, a pong and the next message meet Nagle's
    // algorithm and the peer's delayed ACK: a 40 ms stall at every
    // heartbeat that would be charged to the gateway.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&args.url, None, true)
        .await
        .with_context(|| format!("could not connect to {}", args.url))?;
    let clock = stamp::Clock::new();
    let (mut tx, mut rx) = ws.split();
    let mut end = SteadyEnd::default();
    let mut tick = tokio::time::interval(Duration::from_millis(args.every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let mut stopping = false;
    let flight = tokio::time::sleep(Duration::MAX);
    tokio::pin!(flight);
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            read = stdin.read(&mut sink), if !stopping => {
                if matches!(read, Ok(0) | Err(_)) {
                    stopping = true;
                    flight.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
            }
            _ = tick.tick(), if !stopping => {
                let m = stamp::message(size, clock.now());
                if tx.send(Message::Binary(m.into())).await.is_err() {
                    end.errors += 1;
                    break;
                }
                end.sent += 1;
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(sent) = stamp::read(&b) {
                        let took = clock.now().saturating_sub(sent).max(1);
                        // A reader that went away only loses the figures.
                        let _ = writeln!(out, "{RTT_LINE}{took}");
                        end.received += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    end.errors += 1;
                    break;
                }
            },
            () = &mut flight => break,
        }
        if stopping && end.received >= end.sent {
            break;
        }
    }
    end.lost = end.sent - end.received.min(end.sent);
    let _ = tx.send(Message::Close(None)).await;
    Ok(Report {
        lines: vec![format!("steady client: {end}")],
        json: end.json(),
        problem: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_reads_back_from_its_json() {
        let end = SteadyEnd {
            sent: 5,
            received: 4,
            lost: 1,
            errors: 0,
        };
        let value = json!({"sent": 5, "received": 4, "lost": 1, "errors": 0});
        assert_eq!(end.json(), value);
        assert_eq!(SteadyEnd::from_json(&value), Some(end));
        assert_eq!(SteadyEnd::from_json(&json!({"sent": 5})), None);
    }
}
