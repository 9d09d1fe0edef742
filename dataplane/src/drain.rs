//! Pacing drains: close a set of connections evenly over a window, never
//! faster than a rate cap, so that a drain does not become a reconnect
//! storm.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::{Instant, sleep_until},
};

use crate::registry::{ConnControl, DrainCause};

/// How many of `total` closes are due `elapsed` into a drain over `window`
/// at no more than `rate` per second: spread evenly over the window, capped
/// by the rate. `ceil(rate * t)` never allows more than `rate` closes in
/// any one-second interval.
pub fn closes_due(total: usize, elapsed: Duration, window: Duration, rate: u32) -> usize {
    // Integer arithmetic: a float's rounding would let one close too many
    // through at exact multiples.
    let ceil_div = |a: u128, b: u128| a.div_ceil(b.max(1));
    let elapsed = elapsed.as_nanos();
    let spread = if elapsed >= window.as_nanos() {
        total
    } else {
        ceil_div(total as u128 * elapsed, window.as_nanos()) as usize
    };
    let capped = ceil_div(u128::from(rate) * elapsed, 1_000_000_000) as usize;
    spread.min(capped).min(total)
}

/// Rounds of a paced drain: which of `total` closes each round releases.
#[derive(Debug)]
pub struct Pacer {
    total: usize,
    window: Duration,
    rate: u32,
    /// The schedule's clock: it follows real time but advances at most one
    /// tick per round, so a round that comes late (a busy thread) delays
    /// the closes instead of releasing the backlog in one burst over the cap.
    schedule: Duration,
    done: usize,
    at_window_end: WindowEnd,
}

/// What a drain does with the closes still due when its window ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowEnd {
    /// Release them all: the pod is stopping and will be killed at the end
    /// of its grace period, so a late close is better than none.
    Flush,
    /// Keep to the rate: the pod stays up (a rebalance, a drain before the
    /// operator removes the pod), and the rate is the disruption budget.
    KeepRate,
}

impl WindowEnd {
    /// What a drain for `cause` does at its window's end.
    pub fn for_cause(cause: DrainCause) -> Self {
        match cause {
            DrainCause::Shutdown => Self::Flush,
            DrainCause::Api | DrainCause::Rebalance => Self::KeepRate,
        }
    }
}

/// Time between rounds.
pub const TICK: Duration = Duration::from_millis(10);

/// When the round after one due at `due` runs, the round having finished
/// at `now`: on a fixed grid of [`TICK`]s, so that a timer that wakes a
/// little late (it always does, by up to a millisecond, more on a busy
/// machine) does not slow the whole drain down by as much each round. A
/// round more than a tick late starts the grid again from `now`: the
/// [`Pacer`] then delays the closes rather than making the time up.
pub fn next_round(due: Instant, now: Instant) -> Instant {
    let next = due + TICK;
    if next + TICK < now { now + TICK } else { next }
}

impl Pacer {
    /// A drain of `total` connections over `window` at most `rate` per second.
    pub fn new(total: usize, window: Duration, rate: u32, at_window_end: WindowEnd) -> Self {
        Self {
            total,
            window,
            rate,
            schedule: Duration::ZERO,
            done: 0,
            at_window_end,
        }
    }

    /// The closes to release in the round at `elapsed` since the start: a
    /// range of indexes. Past the window, everything left ([`WindowEnd::Flush`])
    /// or what the rate allows ([`WindowEnd::KeepRate`]).
    pub fn round(&mut self, elapsed: Duration) -> std::ops::Range<usize> {
        self.schedule = elapsed.min(self.schedule + TICK);
        let due = if elapsed >= self.window && self.at_window_end == WindowEnd::Flush {
            self.total
        } else {
            closes_due(self.total, self.schedule, self.window, self.rate)
        };
        let from = self.done;
        self.done = due.max(from);
        from..self.done
    }
}

/// One pod's drains. Every batch of closes (a snapshot's moved keys, a
/// drain request, the pod's stop) goes through one pacer, so that batches
/// asked for one after another never pass the pod's rate together: a new
/// batch joins what is left of the running one, and the pacing restarts
/// over both with the new batch's window and rate.
#[derive(Clone)]
pub struct Drainer {
    batches: mpsc::Sender<Batch>,
    /// Connections submitted and not yet asked to close.
    pending: Arc<watch::Sender<usize>>,
}

struct Batch {
    victims: Vec<Arc<ConnControl>>,
    cause: DrainCause,
    window: Duration,
    rate: u32,
}

impl Drainer {
    /// Starts the pod's drain task (on the current tokio runtime). It ends
    /// when every handle is dropped.
    pub fn start() -> Self {
        let (batches, rx) = mpsc::channel(BATCHES);
        let pending = Arc::new(watch::Sender::new(0));
        tokio::spawn(run(rx, Arc::clone(&pending)));
        Self { batches, pending }
    }

