//! Pacing drains: close a set of connections evenly over a window, never
//! faster than a rate cap, so that a drain does not become a reconnect
//! storm; or, once paced from outside (a sidecar's share of its
//! workload's budget), as fast as a given rate allows, the window still
//! the deadline.

use std::{collections::VecDeque, sync::Arc, time::Duration};

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
    /// When the closes of `total` began (their last batch came), on the
    /// drain's clock: their window starts there.
    origin: Duration,
    /// The schedule's clock, from `origin`: it follows real time but
    /// advances at most one tick per round, so a round that comes late (a
    /// busy thread) delays the closes instead of releasing the backlog in
    /// one burst over the cap.
    schedule: Duration,
    done: usize,
    at_window_end: WindowEnd,
    /// Set by [`Pacer::pace`]: the rate the closes now go at.
    pace: Option<Pace>,
    /// The closes released in the last second, by when (on the drain's
    /// clock): a pace counts them against its rate, so that a lower rate
    /// holds from the moment it is set, in every second.
    recent: VecDeque<(Duration, usize)>,
}

/// A pace in force: closes at `rate` per second, as fast as that allows.
#[derive(Clone, Copy, Debug)]
struct Pace {
    rate: u32,
    /// The schedule's time when the pace was set (or its batch came).
    since: Duration,
    /// The closes of the pace's steady cadence already counted, released
    /// or (when the last second's closes left no room) given up.
    slots: usize,
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

/// The span a rate is counted over.
const SECOND: Duration = Duration::from_secs(1);

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
    /// A drain of `total` connections over `window` at most `rate` per
    /// second, starting at 0 on its clock.
    pub fn new(total: usize, window: Duration, rate: u32, at_window_end: WindowEnd) -> Self {
        Self {
            total,
            window,
            rate,
            origin: Duration::ZERO,
            schedule: Duration::ZERO,
            done: 0,
            at_window_end,
            pace: None,
            recent: VecDeque::new(),
        }
    }

    /// Starts over at `now` with `total` closes over `window` at most
    /// `rate` per second (a new batch joined what was left), keeping the
    /// closes of the last second and the pace, if one is set: a paced
    /// drain stays paced, its new window its deadline.
    pub fn restart(
        &mut self,
        now: Duration,
        total: usize,
        window: Duration,
        rate: u32,
        at_window_end: WindowEnd,
    ) {
        (self.total, self.window, self.rate) = (total, window, rate);
        (self.origin, self.schedule, self.done) = (now, Duration::ZERO, 0);
        self.at_window_end = at_window_end;
        if let Some(pace) = &mut self.pace {
            (pace.since, pace.slots) = (Duration::ZERO, 0);
        }
    }

    /// From now on, releases the closes still due at `rate` per second
    /// (at least 1), as fast as that allows rather than spread over the
    /// window; the window stays the deadline. Replaces an earlier pace.
    /// No second, counted back from any close after this, holds more than
    /// `rate` closes, those before the pace included.
    pub fn pace(&mut self, rate: u32) {
        self.pace = Some(Pace {
            rate: rate.max(1),
            since: self.schedule,
            slots: 0,
        });
    }

    /// The rate the closes go at: the pace's, or the drain's own.
    pub fn rate(&self) -> u32 {
        self.pace.map_or(self.rate, |p| p.rate)
    }

    /// Whether the window is over at `now` and everything left goes at
    /// once ([`WindowEnd::Flush`]).
    pub fn flushing(&self, now: Duration) -> bool {
        self.at_window_end == WindowEnd::Flush && now.saturating_sub(self.origin) >= self.window
    }

    /// The closes to release in the round at `now` on the drain's clock: a
    /// range of indexes. Past the window, everything left
    /// ([`WindowEnd::Flush`]) or what the rate allows
    /// ([`WindowEnd::KeepRate`]).
    pub fn round(&mut self, now: Duration) -> std::ops::Range<usize> {
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| at + SECOND <= now)
        {
            self.recent.pop_front();
        }
        self.schedule = now.saturating_sub(self.origin).min(self.schedule + TICK);
        let due = if self.flushing(now) {
            self.total
        } else if self.pace.is_some() {
            self.done + self.paced_closes()
        } else {
            closes_due(self.total, self.schedule, self.window, self.rate)
        };
        let from = self.done;
        self.done = due.clamp(from, self.total.max(from));
        if self.done > from {
            self.recent.push_back((now, self.done - from));
        }
        from..self.done
    }

    /// Under a pace: the closes of its steady cadence due since the last
    /// round, as far as the last second's closes leave room under its
    /// rate. Slots without room are given up, not made up later in a burst.
    fn paced_closes(&mut self) -> usize {
        let in_last_second: usize = self.recent.iter().map(|&(_, n)| n).sum();
        let Some(pace) = &mut self.pace else {
            return 0;
        };
        let paced_for = self.schedule.saturating_sub(pace.since).as_nanos();
        let cadence = (u128::from(pace.rate) * paced_for).div_ceil(SECOND.as_nanos());
        let cadence = usize::try_from(cadence).unwrap_or(usize::MAX);
        let slots = cadence.saturating_sub(pace.slots);
        pace.slots = pace.slots.max(cadence);
        let room = (pace.rate as usize).saturating_sub(in_last_second);
        slots.min(room)
    }
}

