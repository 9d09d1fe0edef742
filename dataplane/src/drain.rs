//! Pacing drains: close a set of connections evenly over a window, never
//! faster than a rate cap, so that a drain does not become a reconnect
//! storm.

use std::{sync::Arc, time::Duration};

use tokio::time::{Instant, sleep_until};

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

/// Asks every connection in `victims` to drain, paced by [`closes_due`].
/// Returns when all have been asked. If the rate cap does not let the
/// drain finish within the window, the rest are asked at the window's end
/// (the pod is about to be killed) and that is logged.
pub async fn drain(
    mut victims: Vec<Arc<ConnControl>>,
    cause: DrainCause,
    window: Duration,
    rate: u32,
) {
    fastrand::shuffle(&mut victims);
    let total = victims.len();
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let mut done = 0;
    while done < total {
        let elapsed = start.elapsed();
        let due = if elapsed >= window {
            if done < total {
                tracing::warn!(
                    left = total - done,
                    rate,
                    window_seconds = window.as_secs_f64(),
                    "drain window ended before the rate cap allowed every close; closing the rest now"
                );
            }
            total
        } else {
            closes_due(total, elapsed, window, rate)
        };
        for victim in &victims[done..due] {
            victim.request_drain(cause);
        }
        done = due;
        if done < total {
            sleep_until(Instant::now() + tick).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn a_drain_asks_every_connection_once_within_the_window() {
        let victims: Vec<Arc<ConnControl>> = (0..200)
            .map(|i| {
                Arc::new(ConnControl::new(
                    "r".into(),
                    crate::routing::hash_key(&[i as u8]),
                    "b".into(),
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
}
