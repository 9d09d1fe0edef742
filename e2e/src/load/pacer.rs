//! The open-loop schedule of `latency`: one send every `1 / rate` seconds
//! for the whole run, dealt to the connections in a shuffled round-robin
//! order, so that each connection sends at `rate / connections` with its own
//! phase and the run as a whole sends evenly.
//!
//! Tokio's timers fire on millisecond ticks, which would turn 20,000
//! messages per second into bursts of 20 every millisecond; the messages at
//! the back of each burst would measure the burst, not the proxy. So the
//! schedule runs on its own thread, which sleeps with the OS's microsecond
//! timers and hands each connection's sender its due time over a channel.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// The shortest sleep of the schedule's thread: sends due within it go
/// together (4 at a time at 20,000/s), 5 times finer than tokio's timers.
pub const WAKE_EVERY: Duration = Duration::from_micros(200);

/// When each send of a run is due, and which connection makes it.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    end: Instant,
    rate: f64,
    /// Connection numbers in the order they take turns.
    order: Vec<usize>,
}

impl Schedule {
    /// `rate` sends per second over `connections` connections, from `start`
    /// until `end`, taking turns in a random order.
    pub fn new(start: Instant, end: Instant, rate: f64, connections: usize) -> Self {
        let mut order: Vec<usize> = (0..connections).collect();
        fastrand::shuffle(&mut order);
        Self {
            start,
            end,
            rate,
            order,
        }
    }

    /// When send `k` is due, or `None` once that is past the end.
    pub fn due(&self, k: u64) -> Option<Instant> {
        // From k each time, so that rounding never accumulates.
        let due = self.start + Duration::from_secs_f64(k as f64 / self.rate);
        (due < self.end).then_some(due)
    }

    /// The connection that makes send `k`.
    pub fn connection(&self, k: u64) -> usize {
        self.order[(k % self.order.len() as u64) as usize]
    }

    /// Hands every send's due time to its connection's sender, at that
    /// time, until the end; blocks the calling thread until then. A sender
    /// that has gone away is skipped.
    pub fn run(&self, senders: &[UnboundedSender<Instant>]) {
        let mut k = 0;
        let mut woke = Instant::now();
        while let Some(due) = self.due(k) {
            let now = Instant::now();
            if due > now {
                // Wake no more often than every WAKE_EVERY: each wake costs
                // the generator's CPU (which it shares with the backends)
                // two context switches, and at 20,000/s that would be most
                // of a core.
                let wake_at = due.max(woke + WAKE_EVERY);
                std::thread::sleep(wake_at.saturating_duration_since(now));
                woke = Instant::now();
            }
            let _ = senders[self.connection(k)].send(due);
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_evenly_spaced_and_stop_at_the_end() {
        let start = Instant::now();
        let schedule = Schedule::new(start, start + Duration::from_secs(1), 20_000.0, 1000);
        assert_eq!(schedule.due(0), Some(start));
        assert_eq!(schedule.due(1), Some(start + Duration::from_micros(50)));
        assert_eq!(
            schedule.due(19_999),
            Some(start + Duration::from_micros(999_950))
        );
        assert_eq!(schedule.due(20_000), None);
    }

    #[test]
    fn each_connection_sends_at_its_share_of_the_rate() {
        let start = Instant::now();
        let schedule = Schedule::new(start, start + Duration::from_secs(1), 100.0, 4);
        let mut sends: Vec<Vec<Instant>> = vec![Vec::new(); 4];
        let mut k = 0;
        while let Some(due) = schedule.due(k) {
            sends[schedule.connection(k)].push(due);
            k += 1;
        }
        for times in &sends {
            assert_eq!(times.len(), 25);
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(gap.abs_diff(Duration::from_millis(40)) < Duration::from_micros(1));
            }
        }
    }

    #[test]
    fn the_schedule_hands_each_due_time_to_its_connection() {
        let start = Instant::now();
        let schedule = Schedule::new(start, start + Duration::from_millis(20), 1000.0, 2);
        let (tx0, mut rx0) = tokio::sync::mpsc::unbounded_channel();
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
        schedule.run(&[tx0, tx1]);
        assert!(start.elapsed() >= Duration::from_millis(19));
        let (mut n0, mut n1) = (0, 0);
        while rx0.try_recv().is_ok() {
            n0 += 1;
        }
        while rx1.try_recv().is_ok() {
            n1 += 1;
        }
        assert_eq!((n0, n1), (10, 10));
    }
}