/// One pod's drains. Every batch of closes (a snapshot's moved keys, a
/// drain request, the pod's stop) goes through one pacer, so that batches
/// asked for one after another never pass the pod's rate together: a new
/// batch joins what is left of the running one, and the pacing restarts
/// over both with the new batch's window and rate. A sidecar's drain may
/// be re-paced while it runs ([`Drainer::pace`]).
#[derive(Clone)]
pub struct Drainer {
    commands: mpsc::Sender<Command>,
    /// Connections submitted and not yet asked to close.
    pending: Arc<watch::Sender<usize>>,
}

/// What the drain task is told.
enum Command {
    /// Close these too.
    Batch(Batch),
    /// Release the closes at this rate from now on ([`Pacer::pace`]).
    Pace(u32),
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
        let (commands, rx) = mpsc::channel(BATCHES);
        let pending = Arc::new(watch::Sender::new(0));
        tokio::spawn(run(rx, Arc::clone(&pending)));
        Self { commands, pending }
    }

    /// Asks `victims` to close with `cause`, spread over `window` at no
    /// more than `rate` per second (with what is left of earlier batches),
    /// or at the pace, once one is set. Waits while [`BATCHES`] commands
    /// are on their way to the drain task (it takes each within a tick).
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
        if let Err(unsent) = self.commands.send(Command::Batch(batch)).await {
            // The drain task is gone (the runtime is shutting down): the
            // connections will not be asked.
            if let Command::Batch(batch) = unsent.0 {
                self.pending.send_modify(|n| *n -= batch.victims.len());
            }
        }
    }

    /// From now on, releases the closes still due, and those of later
    /// batches, at `rate` per second (at least 1) as fast as that allows,
    /// instead of spreading them over the window, which stays the deadline
    /// (after it a stopping pod's drain closes what is left at once). The
    /// last pace set holds: a new batch joins at it, its window the new
    /// deadline. No second holds more than `rate` closes, counted back
    /// from any close after the pace.
    pub async fn pace(&self, rate: u32) {
        // An error means the drain task is gone: nothing is left to pace.
        let _ = self.commands.send(Command::Pace(rate)).await;
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

/// Commands on their way to the drain task at most.
pub const BATCHES: usize = 16;

async fn run(mut commands: mpsc::Receiver<Command>, pending: Arc<watch::Sender<usize>>) {
    // The drain's clock: the pacer counts every time from here.
    let clock = Instant::now();
    let mut queue: Vec<(Arc<ConnControl>, DrainCause)> = Vec::new();
    // The next victim to look at; the ones before it were asked or skipped.
    let mut cursor = 0;
    let mut pacer = Pacer::new(0, Duration::ZERO, 1, WindowEnd::Flush);
    let mut due = Instant::now();
    loop {
        let command = if cursor >= queue.len() {
            match commands.recv().await {
                Some(c) => Some(c),
                None => return,
            }
        } else {
            tokio::select! {
                c = commands.recv() => c,
                () = sleep_until(due) => None,
            }
        };
        match command {
            Some(Command::Batch(mut b)) => {
                queue.drain(..cursor);
                cursor = 0;
                fastrand::shuffle(&mut b.victims);
                queue.extend(b.victims.into_iter().map(|v| (v, b.cause)));
                let at_end = if queue.iter().any(|(_, c)| *c == DrainCause::Shutdown) {
                    WindowEnd::Flush
                } else {
                    WindowEnd::KeepRate
                };
                pacer.restart(clock.elapsed(), queue.len(), b.window, b.rate, at_end);
                due = Instant::now();
            }
            Some(Command::Pace(rate)) => pacer.pace(rate),
            None => {}
        }
        if cursor >= queue.len() {
            // Paced while idle: the pace waits for the next batch.
            continue;
        }
        let now = clock.elapsed();
        let mut closes = pacer.round(now).len();
        if closes > 1 && pacer.flushing(now) {
            tracing::warn!(
                left = closes,
                rate = pacer.rate(),
                window_seconds = pacer.window.as_secs_f64(),
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
        }
        due = next_round(due, Instant::now());
    }
}

#[cfg(test)]
mod tests;
