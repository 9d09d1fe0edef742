//! The load generator behind `ringway-load`: each subcommand opens its
//! connections through a [`connect::Connector`], runs for a bounded time,
//! stops by itself and returns a [`Report`] that prints as human lines or as
//! one JSON object.
//!
//! - [`latency`]: open-loop, a fixed total rate spread over the connections;
//!   round-trip percentiles;
//! - [`throughput`]: closed-loop, a window of messages in flight per
//!   connection; messages echoed per second;
//! - [`idle`]: many connections that only read (pongs, closes), and how the
//!   server closes them: close codes and closes per second;
//! - [`probe`]: a few keys, twice each: which backend each reached, and
//!   whether routing was sticky;
//! - [`hostile`]: attacks (slowloris, huge frames, slow consumers, bad
//!   requests and frames, churn) while a legitimate client is timed; the
//!   gateway's memory and descriptors before, at the peak and after;
//! - [`steady`]: one client at a steady pace that prints each round trip
//!   as it comes (the hostile probe's legitimate client);
//! - [`handshakes`]: connections opened and closed in loops, as fast as they
//!   go: handshakes per second, and how many TLS sessions resumed.
//!
//! Every subcommand speaks `wss://` as well ([`tls`]).

pub mod connect;
pub mod handshakes;
pub mod hostile;
pub mod idle;
pub mod latency;
pub mod pacer;
pub mod probe;
pub mod report;
pub mod steady;
pub mod throughput;
pub mod tls;

use std::time::Duration;

use anyhow::ensure;

pub use report::Report;

/// How long to wait for the echoes still in flight once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection may take to finish its close handshake at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

use crate::stamp::STAMP_LEN;

/// Checks a duration given in seconds on the command line and turns it into
/// a [`Duration`]; `what` names the flag in the error.
pub fn seconds(what: &str, value: f64) -> anyhow::Result<Duration> {
    ensure!(
        (0.0..86_400.0).contains(&value),
        "--{what} must be between 0 and 86400 seconds, not {value}"
    );
    Ok(Duration::from_secs_f64(value))
}

/// A read buffer for messages of `size` bytes, `in_flight` of which may
/// arrive together: tungstenite zero-fills the whole buffer before every
/// read, so a buffer much larger than what arrives costs CPU for nothing,
/// and the generator shares its CPU with the backends.
pub fn read_buffer_for(size: usize, in_flight: usize) -> usize {
    // 14 bytes: the largest frame header a server sends.
    size.saturating_add(14)
        .saturating_mul(in_flight)
        .clamp(4096, 64 * 1024)
}

/// Checks a message size: it must hold the send timestamp.
pub fn message_size(size: usize) -> anyhow::Result<usize> {
    ensure!(
        size >= STAMP_LEN,
        "--size must be at least {STAMP_LEN} bytes (the send timestamp), not {size}"
    );
    ensure!(
        size <= crate::MAX_MESSAGE_BYTES,
        "--size must be at most {} bytes",
        crate::MAX_MESSAGE_BYTES
    );
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_fit_what_arrives_at_once_within_bounds() {
        assert_eq!(read_buffer_for(64, 2), 4096);
        assert_eq!(read_buffer_for(4096, 16), 64 * 1024);
        assert_eq!(read_buffer_for(1 << 20, 2), 64 * 1024);
        assert_eq!(read_buffer_for(usize::MAX, 2), 64 * 1024);
    }

    #[test]
    fn sizes_must_hold_the_stamp() {
        assert!(message_size(7).is_err());
        assert_eq!(message_size(8).unwrap(), 8);
        assert!(message_size(crate::MAX_MESSAGE_BYTES + 1).is_err());
    }

    #[test]
    fn durations_are_bounded_seconds() {
        assert_eq!(seconds("hold", 1.5).unwrap(), Duration::from_millis(1500));
        assert!(seconds("hold", -1.0).is_err());
        assert!(seconds("hold", f64::NAN).is_err());
    }
}