    /// Asks `victims` to close with `cause`, spread over `window` at no
    /// more than `rate` per second (with what is left of earlier batches).
    /// Waits while [`BATCHES`] batches are on their way to the drain task
    /// (it takes each within a tick).
    pub async fn submit(
        &self,
        victims: Vec<Arc<ConnControl>>,
        cause: DrainCause,
        window: Duration,
        rate: u32,
    ) {
        if victims.is_empty() {
            return;
        }
        self.pending.send_modify(|n| *n += victims.len());
        let batch = Batch {
            victims,
            cause,
            window,
            rate,
        };
        if let Err(unsent) = self.batches.send(batch).await {
            // The drain task is gone (the runtime is shutting down): the
            // connections will not be asked.
            self.pending.send_modify(|n| *n -= unsent.0.victims.len());
        }
    }

    /// Connections submitted and not yet asked to close.
    pub fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// Resolves once every submitted connection has been asked to close.
    pub async fn idle(&self) {
        let _ = self.pending.subscribe().wait_for(|&n| n == 0).await;
    }
}

/// Batches on their way to the drain task at most.
pub const BATCHES: usize = 16;

async fn run(mut batches: mpsc::Receiver<Batch>, pending: Arc<watch::Sender<usize>>) {
    let idle = || Pacer::new(0, Duration::ZERO, 1, WindowEnd::Flush);
    let mut queue: Vec<(Arc<ConnControl>, DrainCause)> = Vec::new();
    // The next victim to look at; the ones before it were asked or skipped.
    let mut cursor = 0;
    let mut pacer = idle();
    let (mut start, mut window, mut rate) = (Instant::now(), Duration::ZERO, 1);
    let mut due = Instant::now();
    loop {
        let batch = if cursor >= queue.len() {
            match batches.recv().await {
                Some(b) => Some(b),
                None => return,
            }
        } else {
            tokio::select! {
                b = batches.recv() => b,
                () = sleep_until(due) => None,
            }
        };
        if let Some(mut b) = batch {
            queue.drain(..cursor);
            cursor = 0;
            fastrand::shuffle(&mut b.victims);
            queue.extend(b.victims.into_iter().map(|v| (v, b.cause)));
            (start, window, rate) = (Instant::now(), b.window, b.rate);
            due = start;
            let at_end = if queue.iter().any(|(_, c)| *c == DrainCause::Shutdown) {
                WindowEnd::Flush
            } else {
                WindowEnd::KeepRate
            };
            pacer = Pacer::new(queue.len(), window, rate, at_end);
        }
        let elapsed = start.elapsed();
        let mut closes = pacer.round(elapsed).len();
        if elapsed >= window && closes > 1 && pacer.at_window_end == WindowEnd::Flush {
            tracing::warn!(
                left = closes,
                rate,
                window_seconds = window.as_secs_f64(),
                "drain window ended before the rate cap allowed every close; closing the rest now"
            );
        }
        // Each close the pacer allows goes to a connection a close still
        // changes something for: one that ended meanwhile, or that another
        // drain already asked (a pod's whole drain meeting a rebalance, or
        // both pods of a hand-off), does not use up the rate.
        let from = cursor;
        while closes > 0 && cursor < queue.len() {
            let (victim, cause) = &queue[cursor];
            cursor += 1;
            if victim.drainable() {
                victim.request_drain(*cause);
                closes -= 1;
            }
        }
        let looked = cursor - from;
        if looked > 0 {
            pending.send_modify(|n| *n = n.saturating_sub(looked));
        }
        if cursor >= queue.len() {
            queue.clear();
            cursor = 0;
            pacer = idle();
        }
        due = next_round(due, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch through a fresh drainer; returns when all were asked.
    async fn drain(victims: Vec<Arc<ConnControl>>, cause: DrainCause, window: Duration, rate: u32) {
        let drainer = Drainer::start();
        drainer.submit(victims, cause, window, rate).await;
        drainer.idle().await;
    }

    #[test]
    fn closes_are_spread_over_the_window() {
        let window = Duration::from_secs(10);
        assert_eq!(closes_due(100, Duration::ZERO, window, 1000), 0);
        assert_eq!(closes_due(100, Duration::from_secs(5), window, 1000), 50);
        assert_eq!(closes_due(100, Duration::from_secs(10), window, 1000), 100);
    }

    #[test]
    fn the_rate_cap_holds_in_every_second() {
        let window = Duration::from_secs(10);
        let rate = 50;
        let total = 10_000;
        let mut prev = 0;
        for ms in (0..=10_000u64).step_by(10) {
            let due = closes_due(total, Duration::from_millis(ms), window, rate);
            assert!(due >= prev);
            prev = due;
            if ms >= 1000 {
                let a_second_ago =
                    closes_due(total, Duration::from_millis(ms - 1000), window, rate);
                assert!(
                    due - a_second_ago <= rate as usize,
                    "{} closes in the second before {ms} ms",
                    due - a_second_ago
                );
            }
        }
    }

    #[test]
    fn rounds_keep_to_a_grid_unless_one_is_more_than_a_tick_late() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A timer a millisecond late each time does not push the grid.
        assert_eq!(next_round(t0, t0 + ms(1)), t0 + TICK);
        assert_eq!(next_round(t0 + TICK, t0 + TICK + ms(1)), t0 + 2 * TICK);
        // A round that ends past the next one's time: that one runs at once.
        assert_eq!(next_round(t0, t0 + TICK + ms(5)), t0 + TICK);
        // Stalled for longer: the grid starts again, nothing is made up.
        assert_eq!(next_round(t0, t0 + ms(50)), t0 + ms(60));
    }

    #[test]
    fn a_late_round_does_not_burst_over_the_cap() {
        let rate = 100;
        let mut pacer = Pacer::new(10_000, Duration::from_secs(1000), rate, WindowEnd::Flush);
        let mut released = Vec::new();
        // Rounds every 10 ms, then a 2 s stall, then rounds again.
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(5) {
            t += if t == Duration::from_secs(1) {
                Duration::from_secs(2)
            } else {
                TICK
            };
            released.push((t, pacer.round(t).len()));
        }
        for (i, &(t, _)) in released.iter().enumerate() {
            let in_second: usize = released[i..]
                .iter()
                .take_while(|(u, _)| *u < t + Duration::from_secs(1))
                .map(|(_, n)| n)
                .sum();
            assert!(
                in_second <= rate as usize,
                "{in_second} closes in the second from {t:?}"
            );
        }
        let after_stall = released
            .iter()
            .find(|(t, _)| *t == Duration::from_secs(3))
            .map(|(_, n)| *n);
        assert!(
            after_stall <= Some(1),
            "the round after the stall released {after_stall:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_asks_every_connection_once_within_the_window() {
        let victims: Vec<Arc<ConnControl>> = (0..200)
            .map(|i| {
                Arc::new(ConnControl::new(
                    "r".into(),
                    crate::routing::hash_key(&[i as u8]),
                    crate::registry::Role::Edge("s".into()),
                ))
            })
            .collect();
        let start = Instant::now();
        drain(
            victims.clone(),
            DrainCause::Shutdown,
            Duration::from_secs(4),
            100,
        )
        .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_secs(4),
            "took {took:?}"
        );
        assert!(
            victims
                .iter()
                .all(|v| v.drain_requested() == Some(DrainCause::Shutdown))
        );
    }

    fn victims(n: usize) -> Vec<Arc<ConnControl>> {
        (0..n)
            .map(|i| {
                Arc::new(ConnControl::new(
                    "r".into(),
                    crate::routing::hash_key(&i.to_be_bytes()),
                    crate::registry::Role::Edge("s".into()),
                ))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebalance_keeps_to_the_rate_past_its_window() {
        let start = Instant::now();
        drain(
            victims(300),
            DrainCause::Rebalance,
            Duration::from_secs(1),
            100,
        )
        .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2_900),
            "300 closes at 100/s took {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_one_after_another_share_one_pacer() {
        let drainer = Drainer::start();
        let (first, second) = (victims(100), victims(100));
        drainer
            .submit(
                first.clone(),
                DrainCause::Rebalance,
                Duration::from_secs(10),
                50,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drainer
            .submit(second.clone(), DrainCause::Api, Duration::from_secs(10), 50)
            .await;
        let start = Instant::now();
        drainer.idle().await;
        assert!(
            first
                .iter()
                .all(|v| v.drain_requested() == Some(DrainCause::Rebalance))
        );
        assert!(
            second
                .iter()
                .all(|v| v.drain_requested() == Some(DrainCause::Api))
        );
        // ~25 went in the first half second; the other ~175 at 50/s.
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // Idle again, it takes the next batch.
        let third = victims(10);
        drainer
            .submit(
                third.clone(),
                DrainCause::Rebalance,
                Duration::from_secs(1),
                1000,
            )
            .await;
        drainer.idle().await;
        assert!(third.iter().all(|v| v.drain_requested().is_some()));
        assert_eq!(drainer.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_already_asked_or_gone_do_not_use_up_the_rate() {
        let all = victims(100);
        for v in &all[..50] {
            v.request_drain(DrainCause::Api);
        }
        let start = Instant::now();
        drain(
            all.clone(),
            DrainCause::Rebalance,
            Duration::from_secs(1),
            50,
        )
        .await;
        let took = start.elapsed();
        assert!(
            took <= Duration::from_millis(1_300),
            "50 closes at 50/s took {took:?}"
        );
        let api = all
            .iter()
            .filter(|v| v.drain_requested() == Some(DrainCause::Api))
            .count();
        let moved = all
            .iter()
            .filter(|v| v.drain_requested() == Some(DrainCause::Rebalance))
            .count();
        assert_eq!((api, moved), (50, 50), "the first request wins");
    }
}
