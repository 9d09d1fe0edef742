//! The send timestamp that every load message carries in its first
//! [`STAMP_LEN`] bytes, so that the generator measures a round trip from the
//! echoed message alone, without a table of messages in flight.

use std::time::Instant;

/// Bytes of the timestamp at the start of a message; the smallest message
/// the load generator can send.
pub const STAMP_LEN: usize = 8;

/// A process-local clock: nanoseconds since the moment it was created.
/// Only the process that stamped a message can read its timestamp back,
/// which is all an echo round trip needs.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since this clock's zero.
    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// Nanoseconds from this clock's zero to `instant` (0 if before it).
    pub fn at(&self, instant: Instant) -> u64 {
        let nanos = instant.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A message of `size` bytes (at least [`STAMP_LEN`]) starting with `nanos`,
/// little-endian; the rest is filler.
pub fn message(size: usize, nanos: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; size.max(STAMP_LEN)];
    payload[..STAMP_LEN].copy_from_slice(&nanos.to_le_bytes());
    payload
}

/// The timestamp at the start of an echoed `payload`, or `None` when it is
/// too short to carry one.
pub fn read(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_from_a_message_of_any_size() {
        for size in [STAMP_LEN, 64, 4096] {
            let payload = message(size, 0x0123_4567_89ab_cdef);
            assert_eq!(payload.len(), size);
            assert_eq!(read(&payload), Some(0x0123_4567_89ab_cdef));
        }
    }

    #[test]
    fn a_message_is_never_shorter_than_its_stamp() {
        assert_eq!(message(3, 7).len(), STAMP_LEN);
        assert_eq!(read(&message(0, 7)), Some(7));
    }

    #[test]
    fn a_payload_too_short_for_a_stamp_has_none() {
        assert_eq!(read(b"short"), None);
        assert_eq!(read(b""), None);
    }

    #[test]
    fn the_clock_moves_forward_from_zero() {
        let clock = Clock::new();
        let first = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.now() >= first + 1_000_000);
        assert_eq!(clock.at(clock.epoch), 0);
    }
}
